/**
 * The cart store: the database is the truth about every cart and its files. Routes write new
 * carts and read status; workers claim carts, record each staged file and move the status —
 * by named transitions ({@linkcode CartStore.startStaging}, {@linkcode CartStore.startBundling},
 * {@linkcode CartStore.markReady}, {@linkcode CartStore.fail}), each checked against the state
 * machine (lib/cart/state.ts) in one conditional update, so two processes can never disagree
 * about a cart. A cart that names a webhook gets its event written into the outbox
 * (./webhooks.ts) in the same transaction as its move to `ready` or `error`.
 *
 * The same SQL runs on SQLite and MySQL, behind the {@linkcode Db} interface.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { heapCheckpoint } from "../util/memory.ts";
import {
  CART_STATUSES,
  type CartStatus,
  isFinal,
  parseStatus,
  predecessorsOf,
} from "../cart/state.ts";
import { type CartDocument, HASH_TYPES, type HashType } from "../cart/document.ts";
import type { StagedFacts } from "../cart/staged.ts";
import { type Db, DbUnavailableError, type Row, type SqlValue } from "../db/db.ts";
import { errorMessage, log } from "../util/log.ts";
import { addCartEvent } from "./webhooks.ts";
import * as shared from "./shared.ts";
import type { StoredCopy } from "./shared.ts";

export type { StoredCopy };

/** A cart as the store knows it. */
export interface Cart {
  /** Internal id (a UUID); the cart's folder under VOLUME_PATH is named after it. */
  id: string;
  /** The client's label. */
  uid: string;
  /**
   * The principal that created it (issue 17): uids are unique per owner. `""` for every cart
   * made with access off.
   */
  owner: string;
  /** Where the cart stands in the state machine. */
  status: CartStatus;
  /** What went wrong, for a person (empty unless status is "error"). */
  message: string;
  /** SHA-256 (hex) of the validated document, to recognise an identical re-POST. */
  documentHash: string;
  /** Whether the tar is written to disk once while bundling (the document's `bundle`). */
  bundle: boolean;
  /** Whether the bundle carries a sha256 manifest (the document's `manifest`). */
  manifest: boolean;
  /** Number of files in the cart document. */
  fileCount: number;
  /** Sum of the files' sizes, once the archive has told them. */
  totalBytes: number | null;
  /** Bytes held for this cart against the volume's capacity. */
  reservedBytes: number;
  /** When the cart was stored (ms since the epoch). */
  createdAt: number;
  /** When the cart last changed status, size or liveness, or was requeued (ms since the epoch). */
  updatedAt: number;
  /** When the cart became ready (ms since the epoch), or null. */
  readyAt: number | null;
  /** When the cart was last used or moved (ms since the epoch); the LRU purge goes by it. */
  lastUsedAt: number;
  /** The worker that holds the claim on the cart, or null. */
  claimOwner: string | null;
  /** When that claim lapses unless renewed (ms since the epoch), or null. */
  claimExpires: number | null;
  /** How often a worker has claimed it. */
  attempts: number;
  /**
   * Length in bytes of the cart's default download (a tar under the default name, without a
   * manifest the cart did not ask for), recorded when it became ready; for a `"bundle": true`
   * cart, the length of the tar written to disk. Null before ready, and for a cart made ready
   * by a cartd of schema version 1.
   */
  downloadSize: number | null;
  /** The strong ETag (quoted) of that download, beside {@linkcode Cart.downloadSize}. */
  downloadEtag: string | null;
  /**
   * How many of its files are recorded as staged: a counter on the cart's row, kept in the
   * transaction that records staged files ({@linkcode CartStore.filesStaged}), so that a HEAD
   * reads the cart's progress without counting its files.
   */
  stagedFiles: number;
  /** The sum of the sizes of those files, kept beside {@linkcode Cart.stagedFiles}. */
  stagedBytes: number;
  /** How many of its files are recorded as failed, kept beside {@linkcode Cart.stagedFiles}. */
  errorFiles: number;
  /**
   * When the cart began staging (ms since the epoch): `waiting → staging`. Null before, and for
   * a cart that began staging under a cartd of schema version 2 or older.
   */
  stagingAt: number | null;
  /**
   * The URL the cart's document named to be told when it is ready or failed (its
   * `webhook`), or null.
   */
  webhook: string | null;
}

/** How many files of a cart the database has in one {@linkcode FileStatus}, and their bytes. */
export interface FileTally {
  /** Number of files. */
  files: number;
  /** Sum of the sizes the archive has told for them (0 when none is known). */
  bytes: number;
}

/** One page of a cart's files ({@linkcode CartStore.filePage}). */
export interface FilePage {
  /** The files, in document order. */
  files: CartFile[];
  /** Whether files come after the last one of the page. */
  more: boolean;
}

/** What {@linkcode CartStore.markReady} records with a ready cart. */
export interface ReadyFacts {
  /** When the cart became ready (ms since the epoch): its download name and folder times. */
  readyAt: number;
  /** Length in bytes of its default download (for `"bundle": true`, of the written tar). */
  size: number;
  /** The strong ETag (quoted) of that download. */
  etag: string;
}

/** Every {@linkcode FileStatus}. */
export const FILE_STATUSES = ["pending", "staged", "error"] as const;

/** Where one file of a cart stands. */
export type FileStatus = typeof FILE_STATUSES[number];

/** One file of a cart. */
export interface CartFile {
  /** Internal id of the cart the file belongs to. */
  cartId: string;
  /** Position in the cart document's `fileids`. */
  idx: number;
  /** The file's id in the archive. */
  archiveId: string;
  /** The clean relative path of the file inside the bundle. */
  path: string;
  /** Algorithm of `hashsum`, or null when the client gave none. */
  hashtype: HashType | null;
  /** Lowercase hex digest the client expects, or null. */
  hashsum: string | null;
  /** Whether the file is still to be fetched, staged, or failed. */
  status: FileStatus;
  /** Length in bytes, or null until the archive has told it. */
  size: number | null;
  /** Seconds since the epoch. */
  mtime: number | null;
  /** Lowercase hex SHA-256 measured at staging, or null until staged. */
  sha256: string | null;
  /** Unsigned CRC-32 measured at staging, or null until staged. */
  crc32: number | null;
  /** What went wrong with the file, or null. */
  message: string | null;
}

/** What staging learned about one file (its home is lib/cart/staged.ts). */
export type { StagedFacts };

/** What one owner's live carts hold ({@linkcode CartStore.usage}). */
export interface OwnerUsage {
  /** The principal (`""`: carts made with access off). */
  owner: string;
  /** Its live carts. */
  carts: number;
  /** The bytes they hold reserved. */
  reservedBytes: number;
  /** Files of its carts in progress not yet staged nor failed. */
  pendingFiles: number;
}

/**
 * What a POST's admission check sees inside {@linkcode CartStore.createCart}'s transaction:
 * what the owner's live carts hold (null: none), and its live cart of the uid the new cart
 * replaces, if any.
 */
export interface Admission {
  /** The owner's live carts, before the new one. */
  use: OwnerUsage | null;
  /** The owner's live cart of the uid, which the new cart replaces (null: none). */
  replaced: Cart | null;
}

