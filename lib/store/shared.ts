/**
 * The SQL of shared files (issue 14 item 2; schema 7). Carts that want the same archive file
 * share its bytes on the volume: the second cart's folder holds a hard link to the inode the
 * first one fetched. The rows say so:
 *
 * - `cart_files.content_key` names the stored bytes (`device:inode:birth`, see
 *   `contentKey` in worker/shares.ts); rows that share an inode share a key.
 * - `cart_files.counted` is 1 on the one row whose cart counts those bytes against the
 *   volume (its reservation holds them), 0 on the rows that merely link to them. A file
 *   fetched from the archive is counted by its cart; a link is counted only when no row of a
 *   live cart counts that key already.
 * - When a cart goes (its rows are forgotten, or its files removed), {@linkcode handOver}
 *   passes the count of each key it counted to another row that holds the key, and adds the
 *   bytes to that cart's reservation: the bytes stay counted once for as long as one cart
 *   holds them.
 * - `file_claims` holds one row per archive file a worker process is recalling or fetching
 *   (by the SHA-256 of the archive id), with the claim's owner and expiry, so that two
 *   workers on one database never work on one file at once. A worker renews all its claims
 *   in one statement; a claim that expired (its worker died) may be taken by another.
 *
 * Every function takes the {@linkcode Db} (or the transaction) it runs on. The space lock
 * (`cartd_lock` row `space`, MySQL) serialises the count's decisions with reservations.
 *
 * @module
 */
import type { Db } from "../db/db.ts";

/** A staged file of a live cart that holds the bytes of an archive file. */
export interface StoredCopy {
  /** The cart that holds it. */
  cartId: string;
  /** Its index in that cart. */
  idx: number;
  /** Its size in bytes (the archive's, checked at staging). */
  size: number;
  /** Its mtime (seconds), as the archive told it. */
  mtime: number;
  /** The hash the holding cart asked for and staging verified, or null. */
  hashtype: string | null;
  /** The digest of that hash, or null. */
  hashsum: string | null;
  /** The SHA-256 staging measured, or null when it measured none (no manifest asked for it). */
  sha256: string | null;
  /** The CRC-32 staging measured, or null when it measured none (a big file piped to disk). */
  crc32: number | null;
  /** The content key of its bytes (null for a row staged before schema 7). */
  contentKey: string | null;
}

/** Serialises count decisions with space reservations (SQLite serialises by itself). */
async function lockSpace(tx: Db): Promise<void> {
  if (tx.dialect === "mysql") {
    await tx.all("SELECT name FROM cartd_lock WHERE name = 'space' FOR UPDATE");
  }
}

/**
 * Which rows of `cart_files f` (joined to `carts c`) another cart may link to: staged, of a
 * live cart (its sums may be still unmeasured: the linking cart measures what it needs, as the
 * holder would). One condition for {@linkcode copiesOf} and
 * {@linkcode stagedElsewhere}, so the hint never disagrees with the look-up.
 */
const REUSABLE = "f.status = 'staged' AND c.live_uid IS NOT NULL";

/**
 * `f.archive_id` as its bytes: MySQL's collations hold `X` and `x` (and `x` and `x `) equal,
 * in `=`, `IN` and `DISTINCT`; cartd's archive ids are exact. The collated comparison stays
 * beside it, for the index on `archive_id`.
 */
function exactId(db: Db): string {
  return db.dialect === "mysql" ? "CAST(f.archive_id AS BINARY)" : "f.archive_id";
}

/**
 * The staged copies of archive file `archiveId` in live carts other than `exceptCart`, those
 * of ready carts first; the id is compared exactly ({@linkcode exactId}). Uses the index on
 * `archive_id`.
 */
export async function copiesOf(
  db: Db,
  archiveId: string,
  exceptCart: string,
): Promise<StoredCopy[]> {
  const rows = await db.all(
    `SELECT f.cart_id, f.idx, f.archive_id, f.size, f.mtime, f.hashtype, f.hashsum, f.sha256,
        f.crc32, f.content_key
       FROM cart_files f JOIN carts c ON c.id = f.cart_id
      WHERE f.archive_id = ? AND ${exactId(db)} = ? AND f.cart_id <> ? AND ${REUSABLE}
      ORDER BY CASE c.status WHEN 'ready' THEN 0 ELSE 1 END, c.created_at
      LIMIT 8`,
    [archiveId, archiveId, exceptCart],
  );
  return rows.map((r) => ({
    cartId: String(r.cart_id),
    idx: Number(r.idx),
    size: Number(r.size),
    mtime: Number(r.mtime ?? 0),
    hashtype: r.hashtype === null ? null : String(r.hashtype),
    hashsum: r.hashsum === null ? null : String(r.hashsum),
    sha256: r.sha256 === null ? null : String(r.sha256),
    crc32: r.crc32 === null ? null : Number(r.crc32),
    contentKey: r.content_key === null ? null : String(r.content_key),
  }));
}

/** How many archive ids one {@linkcode stagedElsewhere} statement asks about. */
const HINT_BATCH = 256;

/**
 * Of `archiveIds`, those that a live cart other than `exceptCart` holds staged (reusable, as
 * for {@linkcode copiesOf}): one statement per {@linkcode HINT_BATCH} ids, on
 * the index on `archive_id`. The ids are compared exactly ({@linkcode exactId}). A staging cart
 * asks this for a batch of its files before their HEADs and looks for copies only of those
 * found here, instead of one `copiesOf` per file.
 */
export async function stagedElsewhere(
  db: Db,
  archiveIds: readonly string[],
  exceptCart: string,
): Promise<Set<string>> {
  const found = new Set<string>();
  const unique = [...new Set(archiveIds)];
  for (let i = 0; i < unique.length; i += HINT_BATCH) {
    const part = unique.slice(i, i + HINT_BATCH);
    const rows = await db.all(
      `SELECT DISTINCT ${exactId(db)} AS archive_id FROM cart_files f
         JOIN carts c ON c.id = f.cart_id
        WHERE f.archive_id IN (${part.map(() => "?").join(", ")}) AND f.cart_id <> ?
          AND ${REUSABLE}`,
      [...part, exceptCart],
    );
    const asked = new Set(part);
    for (const r of rows) {
      // MySQL answers the bytes (a Buffer): String() reads them as UTF-8, as they were written.
      const id = String(r.archive_id);
      if (asked.has(id)) found.add(id);
    }
  }
  return found;
}

/**
 * Inside the transaction that records files of `cartId` as staged: of the files `linked`
 * (hard links to bytes another cart fetched), those whose key a row of a live cart counts
 * already are not counted here (`counted = 0`); the others stay counted (the default).
 */
export async function countLinked(
  tx: Db,
  cartId: string,
  linked: readonly { idx: number; key: string }[],
): Promise<void> {
  if (!linked.length) return;
  await lockSpace(tx);
  const keys = [...new Set(linked.map((l) => l.key))];
  const marks = keys.map(() => "?").join(", ");
  const rows = await tx.all(
    `SELECT DISTINCT f.content_key FROM cart_files f JOIN carts c ON c.id = f.cart_id
      WHERE f.content_key IN (${marks}) AND f.counted = 1 AND f.cart_id <> ?
        AND f.status = 'staged' AND c.live_uid IS NOT NULL`,
    [...keys, cartId],
  );
  const countedElsewhere = new Set(rows.map((r) => String(r.content_key)));
  const idxs = linked.filter((l) => countedElsewhere.has(l.key)).map((l) => l.idx);
  for (let i = 0; i < idxs.length; i += 256) {
    const part = idxs.slice(i, i + 256);
    await tx.run(
      `UPDATE cart_files SET counted = 0 WHERE cart_id = ? AND idx IN (${
        part.map(() => "?").join(", ")
      })`,
      [cartId, ...part],
    );
  }
}

/**
 * Cart `cartId` stops holding its files (its rows are about to be forgotten, or its folder
 * was removed): each key it counted that another cart's staged row still holds is handed to
 * one such row (a live cart's first), whose cart's reservation grows by the file's size; the
 * cart's own rows count nothing any more. Returns the bytes handed over (still on the volume,
 * held by other carts) and the bytes that went with the cart. With `range`, only the files of
 * that range are handed over (a cart forgotten a batch at a time).
 */
export async function handOver(
  tx: Db,
  cartId: string,
  range?: IdxRange,
): Promise<{ handedBytes: number; handedFiles: number }> {
  await lockSpace(tx);
  const within = range ? " AND idx >= ? AND idx < ?" : ""; // the outer table's idx
  const bounds = range ? [range.from, range.to] : [];
  const shared = await tx.all(
    `SELECT f.idx, f.content_key, f.size FROM cart_files f
      WHERE f.cart_id = ? AND f.counted = 1 AND f.status = 'staged'
        AND f.content_key IS NOT NULL${within}
        AND EXISTS (SELECT 1 FROM cart_files g WHERE g.content_key = f.content_key
          AND g.cart_id <> f.cart_id AND g.status = 'staged')`,
    [cartId, ...bounds],
  );
  let handedBytes = 0;
  let handedFiles = 0;
  for (const row of shared) {
    const key = String(row.content_key);
    const heirs = await tx.all(
      `SELECT g.cart_id, g.idx, g.counted FROM cart_files g JOIN carts c ON c.id = g.cart_id
        WHERE g.content_key = ? AND g.cart_id <> ? AND g.status = 'staged'
        ORDER BY g.counted DESC, CASE WHEN c.live_uid IS NULL THEN 1 ELSE 0 END, c.created_at
        LIMIT 1`,
      [key, cartId],
    );
    if (!heirs.length) continue;
    const heir = heirs[0];
    handedFiles++;
    handedBytes += Number(row.size);
    if (Number(heir.counted) === 1) continue; // counted there already
    await tx.run("UPDATE cart_files SET counted = 1 WHERE cart_id = ? AND idx = ?", [
      String(heir.cart_id),
      Number(heir.idx),
    ]);
    await tx.run("UPDATE carts SET reserved_bytes = reserved_bytes + ? WHERE id = ?", [
      Number(row.size),
      String(heir.cart_id),
    ]);
  }
  await tx.run(
    `UPDATE cart_files SET counted = 0 WHERE cart_id = ? AND counted = 1${within}`,
    [cartId, ...bounds],
  );
  return { handedBytes, handedFiles };
}