/** The result of {@linkcode CartStore.createCart}. */
export interface Created {
  /** The cart now live under the uid: the new one, or the kept one. */
  cart: Cart;
  /** Carts of the same uid that this one replaced (their files must be removed). */
  replaced: Cart[];
  /** True when an identical live cart was kept instead of creating a new one. */
  kept: boolean;
}

const num = (v: unknown): number => Number(v);
const numOrNull = (v: unknown): number | null => v === null || v === undefined ? null : Number(v);

function toCart(r: Row): Cart {
  return {
    id: String(r.id),
    uid: String(r.uid),
    owner: String(r.owner ?? ""),
    status: parseStatus(String(r.status)),
    message: String(r.message ?? ""),
    documentHash: String(r.document_hash),
    bundle: num(r.bundle) === 1,
    manifest: num(r.manifest) === 1,
    fileCount: num(r.file_count),
    totalBytes: numOrNull(r.total_bytes),
    reservedBytes: num(r.reserved_bytes),
    createdAt: num(r.created_at),
    updatedAt: num(r.updated_at),
    readyAt: numOrNull(r.ready_at),
    lastUsedAt: num(r.last_used_at),
    claimOwner: r.claim_owner === null ? null : String(r.claim_owner),
    claimExpires: numOrNull(r.claim_expires),
    attempts: num(r.attempts),
    downloadSize: numOrNull(r.download_size),
    downloadEtag: r.download_etag === null || r.download_etag === undefined
      ? null
      : String(r.download_etag),
    stagedFiles: num(r.staged_files ?? 0),
    stagedBytes: num(r.staged_bytes ?? 0),
    errorFiles: num(r.error_files ?? 0),
    stagingAt: numOrNull(r.staging_at),
    webhook: r.webhook === null || r.webhook === undefined ? null : String(r.webhook),
  };
}

/** The columns {@linkcode toFile} reads (not `cart_id`: every row of a query shares it). */
const FILE_COLUMNS =
  "idx, archive_id, path, hashtype, hashsum, status, size, mtime, sha256, crc32, message";

/** One shared string per value, not one per row: a 40,000-file cart holds 40,000 rows. */
function intern<T extends string>(values: readonly T[], value: unknown): T {
  const text = String(value);
  return values.find((v) => v === text) ?? text as T;
}

function toFile(cartId: string, r: Row): CartFile {
  return {
    cartId,
    idx: num(r.idx),
    archiveId: String(r.archive_id),
    path: String(r.path),
    hashtype: r.hashtype === null ? null : intern(HASH_TYPES, r.hashtype),
    hashsum: r.hashsum === null ? null : String(r.hashsum),
    status: intern(FILE_STATUSES, r.status),
    size: numOrNull(r.size),
    mtime: numOrNull(r.mtime),
    sha256: r.sha256 === null ? null : String(r.sha256),
    crc32: numOrNull(r.crc32),
    message: r.message === null ? null : String(r.message),
  };
}

/** Rows per query when a cart's files are read a page at a time. */
const FILE_PAGE = 1000;

/** Which files {@linkcode CartStore.eachFile} reads. */
export type FileSelection =
  /** Every file. */
  | "all"
  /** Those whose size the archive has not told yet. */
  | "unsized"
  /** Those not recorded as staged. */
  | "unstaged";

const SELECTIONS: Record<FileSelection, string> = {
  all: "",
  unsized: "AND size IS NULL",
  unstaged: "AND status <> 'staged'",
};

const INSERT_BATCH = 512;
/**
 * Rows of a cart's files that {@linkcode CartStore.forget} deletes in one transaction: on SQLite
 * the longest stop of the thread was 22–32 ms (`deno task bench forget`), where one statement
 * for 100,000 files took 637 ms.
 */
export const FORGET_BATCH = 2048;
const UPDATE_BATCH = 256;

/**
 * Cuts `rows` into batches whose sizes are powers of two up to `max` (itself one): full
 * batches, then the rest in falling powers of two (300 → 256, 32, 8, 4). A batch becomes one
 * statement whose text depends on its size, and the SQLite driver keeps prepared statements
 * by text; with any size allowed, a busy service ends up holding a couple of hundred large
 * prepared programs (about 4 MiB more for every 10,000-file cart, until the cache is full).
 * With these sizes there are at most log2(max) + 1 texts per statement.
 */
export function* powerOfTwoBatches<T>(
  rows: readonly T[],
  max: number,
): Generator<{ start: number; batch: readonly T[] }> {
  let start = 0;
  for (; rows.length - start >= max; start += max) {
    yield { start, batch: rows.slice(start, start + max) };
  }
  for (let size = max >> 1; size >= 1; size >>= 1) {
    if (rows.length - start >= size) {
      yield { start, batch: rows.slice(start, start + size) };
      start += size;
    }
  }
}

/** What a new cart row is made of (the rest starts as every new cart's does). */
type NewCart = Pick<
  Cart,
  "id" | "uid" | "owner" | "documentHash" | "bundle" | "manifest" | "fileCount" | "webhook"
>;

/**
 * The one INSERT of a cart: a live `waiting` cart under its uid, created, updated and used
 * `now`. A POST ({@linkcode CartStore.createCart}) and `cartd admin fixit`
 * ({@linkcode CartStore.retryFailed}) both make carts through it, inside their transaction.
 */
async function insertCart(tx: Db, cart: NewCart, now: number): Promise<void> {
  await tx.run(
    `INSERT INTO carts (id, uid, live_uid, owner, status, message, document_hash, bundle,
      manifest, file_count, created_at, updated_at, last_used_at, webhook)
     VALUES (?, ?, ?, ?, 'waiting', '', ?, ?, ?, ?, ?, ?, ?, ?)`,
    [
      cart.id,
      cart.uid,
      cart.uid,
      cart.owner,
      cart.documentHash,
      +cart.bundle,
      +cart.manifest,
      cart.fileCount,
      now,
      now,
      now,
      cart.webhook,
    ],
  );
}

/**
 * The statuses of a cart in progress (every status that is not final in the state machine),
 * as an SQL list: `('waiting', 'staging', 'bundling')`.
 */
const IN_PROGRESS_SQL = `(${
  CART_STATUSES.filter((status) => !isFinal(status)).map((status) => `'${status}'`).join(", ")
})`;

/** What carts hold against the volume (SPEC §4): the sums {@linkcode CartStore.spaceHoldings} reads. */
export interface SpaceHoldings {
  /** Sum of the reservations of the carts counted. */
  reserved: number;
  /** Bytes that those of them in progress have reserved but not staged yet. */
  outstanding: number;
}

/** What {@linkcode CartStore.reserveIf} shows its `decide` function, inside the space lock. */
export interface ReservationView extends SpaceHoldings {
  /** Bytes the cart asking has staged already (they are on disk, so need no free space). */
  staged: number;
}

/** Serialises space transactions of every process (SQLite serialises by itself). */
async function lockSpace(tx: Db): Promise<void> {
  if (tx.dialect === "mysql") {
    await tx.all("SELECT name FROM cartd_lock WHERE name = 'space' FOR UPDATE");
  }
}

/**
 * Moves cart `cartId`'s counters ({@linkcode Cart.stagedFiles}, `stagedBytes`, `errorFiles`) by what
 * its files `idxs` count now: `-` before an update of those files takes out what they counted,
 * `+` after it puts in what they count then. Inside the update's transaction, the counters
 * stay exact however often a file is recorded staged, failed or staged again. Two indexed
 * lookups of the batch's rows, not a count of the cart's files.
 */
async function stagedDelta(
  tx: Db,
  cartId: string,
  idxs: readonly number[],
  sign: "+" | "-",
): Promise<void> {
  const list = idxs.map(() => "?").join(", ");
  const of = (status: string, what: string) =>
    `(SELECT ${what} FROM cart_files WHERE cart_id = ? AND status = '${status}'
      AND idx IN (${list}))`;
  await tx.run(
    `UPDATE carts SET
      staged_files = staged_files ${sign} ${of("staged", "COUNT(*)")},
      staged_bytes = staged_bytes ${sign} ${of("staged", "COALESCE(SUM(size), 0)")},
      error_files = error_files ${sign} ${of("error", "COUNT(*)")}
     WHERE id = ?`,
    [cartId, ...idxs, cartId, ...idxs, cartId, ...idxs, cartId],
  );
}

/** Sums of reservations of carts other than `exceptId`, and what those in progress still owe. */
async function holdings(db: Db, exceptId: string): Promise<SpaceHoldings> {
  const [sum] = await db.all<{ reserved: number | null }>(
    "SELECT SUM(reserved_bytes) AS reserved FROM carts WHERE id <> ?",
    [exceptId],
  );
  const owed = await db.all<{ reserved: number; staged: number | null }>(
    `SELECT c.reserved_bytes AS reserved,
       (SELECT SUM(f.size) FROM cart_files f WHERE f.cart_id = c.id AND f.status = 'staged'
         AND f.counted = 1) AS staged
     FROM carts c WHERE c.id <> ? AND c.status IN ${IN_PROGRESS_SQL} AND c.reserved_bytes > 0`,
    [exceptId],
  );
  const outstanding = owed.reduce(
    (total, r) => total + Math.max(0, Number(r.reserved) - Number(r.staged ?? 0)),
    0,
  );
  return { reserved: Number(sum?.reserved ?? 0), outstanding };
}

/** What the live carts of each owner hold, on `db` (see {@linkcode CartStore.usage}). */
async function usageOf(db: Db, owner?: string): Promise<OwnerUsage[]> {
  const rows = await db.all(
    `SELECT owner, COUNT(*) AS carts, COALESCE(SUM(reserved_bytes), 0) AS reserved,
      COALESCE(SUM(CASE WHEN status IN ${IN_PROGRESS_SQL}
        THEN file_count - staged_files - error_files ELSE 0 END), 0) AS pending
     FROM carts WHERE live_uid IS NOT NULL ${owner === undefined ? "" : "AND owner = ?"}
     GROUP BY owner ORDER BY owner`,
    owner === undefined ? [] : [owner],
  );
  return rows.map((r) => ({
    owner: String(r.owner),
    carts: num(r.carts),
    reservedBytes: num(r.reserved),
    pendingFiles: num(r.pending),
  }));
}

/**
 * The name of `owner`'s row in `cartd_lock` (MySQL), made if missing: `quota:` and the first
 * 26 hex digits of the SHA-256 of the name (the column holds 32 characters; two names that
 * shared a row would only wait for each other). The row is inserted in a statement of its
 * own, before the transaction that locks it: two transactions that both inserted it would
 * take shared locks and then deadlock on `FOR UPDATE`.
 */
async function ownerLock(db: Db, owner: string): Promise<string> {
  const name = "quota:" + createHash("sha256").update(owner).digest("hex").slice(0, 26);
  await db.run("INSERT IGNORE INTO cartd_lock (name) VALUES (?)", [name]);
  return name;
}

/** Uses of one cart closer than this (ms) are written once: see {@linkcode CartStore.touch}. */
export const USE_RESOLUTION_MS = 100;

/** Carts whose recent uses a store remembers at most; more, and it writes and forgets them. */
const USES_KEPT = 1024;

/** Reads and writes carts; every method is one short query or transaction. */
export class CartStore {
  /** When a use that could not be recorded was last logged (real time, ms). */
  #useFailureLoggedAt = -Infinity;
  /** Uses not recorded since that log line. */
  #useFailuresUnlogged = 0;

  /** Uses of carts that {@linkcode touch} wrote lately: when, and a later one not written yet. */
  #uses = new Map<string, { written: number; pending: number }>();

  /** A store on `db`; `now` gives the time in ms since the epoch (tests replace it). */
  constructor(readonly db: Db, readonly now: () => number = Date.now) {}

  /**
   * Stores a new cart for `uid` of `owner` (the principal; `""` with access off), replacing
   * that owner's live one (SPEC: re-POST replaces). An identical document posted to a live
   * cart that has not failed keeps that cart (`kept: true`).
   *
   * `admit` (the quotas, http/quotas.ts) is asked inside the transaction, before anything is
   * written, with what the owner holds then; it throws to refuse, and the transaction stores
   * nothing. The owner's creations are serialised (SQLite: the transaction itself; MySQL: the
   * owner's row of `cartd_lock`, read `FOR UPDATE`), so two POSTs at once cannot both take
   * the last place. A kept cart adds nothing and is not asked about.
   */
  async createCart(
    uid: string,
    doc: CartDocument,
    documentHash: string,
    owner = "",
    admit?: (admission: Admission) => void,
  ): Promise<Created> {
    const lock = admit && this.db.dialect === "mysql" ? await ownerLock(this.db, owner) : null;
    return await this.db.transaction(async (tx) => {
      if (lock) await tx.all("SELECT name FROM cartd_lock WHERE name = ? FOR UPDATE", [lock]);
      const live = (await tx.all("SELECT * FROM carts WHERE owner = ? AND live_uid = ?", [
        owner,
        uid,
      ])).map(toCart);
      const same = live.find((c) => c.documentHash === documentHash && c.status !== "error");
      if (same) return { cart: same, replaced: [], kept: true };
      if (admit) {
        const [use] = await usageOf(tx, owner);
        admit({ use: use ?? null, replaced: live[0] ?? null });
      }
      const now = this.now();
      if (live.length) {
        await tx.run(
          "UPDATE carts SET live_uid = NULL, updated_at = ? WHERE owner = ? AND live_uid = ?",
          [now, owner, uid],
        );
      }
      const id = crypto.randomUUID();
      await insertCart(tx, {
        id,
        uid,
        owner,
        documentHash,
        bundle: doc.bundle,
        manifest: doc.manifest,
        fileCount: doc.files.length,
        webhook: doc.webhook ?? null,
      }, now);
      for (const { start, batch } of powerOfTwoBatches(doc.files, INSERT_BATCH)) {
        const params: SqlValue[] = [];
        for (const [i, f] of batch.entries()) {
          params.push(id, start + i, f.id, f.path, f.hashtype ?? null, f.hashsum ?? null);
        }
        await tx.run(
          `INSERT INTO cart_files (cart_id, idx, archive_id, path, hashtype, hashsum, status)
           VALUES ${batch.map(() => "(?, ?, ?, ?, ?, ?, 'pending')").join(", ")}`,
          params,
        );
      }
      const cart = toCart((await tx.all("SELECT * FROM carts WHERE id = ?", [id]))[0]);
      return { cart, replaced: live, kept: false };
    });
  }