/** The files of a cart whose `idx` is at least `from` and below `to`. */
export interface IdxRange {
  /** The first `idx` of the range. */
  from: number;
  /** The `idx` after the range's last. */
  to: number;
}

/** The bytes of `cartId`'s staged files that it counts (not those it links to). */
export async function countedBytes(db: Db, cartId: string): Promise<number> {
  const [row] = await db.all(
    `SELECT COALESCE(SUM(size), 0) AS n FROM cart_files
      WHERE cart_id = ? AND status = 'staged' AND counted = 1`,
    [cartId],
  );
  return Number(row?.n ?? 0);
}

/** The indexes of `cartId`'s staged files that another cart counts (its links). */
export async function linkedFiles(db: Db, cartId: string): Promise<number[]> {
  const rows = await db.all(
    "SELECT idx FROM cart_files WHERE cart_id = ? AND status = 'staged' AND counted = 0",
    [cartId],
  );
  return rows.map((r) => Number(r.idx));
}

/** The bytes of `cartId`'s staged files that another cart counts (its links). */
export async function linkedBytes(db: Db, cartId: string): Promise<number> {
  const [row] = await db.all(
    `SELECT COALESCE(SUM(size), 0) AS n FROM cart_files
      WHERE cart_id = ? AND status = 'staged' AND counted = 0`,
    [cartId],
  );
  return Number(row?.n ?? 0);
}

/**
 * For each of `cartIds`: the bytes it counts that a cart outside `cartIds` also holds, which
 * removing those carts would not free (they are handed over). The LRU purge subtracts them.
 */
export async function sharedOutside(
  db: Db,
  cartIds: readonly string[],
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (let i = 0; i < cartIds.length; i += 128) {
    const part = cartIds.slice(i, i + 128);
    const marks = part.map(() => "?").join(", ");
    const all = cartIds.map(() => "?").join(", ");
    const rows = await db.all(
      `SELECT f.cart_id, SUM(f.size) AS n FROM cart_files f
        WHERE f.cart_id IN (${marks}) AND f.counted = 1 AND f.status = 'staged'
          AND f.content_key IS NOT NULL
          AND EXISTS (SELECT 1 FROM cart_files g WHERE g.content_key = f.content_key
            AND g.status = 'staged' AND g.cart_id NOT IN (${all}))
        GROUP BY f.cart_id`,
      [...part, ...cartIds],
    );
    for (const r of rows) out.set(String(r.cart_id), Number(r.n ?? 0));
  }
  return out;
}

/**
 * Takes the claims on archive files `keys` (SHA-256 of their ids) for `owner` until
 * `expires`: those nobody holds, those whose claim expired before `now`, and those `owner`
 * holds already. Returns the keys now held by `owner`.
 */
export async function claimFiles(
  db: Db,
  keys: readonly string[],
  owner: string,
  now: number,
  expires: number,
): Promise<Set<string>> {
  keys = [...new Set(keys)];
  if (!keys.length) return new Set();
  const marks = keys.map(() => "?").join(", ");
  return await db.transaction(async (tx) => {
    await tx.run(
      `UPDATE file_claims SET owner = ?, expires = ?
        WHERE file_key IN (${marks}) AND (owner = ? OR expires < ?)`,
      [owner, expires, ...keys, owner, now],
    );
    const insert = tx.dialect === "mysql" ? "INSERT IGNORE" : "INSERT OR IGNORE";
    await tx.run(
      `${insert} INTO file_claims (file_key, owner, expires) VALUES ${
        keys.map(() => "(?, ?, ?)").join(", ")
      }`,
      keys.flatMap((k) => [k, owner, expires]),
    );
    const rows = await tx.all(
      `SELECT file_key FROM file_claims WHERE file_key IN (${marks}) AND owner = ?`,
      [...keys, owner],
    );
    return new Set(rows.map((r) => String(r.file_key)));
  });
}

/** Extends every claim of `owner` to `expires`; returns how many it holds. */
export async function renewFileClaims(db: Db, owner: string, expires: number): Promise<number> {
  const { changes } = await db.run("UPDATE file_claims SET expires = ? WHERE owner = ?", [
    expires,
    owner,
  ]);
  return changes;
}

/** Gives up `owner`'s claims on `keys`. */
export async function releaseFiles(db: Db, keys: readonly string[], owner: string): Promise<void> {
  for (let i = 0; i < keys.length; i += 256) {
    const part = keys.slice(i, i + 256);
    await db.run(
      `DELETE FROM file_claims WHERE owner = ? AND file_key IN (${part.map(() => "?").join(", ")})`,
      [owner, ...part],
    );
  }
}