  /** The live cart of `uid` that `owner` created (`""`: with access off), or null. */
  async liveCart(uid: string, owner = ""): Promise<Cart | null> {
    const rows = await this.db.all("SELECT * FROM carts WHERE owner = ? AND live_uid = ?", [
      owner,
      uid,
    ]);
    return rows.length ? toCart(rows[0]) : null;
  }

  /** The live carts of `uid` whoever owns them (an admin's look-up), by owner. */
  async liveCartsOfUid(uid: string): Promise<Cart[]> {
    const rows = await this.db.all("SELECT * FROM carts WHERE live_uid = ? ORDER BY owner", [uid]);
    return rows.map(toCart);
  }

  /**
   * What the live carts of each owner hold (`owner` given: of that one only; an owner without
   * live carts is absent): the quotas' figures, and `admin dump`'s.
   */
  async usage(owner?: string): Promise<OwnerUsage[]> {
    return await usageOf(this.db, owner);
  }

  /** The cart with internal id `id` (live or replaced, not deleted), or null. */
  async cart(id: string): Promise<Cart | null> {
    const rows = await this.db.all("SELECT * FROM carts WHERE id = ?", [id]);
    return rows.length ? toCart(rows[0]) : null;
  }

  /**
   * The live carts among `ids` (a cart that is not live, or gone, is absent), in one query
   * however many there are: the list is padded to a power of two by repeating its last id, so
   * that the statement's text is one of a few (see {@linkcode powerOfTwoBatches}). The event
   * streams' poller (http/events.ts) reads every cart with an open stream so, once a second.
   */
  async liveCartsById(ids: readonly string[]): Promise<Cart[]> {
    if (!ids.length) return [];
    const padded = [...ids];
    const size = 2 ** Math.ceil(Math.log2(ids.length));
    while (padded.length < size) padded.push(ids[ids.length - 1]);
    const rows = await this.db.all(
      `SELECT * FROM carts WHERE live_uid IS NOT NULL AND id IN (${
        padded.map(() => "?").join(", ")
      })`,
      padded,
    );
    return rows.map(toCart);
  }

  /** Every cart that is still live, oldest first. */
  async liveCarts(): Promise<Cart[]> {
    const rows = await this.db.all(
      "SELECT * FROM carts WHERE live_uid IS NOT NULL ORDER BY created_at",
    );
    return rows.map(toCart);
  }

  /** How many live carts each status has (one grouped COUNT; a status without carts is absent). */
  async liveCartsByStatus(): Promise<Partial<Record<CartStatus, number>>> {
    const rows = await this.db.all<{ status: string; n: number }>(
      "SELECT status, COUNT(*) AS n FROM carts WHERE live_uid IS NOT NULL GROUP BY status",
    );
    return Object.fromEntries(rows.map((r) => [parseStatus(String(r.status)), Number(r.n)]));
  }

  /** Every cart row, live or replaced (replaced ones are removed by the worker that notices). */
  async allCarts(): Promise<Cart[]> {
    return (await this.db.all("SELECT * FROM carts ORDER BY created_at")).map(toCart);
  }

  /** Whether the database holds any cart row at all (an empty one may be new or replaced). */
  async hasCarts(): Promise<boolean> {
    return (await this.db.all("SELECT id FROM carts LIMIT 1")).length > 0;
  }

  /** The files of a cart, in document order. */
  async files(cartId: string): Promise<CartFile[]> {
    const rows = await this.db.all(
      `SELECT ${FILE_COLUMNS} FROM cart_files WHERE cart_id = ? ORDER BY idx`,
      [cartId],
    );
    return rows.map((row) => toFile(cartId, row));
  }

  /**
   * The files of a cart in document order, read {@linkcode FILE_PAGE} rows at a time, so that
   * a cart of any size is walked with one page in memory. Rows changed while the walk goes on
   * are seen as they are when their page is read (pages follow `idx`, not offsets).
   *
   * @example
   * ```ts
   * for await (const file of store.eachFile(cartId, "unsized")) console.log(file.archiveId);
   * ```
   */
  async *eachFile(
    cartId: string,
    selection: FileSelection = "all",
    pageSize = FILE_PAGE,
  ): AsyncGenerator<CartFile> {
    const where = SELECTIONS[selection];
    for (let after = -1;;) {
      const rows = await this.db.all(
        `SELECT ${FILE_COLUMNS} FROM cart_files WHERE cart_id = ? AND idx > ? ${where}
         ORDER BY idx LIMIT ${Math.max(1, Math.floor(pageSize))}`,
        [cartId, after],
      );
      if (!rows.length) return;
      const page = rows.map((row) => toFile(cartId, row));
      rows.length = 0;
      after = page[page.length - 1].idx;
      yield* page;
      if (page.length < pageSize) return;
      heapCheckpoint(); // the pages walked so far are garbage by now
    }
  }

  /** The sum of the sizes of a cart's files that the archive has told (0 when none). */
  async totalSize(cartId: string): Promise<number> {
    const [row] = await this.db.all(
      "SELECT COALESCE(SUM(size), 0) AS total FROM cart_files WHERE cart_id = ?",
      [cartId],
    );
    return Number(row.total);
  }

  /**
   * How many files of a cart the database has in each {@linkcode FileStatus}, with the sum of
   * their known sizes: one grouped query over the cart's rows (a status without files is 0).
   */
  async fileTallies(cartId: string): Promise<Record<FileStatus, FileTally>> {
    const rows = await this.db.all<{ status: string; n: number; bytes: number | null }>(
      `SELECT status, COUNT(*) AS n, SUM(size) AS bytes FROM cart_files WHERE cart_id = ?
       GROUP BY status`,
      [cartId],
    );
    const tallies = Object.fromEntries(
      FILE_STATUSES.map((status) => [status, { files: 0, bytes: 0 }]),
    ) as Record<FileStatus, FileTally>;
    for (const row of rows) {
      const status = intern(FILE_STATUSES, row.status);
      tallies[status] = { files: Number(row.n), bytes: Number(row.bytes ?? 0) };
    }
    return tallies;
  }

  /**
   * Up to `limit` files of a cart whose index is above `after`, in document order (keyset
   * paging: each page is one indexed range read, however deep). The query asks for a power
   * of two rows above `limit` (the statement's text is one of a few; see
   * {@linkcode powerOfTwoBatches}), which also tells whether more files follow. With `status`,
   * only the files in that {@linkcode FileStatus} (the range read then skips the others).
   */
  async filePage(
    cartId: string,
    after: number,
    limit: number,
    status?: FileStatus,
  ): Promise<FilePage> {
    const wanted = Math.max(1, Math.floor(limit));
    const asked = 2 ** Math.ceil(Math.log2(wanted + 1));
    const rows = await this.db.all(
      `SELECT ${FILE_COLUMNS} FROM cart_files WHERE cart_id = ? AND idx > ?
       ${status ? "AND status = ?" : ""} ORDER BY idx LIMIT ${asked}`,
      status ? [cartId, Math.floor(after), status] : [cartId, Math.floor(after)],
    );
    return {
      files: rows.slice(0, wanted).map((row) => toFile(cartId, row)),
      more: rows.length > wanted,
    };
  }

  /**
   * The files recorded as staged, in any live cart, whose archive id is one of `archiveIds`
   * (matched exactly: MySQL's case-insensitive comparison is undone here). Read a few hundred
   * ids per query, on the index on `archive_id` (schema 7).
   * The estimate of `POST /_cartd/estimate` uses it to tell what is on the volume already; the
   * caller checks the hashes (a row's `hashtype`/`hashsum` were verified, `sha256` measured).
   */
  async stagedInLiveCarts(archiveIds: Iterable<string>): Promise<CartFile[]> {
    const wanted = new Set(archiveIds);
    const found: CartFile[] = [];
    for (const { batch } of powerOfTwoBatches([...wanted], INSERT_BATCH)) {
      const rows = await this.db.all(
        `SELECT cart_id, ${FILE_COLUMNS} FROM cart_files
          WHERE status = 'staged' AND archive_id IN (${batch.map(() => "?").join(", ")})
            AND cart_id IN (SELECT id FROM carts WHERE live_uid IS NOT NULL)`,
        [...batch],
      );
      for (const row of rows) {
        const file = toFile(String(row.cart_id), row);
        if (wanted.has(file.archiveId)) found.push(file);
      }
    }
    return found;
  }

  /** Records the size and mtime the archive reported for a file. */
  async setFileSize(cartId: string, idx: number, size: number, mtime: number): Promise<void> {
    await this.setFileSizes(cartId, [{ idx, size, mtime }]);
  }

  /** Records the sizes and mtimes of many files, in a few statements. */
  async setFileSizes(
    cartId: string,
    sizes: readonly { idx: number; size: number; mtime: number }[],
  ): Promise<void> {
    await this.#updateFiles(cartId, sizes, {
      size: (f) => f.size,
      mtime: (f) => f.mtime,
    });
  }

  /** Records SHA-256s measured after staging (for a manifest asked for at download time). */
  async setSha256(
    cartId: string,
    files: readonly { idx: number; sha256: string }[],
  ): Promise<void> {
    await this.#updateFiles(cartId, files, { sha256: (f) => f.sha256 });
  }

  /** Records CRC-32s measured after staging (for a zip, or by the pass after ready). */
  async setCrc32(
    cartId: string,
    files: readonly { idx: number; crc32: number }[],
  ): Promise<void> {
    await this.#updateFiles(cartId, files, { crc32: (f) => f.crc32 });
  }

  /** Records the cart's total size once every file's size is known. */
  async setTotalBytes(cartId: string, total: number): Promise<void> {
    await this.db.run("UPDATE carts SET total_bytes = ?, updated_at = ? WHERE id = ?", [
      total,
      this.now(),
      cartId,
    ]);
  }

  /** Marks a file staged, with what staging measured. */
  async fileStaged(cartId: string, idx: number, facts: StagedFacts): Promise<void> {
    await this.filesStaged(cartId, [{ idx, facts }]);
  }

  /**
   * Marks many files staged, in a few statements (not one commit per file). `key` is the
   * content key of the stored bytes (lib/store/shared.ts); `linked` marks a file that is a
   * hard link to bytes another cart fetched, which this cart counts only when no live cart
   * counts them already (decided in the same transaction).
   */
  async filesStaged(
    cartId: string,
    staged: readonly { idx: number; facts: StagedFacts; key?: string; linked?: boolean }[],
  ): Promise<void> {
    const links = staged.flatMap((f) => f.linked && f.key ? [{ idx: f.idx, key: f.key }] : []);
    await this.#updateFiles(
      cartId,
      staged,
      {
        status: () => "staged",
        size: (f) => f.facts.size,
        mtime: (f) => f.facts.mtime,
        sha256: (f) => f.facts.sha256,
        crc32: (f) => f.facts.crc32,
        message: () => null,
        content_key: (f) => f.key ?? null,
        counted: () => 1,
      },
      true,
      (tx) => shared.countLinked(tx, cartId, links),
    );
  }

  /**
   * Sets columns of many files of one cart: one `UPDATE … SET col = CASE idx WHEN … END`
   * per batch of rows (plain SQL that SQLite and MySQL share), all in one transaction. With
   * `status` true (the update may change files' status or size), the cart's staged counters
   * ({@linkcode Cart.stagedFiles}) follow in the same transaction: see {@linkcode stagedDelta}.
   */
  async #updateFiles<T extends { idx: number }>(
    cartId: string,
    rows: readonly T[],
    columns: Record<string, (row: T) => SqlValue>,
    status = false,
    after?: (tx: Db) => Promise<void>,
  ): Promise<void> {
    if (!rows.length) return;
    await this.db.transaction(async (tx) => {
      for (const { batch } of powerOfTwoBatches(rows, UPDATE_BATCH)) {
        const idxs = batch.map((row) => row.idx);
        if (status) await stagedDelta(tx, cartId, idxs, "-");
        const params: SqlValue[] = [];
        const sets = Object.entries(columns).map(([column, value]) => {
          for (const row of batch) params.push(row.idx, value(row));
          return `${column} = CASE idx ${batch.map(() => "WHEN ? THEN ?").join(" ")} END`;
        });
        params.push(cartId, ...batch.map((row) => row.idx));
        await tx.run(
          `UPDATE cart_files SET ${sets.join(", ")}
           WHERE cart_id = ? AND idx IN (${batch.map(() => "?").join(", ")})`,
          params,
        );
        if (status) await stagedDelta(tx, cartId, idxs, "+");
      }
      await after?.(tx);
    });
  }

  /** Marks a file failed (or, with status "pending", due to be fetched again). */
  async fileStatus(
    cartId: string,
    idx: number,
    status: FileStatus,
    message: string | null,
  ): Promise<void> {
    await this.db.transaction(async (tx) => {
      await stagedDelta(tx, cartId, [idx], "-");
      await tx.run(
        "UPDATE cart_files SET status = ?, message = ? WHERE cart_id = ? AND idx = ?",
        [status, message, cartId, idx],
      );
      await stagedDelta(tx, cartId, [idx], "+");
    });
  }

  /**
   * Starts a claimed cart's staging: `waiting → staging`. Returns false (and changes nothing)
   * when the cart is not waiting, is gone, or (with `owner`) is claimed by someone else.
   *
   * @param owner the claim's owner that may move the cart; null moves it whoever holds it
   */
  async startStaging(cartId: string, owner: string | null): Promise<boolean> {
    return await this.#transition(cartId, "staging", { owner });
  }

  /**
   * Starts bundling a cart whose files are all staged: `staging → bundling`. Returns false as
   * {@linkcode startStaging} does.
   */
  async startBundling(cartId: string, owner: string | null): Promise<boolean> {
    return await this.#transition(cartId, "bundling", { owner });
  }

  /**
   * Makes a bundled cart ready for download, `bundling → ready`, with the facts of its default
   * download (`ready.readyAt` is the time its download name and folder times were made from).
   * The claim is dropped: the cart is final. A cart that names a webhook gets its
   * `cart.ready` event written in the same transaction (./webhooks.ts). Returns false as
   * {@linkcode startStaging} does.
   */
  async markReady(cartId: string, owner: string | null, ready: ReadyFacts): Promise<boolean> {
    return await this.#transition(cartId, "ready", { owner, ready });
  }

  /**
   * Fails an unfinished cart with `message` (what a person reads in its status):
   * `waiting | staging | bundling → error`. The claim is dropped: the cart is final. A cart
   * that names a webhook gets its `cart.failed` event in the same transaction. Returns
   * false when the cart is final already, is gone, or (with `owner`) is claimed by someone
   * else.
   */
  async fail(cartId: string, message: string, owner: string | null = null): Promise<boolean> {
    return await this.#transition(cartId, "error", { owner, message });
  }

  /**
   * The one transition: moves a cart to `to` if the state machine allows it from the status
   * it has now (a conditional update, so two processes never both move it). Returns false
   * (and changes nothing) when it does not, or when the cart is gone. With `owner`, only that
   * owner's claim may move the cart (a worker whose claim was taken over changes nothing).
   * A final status drops the claim, and (in the same transaction) writes the cart's webhook
   * event when it names a webhook.
   */
  async #transition(
    cartId: string,
    to: CartStatus,
    how: { owner: string | null; message?: string; ready?: ReadyFacts },
  ): Promise<boolean> {
    if (!isFinal(to)) return await this.#move(this.db, cartId, to, how);
    return await this.db.transaction(async (tx) => {
      if (!(await this.#move(tx, cartId, to, how))) return false;
      const [row] = await tx.all("SELECT * FROM carts WHERE id = ?", [cartId]);
      const cart = toCart(row);
      if (cart.webhook !== null) {
        const type = to === "ready" ? "cart.ready" : "cart.failed";
        const id = await addCartEvent(tx, cart, type, cart.updatedAt);
        log.debug("webhook event written", { uid: cart.uid, cart: cart.id, event: id, type });
      }
      return true;
    });
  }

  /** The conditional update of {@linkcode #transition}, on `db` (the store's, or a transaction). */
  async #move(
    db: Db,
    cartId: string,
    to: CartStatus,
    how: { owner: string | null; message?: string; ready?: ReadyFacts },
  ): Promise<boolean> {
    const from = predecessorsOf(to);
    if (!from.length) return false;
    const { owner, message = "", ready } = how;
    const now = this.now();
    const { changes } = await db.run(
      `UPDATE carts SET status = ?, message = ?, updated_at = ?, ready_at = COALESCE(?, ready_at),
        staging_at = COALESCE(staging_at, ?), download_size = COALESCE(?, download_size), download_etag = COALESCE(?, download_etag),
        last_used_at = ? ${isFinal(to) ? ", claim_owner = NULL, claim_expires = NULL" : ""}
       WHERE id = ? AND status IN (${from.map(() => "?").join(", ")})
        ${owner === null ? "" : "AND claim_owner = ?"}`,
      [
        to,
        message,
        now,
        ready?.readyAt ?? null,
        to === "staging" ? now : null,
        ready?.size ?? null,
        ready?.etag ?? null,
        now,
        cartId,
        ...from,
        ...(owner === null ? [] : [owner]),
      ],
    );
    return changes === 1;
  }

  /**
   * Claims an unfinished cart for `owner` until `ttlMs` from now, counting the attempt.
   * Returns the claimed cart, or null when another owner holds a valid claim, the cart is
   * finished, or it is gone.
   */
  async claim(cartId: string, owner: string, ttlMs: number): Promise<Cart | null> {
    const now = this.now();
    const { changes } = await this.db.run(
      `UPDATE carts SET claim_owner = ?, claim_expires = ?, attempts = attempts + 1
       WHERE id = ? AND status IN ${IN_PROGRESS_SQL} AND live_uid IS NOT NULL
         AND (claim_owner IS NULL OR claim_owner = ? OR claim_expires < ?)`,
      [owner, now + ttlMs, cartId, owner, now],
    );
    return changes === 1 ? await this.cart(cartId) : null;
  }

  /** Extends `owner`'s claim; false when the claim was lost or the cart is gone or replaced. */
  async renew(cartId: string, owner: string, ttlMs: number): Promise<boolean> {
    const { changes } = await this.db.run(
      `UPDATE carts SET claim_expires = ? WHERE id = ? AND claim_owner = ?
        AND live_uid IS NOT NULL`,
      [this.now() + ttlMs, cartId, owner],
    );
    return changes === 1;
  }

  /** Gives up `owner`'s claim (the cart can be taken by anyone again). */
  async release(cartId: string, owner: string): Promise<void> {
    await this.db.run(
      "UPDATE carts SET claim_owner = NULL, claim_expires = NULL WHERE id = ? AND claim_owner = ?",
      [cartId, owner],
    );
  }

  /**
   * Unfinished live carts that may need a new queue message: those whose worker's claim
   * expired, and those nobody has claimed and nothing has touched since `quietSince`.
   */
  async orphans(quietSince: number): Promise<Cart[]> {
    const rows = await this.db.all(
      `SELECT * FROM carts WHERE status IN ${IN_PROGRESS_SQL}
        AND live_uid IS NOT NULL
        AND ((claim_owner IS NULL AND updated_at < ?) OR claim_expires < ?)
       ORDER BY created_at`,
      [quietSince, this.now()],
    );
    return rows.map(toCart);
  }

  /**
   * Takes an orphan (see {@linkcode orphans}) for queueing: drops its expired claim and marks
   * the time. Returns false when another process took it first, or it is no orphan now, so
   * that one message is sent per orphan however many workers sweep.
   */
  async requeue(cartId: string, quietSince: number): Promise<boolean> {
    const now = this.now();
    const { changes } = await this.db.run(
      `UPDATE carts SET claim_owner = NULL, claim_expires = NULL, updated_at = ?
       WHERE id = ? AND status IN ${IN_PROGRESS_SQL}
        AND ((claim_owner IS NULL AND updated_at < ?) OR claim_expires < ?)`,
      [now, cartId, quietSince, now],
    );
    return changes === 1;
  }

  /**
   * Records a use of the cart (a download, or a status check of a ready cart). With `until`,
   * the cart counts as used until then (a download in flight holds it so: the LRU purge and
   * retention pass over it). The time only moves forward: a hold is not cut short by a touch.
   * Uses without `until` closer than {@linkcode USE_RESOLUTION_MS} to the last one written for
   * the cart are kept back and written later ({@linkcode flushUses}).
   */
  async touch(cartId: string, until?: number): Promise<void> {
    const now = this.now();
    if (until !== undefined && until > now) return await this.#writeUse(cartId, until); // a hold
    const at = until ?? now;
    // Uses of one cart closer than USE_RESOLUTION_MS are not each written (a client polling
    // HEAD in a loop wrote the database at every HEAD: a third of a HEAD's time): the latest
    // is kept here, and written by the next use after the resolution, or before this store
    // next picks carts by their last use (flushUses), so this process's LRU order is exact
    // and the database lags it by less than USE_RESOLUTION_MS.
    const seen = this.#uses.get(cartId);
    if (seen && at - seen.written < USE_RESOLUTION_MS) {
      seen.pending = Math.max(seen.pending, at);
      return;
    }
    if (this.#uses.size >= USES_KEPT) await this.flushUses();
    this.#uses.set(cartId, { written: at, pending: 0 });
    await this.#writeUse(cartId, at);
  }

  /**
   * Writes the uses that {@linkcode touch} kept back (see there). The queries that pick carts
   * by their last use call it first; anyone may.
   */
  async flushUses(): Promise<void> {
    const kept = [...this.#uses].filter(([, use]) => use.pending > 0);
    this.#uses.clear();
    for (const [cartId, use] of kept) await this.#writeUse(cartId, use.pending);
  }

  /** Records `at` as the cart's last use (it only moves forward). */
  async #writeUse(cartId: string, at: number): Promise<void> {
    try {
      await this.db.run(
        `UPDATE carts SET last_used_at = CASE WHEN last_used_at > ? THEN last_used_at ELSE ? END
         WHERE id = ?`,
        [at, at, cartId],
      );
    } catch (e) {
      this.#useNotRecorded(cartId, e);
    }
  }

  /** Ends a hold of {@linkcode touch} (the download is over): the last use becomes now. */
  async endHold(cartId: string): Promise<void> {
    const now = this.now();
    try {
      await this.db.run("UPDATE carts SET last_used_at = ? WHERE id = ? AND last_used_at > ?", [
        now,
        cartId,
        now,
      ]);
    } catch (e) {
      this.#useNotRecorded(cartId, e);
    }
  }

  /**
   * A use ({@linkcode touch}, {@linkcode endHold}) that the database could not record because
   * it cannot be written or reached right now: the read it came with (HEAD, GET) still
   * answers, the cart keeps its previous last use. Logged the first time, then at most once a
   * minute with the count since. Any other error is thrown.
   */
  #useNotRecorded(cartId: string, error: unknown): void {
    if (!(error instanceof DbUnavailableError)) throw error;
    this.#useFailuresUnlogged++;
    const now = Date.now();
    if (now - this.#useFailureLoggedAt < 60_000) return;
    log.warn("a cart's use was not recorded; it is served anyway (logged once a minute)", {
      cart: cartId,
      error: errorMessage(error),
      failures: this.#useFailuresUnlogged,
    });
    this.#useFailureLoggedAt = now;
    this.#useFailuresUnlogged = 0;
  }

  /** Ends a cart's life in the live set (DELETE): returns false when it was not live. */
  async unlive(cartId: string): Promise<boolean> {
    const { changes } = await this.db.run(
      "UPDATE carts SET live_uid = NULL, updated_at = ? WHERE id = ? AND live_uid IS NOT NULL",
      [this.now(), cartId],
    );
    return changes === 1;
  }

  /**
   * Removes the cart's rows for good (after its files are gone). The count of each file it
   * shared with another cart passes to that cart first: returns what was handed over.
   *
   * The file rows go {@linkcode FORGET_BATCH} at a time, each batch handed over and deleted in
   * a transaction of its own, with a turn of the event loop between batches: in one statement,
   * a 100,000-file cart held SQLite (and the main thread that runs it) for 600 ms. A batch
   * hands over its own files just before they go, so a count another cart passes to one of
   * them meanwhile is passed on; stopped half-way, the cart's row is still there (dead) and the
   * next forget goes on where this one stopped.
   */
  async forget(cartId: string): Promise<{ handedBytes: number; handedFiles: number }> {
    const [last] = await this.db.all<{ top: number | null }>(
      "SELECT MAX(idx) AS top FROM cart_files WHERE cart_id = ?",
      [cartId],
    );
    const top = last?.top === null || last?.top === undefined ? -1 : Number(last.top);
    let handedBytes = 0;
    let handedFiles = 0;
    /** The rows of `range` (the cart's every row left, and the cart itself, without one). */
    const forgetRows = async (range?: shared.IdxRange) => {
      const handed = await this.db.transaction(async (tx) => {
        const handed = await shared.handOver(tx, cartId, range);
        if (range) {
          await tx.run("DELETE FROM cart_files WHERE cart_id = ? AND idx >= ? AND idx < ?", [
            cartId,
            range.from,
            range.to,
          ]);
        } else {
          await tx.run("DELETE FROM cart_files WHERE cart_id = ?", [cartId]);
        }
        if (!range) await tx.run("DELETE FROM carts WHERE id = ?", [cartId]);
        return handed;
      });
      handedBytes += handed.handedBytes;
      handedFiles += handed.handedFiles;
    };
    for (let from = 0; from + FORGET_BATCH <= top; from += FORGET_BATCH) {
      await forgetRows({ from, to: from + FORGET_BATCH });
      await new Promise((resolve) => setTimeout(resolve, 0)); // other work runs in between
    }
    await forgetRows(); // the last batch, and the cart
    return { handedBytes, handedFiles };
  }

  /** Replaced or deleted carts whose rows are still present (their files may remain). */
  async dead(): Promise<Cart[]> {
    const rows = await this.db.all("SELECT * FROM carts WHERE live_uid IS NULL");
    return rows.map(toCart);
  }

  /**
   * What every cart except `exceptId` holds against the volume (all carts, with the default),
   * read outside the space lock: a report, not a basis for a reservation.
   */
  async spaceHoldings(exceptId = ""): Promise<SpaceHoldings> {
    return await holdings(this.db, exceptId);
  }

  /**
   * The space reservation of SPEC §4 as one transaction that every cartd process serialises
   * on (SQLite: the transaction itself; MySQL: the row `space` of `cartd_lock`, read
   * `FOR UPDATE`): reads what the other carts hold and what cart `cartId` has staged, asks
   * `decide` (which may read the file system's free space, inside the lock) whether `bytes`
   * fit, and when its answer says `ok`, records `bytes` as the cart's reservation before the
   * lock is let go. Returns `decide`'s answer.
   */
  async reserveIf<T extends { ok: boolean }>(
    cartId: string,
    bytes: number,
    decide: (view: ReservationView) => Promise<T>,
  ): Promise<T> {
    return await this.db.transaction(async (tx) => {
      await lockSpace(tx);
      const held = await holdings(tx, cartId);
      const [own] = await tx.all<{ staged: number | null }>(
        `SELECT SUM(size) AS staged FROM cart_files WHERE cart_id = ? AND status = 'staged'
          AND counted = 1`,
        [cartId],
      );
      const answer = await decide({ ...held, staged: Number(own?.staged ?? 0) });
      if (answer.ok) {
        await tx.run("UPDATE carts SET reserved_bytes = ? WHERE id = ?", [bytes, cartId]);
      }
      return answer;
    });
  }

  /** Sets the bytes held for a cart against the volume capacity. */
  async setReserved(cartId: string, bytes: number): Promise<void> {
    await this.db.run("UPDATE carts SET reserved_bytes = ? WHERE id = ?", [bytes, cartId]);
  }

  /**
   * Live ready carts last used before `usedBefore`, least recently used first, except
   * `exceptId` (the LRU purge's candidates).
   */
  async purgeable(usedBefore: number, exceptId = ""): Promise<Cart[]> {
    await this.flushUses();
    const rows = await this.db.all(
      `SELECT * FROM carts WHERE status = 'ready' AND live_uid IS NOT NULL AND last_used_at < ?
        AND id <> ? ORDER BY last_used_at, created_at`,
      [usedBefore, exceptId],
    );
    return rows.map(toCart);
  }

  /** Live ready carts that became ready before `readyBefore` (retention's candidates). */
  async readyBefore(readyBefore: number): Promise<Cart[]> {
    const rows = await this.db.all(
      `SELECT * FROM carts WHERE status = 'ready' AND live_uid IS NOT NULL AND ready_at < ?
       ORDER BY ready_at`,
      [readyBefore],
    );
    return rows.map(toCart);
  }

  /**
   * Like {@linkcode unlive}, but only while the cart is still ready and, as given, last used
   * before `usedBefore` / ready before `readyBefore`: a cart used meanwhile is spared.
   */
  async unliveReady(
    cartId: string,
    when: { usedBefore?: number; readyBefore?: number },
  ): Promise<boolean> {
    await this.flushUses();
    const { changes } = await this.db.run(
      `UPDATE carts SET live_uid = NULL, updated_at = ? WHERE id = ? AND live_uid IS NOT NULL
        AND status = 'ready' AND last_used_at < ? AND ready_at < ?`,
      [
        this.now(),
        cartId,
        when.usedBefore ?? Number.MAX_SAFE_INTEGER,
        when.readyBefore ?? Number.MAX_SAFE_INTEGER,
      ],
    );
    return changes === 1;
  }

  /**
   * Replaces the failed live cart `cartId` by a fresh `waiting` cart under the same uid (with
   * internal id `newId`) that keeps the old one's staged files; the others are `pending` again
   * with their size forgotten, so the archive is asked anew. `inside` runs within the
   * transaction, after the rows are written (it moves the files; it must be repeatable).
   * With `queueAtOnce`, the new cart is marked as an orphan to queue now (a claim that has
   * expired, held by nobody): the next sweep of any worker queues it, instead of waiting
   * until it has been untouched for 5 claim periods. Returns the new cart, or null when
   * `cartId` is not a live failed cart.
   */
  async retryFailed(
    cartId: string,
    newId: string,
    inside: () => Promise<void> = () => Promise.resolve(),
    queueAtOnce = false,
  ): Promise<Cart | null> {
    return await this.db.transaction(async (tx) => {
      const rows = await tx.all(
        "SELECT * FROM carts WHERE id = ? AND status = 'error' AND live_uid IS NOT NULL",
        [cartId],
      );
      if (!rows.length) return null;
      const old = toCart(rows[0]);
      const now = this.now();
      await tx.run("UPDATE carts SET live_uid = NULL, updated_at = ? WHERE id = ?", [now, old.id]);
      await insertCart(tx, { ...old, id: newId }, now);
      await tx.run(
        `INSERT INTO cart_files (cart_id, idx, archive_id, path, hashtype, hashsum, status, size,
          mtime, sha256, crc32, message, content_key, counted)
         SELECT ?, idx, archive_id, path, hashtype, hashsum,
           CASE WHEN status = 'staged' THEN 'staged' ELSE 'pending' END,
           CASE WHEN status = 'staged' THEN size ELSE NULL END,
           CASE WHEN status = 'staged' THEN mtime ELSE NULL END,
           CASE WHEN status = 'staged' THEN sha256 ELSE NULL END,
           CASE WHEN status = 'staged' THEN crc32 ELSE NULL END,
           NULL, content_key, counted
         FROM cart_files WHERE cart_id = ?`,
        [newId, old.id],
      );
      // The files move to the new cart, and their count with them.
      await tx.run("UPDATE cart_files SET counted = 0 WHERE cart_id = ?", [old.id]);
      await tx.run(
        `UPDATE carts SET
          staged_files = (SELECT COUNT(*) FROM cart_files WHERE cart_id = ? AND status = 'staged'),
          staged_bytes = (SELECT COALESCE(SUM(size), 0) FROM cart_files
            WHERE cart_id = ? AND status = 'staged'),
          error_files = 0${queueAtOnce ? ", claim_expires = 0" : ""}
         WHERE id = ?`,
        [newId, newId, newId],
      );
      await inside();
      return toCart((await tx.all("SELECT * FROM carts WHERE id = ?", [newId]))[0]);
    });
  }

  // --- shared files (lib/store/shared.ts) ------------------------------------------------

  /** Staged copies of archive file `archiveId` in live carts other than `exceptCart`. */
  copiesOf(archiveId: string, exceptCart: string): Promise<StoredCopy[]> {
    return shared.copiesOf(this.db, archiveId, exceptCart);
  }

  /**
   * Of `archiveIds`, those a live cart other than `exceptCart` holds staged: one query for a
   * batch of files, so that only they are looked for one by one ({@linkcode copiesOf}).
   */
  stagedElsewhere(archiveIds: readonly string[], exceptCart: string): Promise<Set<string>> {
    return shared.stagedElsewhere(this.db, archiveIds, exceptCart);
  }

  /** The bytes of a cart's staged files that it counts against the volume. */
  countedBytes(cartId: string): Promise<number> {
    return shared.countedBytes(this.db, cartId);
  }

  /** The indexes of a cart's staged files that are links to bytes another cart counts. */
  linkedFiles(cartId: string): Promise<number[]> {
    return shared.linkedFiles(this.db, cartId);
  }

  /** The bytes of a cart's staged files that are links to bytes another cart counts. */
  linkedBytes(cartId: string): Promise<number> {
    return shared.linkedBytes(this.db, cartId);
  }

  /**
   * The cart's files are gone from its folder (or about to be): hands the count of each
   * shared file to a cart that still holds it (see `handOver` in lib/store/shared.ts).
   */
  async handOverShared(cartId: string): Promise<{ handedBytes: number; handedFiles: number }> {
    return await this.db.transaction((tx) => shared.handOver(tx, cartId));
  }

  /** The bytes each of `cartIds` counts that a cart outside them holds too. */
  sharedOutside(cartIds: readonly string[]): Promise<Map<string, number>> {
    return shared.sharedOutside(this.db, cartIds);
  }

  /** Takes the claims on archive files `keys` for `owner` for `ttlMs`; returns those held. */
  claimFiles(keys: readonly string[], owner: string, ttlMs: number): Promise<Set<string>> {
    const now = this.now();
    return shared.claimFiles(this.db, keys, owner, now, now + ttlMs);
  }

  /** Extends every file claim of `owner` by `ttlMs` from now. */
  renewFileClaims(owner: string, ttlMs: number): Promise<number> {
    return shared.renewFileClaims(this.db, owner, this.now() + ttlMs);
  }

  /** Gives up `owner`'s claims on archive files `keys`. */
  releaseFiles(keys: readonly string[], owner: string): Promise<void> {
    return shared.releaseFiles(this.db, keys, owner);
  }

  /** Writes the uses kept back, then releases the store's connections. */
  async close(): Promise<void> {
    await this.flushUses().catch(() => {});
    await this.db.close();
  }
}
