/**
 * Operators' commands, as Pacifica operators know them: `cartd admin <command>`. Each works on
 * the database and volume the environment configures (the same settings as the service, which
 * may keep running meanwhile), prints what it did on stdout, and exits 0 — or prints a clear
 * message on stderr and exits 1 (the work failed) or 2 (the command line is wrong).
 *
 * ```
 * cartd admin dump [--json]             live carts, their files, and where space stands
 * cartd admin purge --older-than DUR    remove ready and failed carts unused for DUR (90s, 12h, 7d)
 * cartd admin fixit UID...              redo only the files that failed, then bundle
 * cartd admin dbsync                    create or upgrade the database schema
 * cartd admin dbchk                     exit 0 when the schema is current, 1 when not
 * ```
 *
 * `fixit` keeps the state machine's promise that a cart only moves forward: instead of moving
 * the failed cart back, it replaces it by a fresh `waiting` cart under the same uid (as a
 * re-POST of the same document would), which adopts the failed cart's folder and the records
 * of its verified files, so only the files that were not staged are fetched again. The new
 * cart goes through the normal path (queue → worker → reservation → staging → bundling).
 *
 * @module
 */
import type { Config } from "../lib/config/config.ts";
import { ConfigError, parseDuration } from "../lib/config/config.ts";
import type { Db } from "../lib/db/db.ts";
import { openDb } from "../lib/db/open.ts";
import { errorMessage } from "../lib/util/log.ts";
import { openQueue } from "../lib/queue/open.ts";
import { removeCart } from "../lib/space/remove_cart.ts";
import { schemaState, syncSchema } from "../lib/store/schema.ts";
import { Space, type SpaceReport } from "../lib/space/space.ts";
import { type Cart, type CartFile, CartStore, type OwnerUsage } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";

/** The admin commands: name → [usage, what it does (lines), the flags it takes]. */
const COMMANDS: Record<string, [usage: string, what: string[], flags: string[]]> = {
  dump: ["dump [--json]", ["live carts, their files, and where space stands"], ["json"]],
  purge: ["purge --older-than DUR", [
    "remove ready and failed carts not used for DUR",
    "(DUR: 90, 90s, 15m, 12h, 7d, 2w)",
  ], ["older-than"]],
  fixit: ["fixit UID...", [
    "retry failed carts: fetch only the files that were not",
    "staged, then bundle (a fresh cart under the same uid)",
  ], []],
  dbsync: ["dbsync", ["create or upgrade the database schema"], []],
  dbchk: ["dbchk", ["exit 0 when the schema is current, 1 when not"], []],
};

function usageLines(names: string[]): string {
  return names.flatMap((name) => {
    const [usage, what] = COMMANDS[name];
    return what.map((line, i) => `  ${(i ? "" : `cartd admin ${usage}`).padEnd(38)}${line}`);
  }).join("\n");
}

const EXIT_STATUS =
  "Exit status: 0 done, 1 the work failed (see the message), 2 the command line is wrong.";

/** `cartd admin --help`. */
export const ADMIN_HELP =
  `cartd admin: operators' commands (settings from the environment, as for the service)

Usage:
${usageLines(Object.keys(COMMANDS))}

On the embedded SQLite database, a command creates the schema when there is none yet.
'cartd admin COMMAND --help' shows one command.

${EXIT_STATUS}
`;

/** `cartd admin COMMAND --help`, or null for an unknown command. */
export function adminCommandHelp(command: string): string | null {
  if (!(command in COMMANDS)) return null;
  return `Usage:\n${usageLines([command])}\n\n${EXIT_STATUS}\n`;
}

/** A wrong command line: exit 2. */
class UsageError extends Error {}
/** The command could not do its work: exit 1. */
class AdminError extends Error {}

/** Writes a line to stdout. */
function say(line: string): void {
  console.log(line);
}

/** Human-readable bytes: 1023 B, 1.5 KiB, 2.0 GiB. */
export function formatBytes(n: number | null): string {
  if (n === null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/**
 * Opens the configured database with a current schema. The embedded SQLite database gets its
 * schema created (or upgraded) here, as the service does at start, so that an admin command on
 * a fresh volume finds no carts instead of failing; a MySQL database must have been synced
 * (`cartd dbsync`, or a service started against it).
 */
async function openCurrent(config: Config): Promise<Db> {
  const db = await openDb(config.database);
  try {
    if (config.database.kind === "sqlite") {
      await syncSchema(db);
      return db;
    }
    const state = await schemaState(db);
    if (!state.current) {
      throw new AdminError(
        state.found === 0
          ? "the database has no cartd schema: run 'cartd dbsync' first"
          : `the database schema is at version ${state.found}, this cartd needs ${state.expected}: ` +
            "run 'cartd dbsync'",
      );
    }
    return db;
  } catch (e) {
    await db.close();
    throw e;
  }
}

/** One cart as `dump --json` shows it. */
export interface DumpCart {
  /** The client's label. */
  uid: string;
  /** The principal that created it (`""`: made with access off). */
  owner: string;
  /** Internal id (a UUID). */
  id: string;
  /** Where the cart stands in the state machine. */
  status: Cart["status"];
  /** What went wrong (empty unless status is "error"). */
  message: string;
  /** Whether the tar is written to disk once while bundling. */
  bundle: boolean;
  /** Number of files in the cart. */
  fileCount: number;
  /** Sum of the files' sizes, or null until the archive has told them. */
  totalBytes: number | null;
  /** Bytes held for the cart against the volume's capacity. */
  reservedBytes: number;
  /** When the cart was stored (ISO 8601). */
  createdAt: string | null;
  /** When the cart became ready (ISO 8601), or null. */
  readyAt: string | null;
  /** When the cart was last used or moved (ISO 8601). */
  lastUsedAt: string | null;
  /** How often a worker has claimed it. */
  attempts: number;
  /** The cart's files, in document order. */
  files: {
    idx: number;
    id: string;
    path: string;
    status: CartFile["status"];
    size: number | null;
    message: string | null;
  }[];
}

/** What `dump --json` prints. */
export interface Dump {
  /** Where space stands under VOLUME_PATH. */
  space: SpaceReport;
  /** Every live cart, oldest first. */
  carts: DumpCart[];
  /**
   * What each principal's live carts hold, against its quotas (issue 17; `""`: the carts
   * made with access off).
   */
  principals: OwnerUsage[];
}

async function dump(store: CartStore, space: Space, json: boolean): Promise<void> {
  const result: Dump = { space: await space.report(), carts: [], principals: await store.usage() };
  for (const cart of await store.liveCarts()) {
    const files = await store.files(cart.id);
    result.carts.push({
      uid: cart.uid,
      owner: cart.owner,
      id: cart.id,
      status: cart.status,
      message: cart.message,
      bundle: cart.bundle,
      fileCount: cart.fileCount,
      totalBytes: cart.totalBytes,
      reservedBytes: cart.reservedBytes,
      createdAt: iso(cart.createdAt),
      readyAt: iso(cart.readyAt),
      lastUsedAt: iso(cart.lastUsedAt),
      attempts: cart.attempts,
      files: files.map((f) => ({
        idx: f.idx,
        id: f.archiveId,
        path: f.path,
        status: f.status,
        size: f.size,
        message: f.message,
      })),
    });
  }
  if (json) {
    say(JSON.stringify(result, null, 2));
    return;
  }
  const s = result.space;
  say(
    `space: ${formatBytes(s.reserved)} reserved` +
      (s.volumeSize === null ? "" : ` of ${formatBytes(s.volumeSize)} (CARTD_VOLUME_SIZE)`) +
      `; ${formatBytes(s.free)} free on disk; ${formatBytes(s.outstanding)} still to be ` +
      "written by carts in progress",
  );
  say(`${result.carts.length} live cart${result.carts.length === 1 ? "" : "s"}`);
  for (const p of result.principals) {
    say(
      `principal ${p.owner === "" ? "(none: access off)" : JSON.stringify(p.owner)}: ` +
        `${p.carts} live cart${p.carts === 1 ? "" : "s"}, ${formatBytes(p.reservedBytes)} ` +
        `reserved, ${p.pendingFiles} file${p.pendingFiles === 1 ? "" : "s"} still to stage`,
    );
  }
  for (const c of result.carts) {
    say("");
    say(
      `cart ${JSON.stringify(c.uid)}${c.owner ? ` of ${JSON.stringify(c.owner)}` : ""}: ` +
        `${c.status}${c.message ? ` (${c.message})` : ""}`,
    );
    say(
      `  id ${c.id}; ${c.fileCount} file${c.fileCount === 1 ? "" : "s"}, ` +
        `${formatBytes(c.totalBytes)}; reserved ${formatBytes(c.reservedBytes)}` +
        `${c.bundle ? "; bundle" : ""}`,
    );
    say(
      `  created ${c.createdAt}; ${c.readyAt ? `ready ${c.readyAt}; ` : ""}last used ` +
        `${c.lastUsedAt}; attempts ${c.attempts}`,
    );
    for (const f of c.files) {
      say(
        `  [${f.idx}] ${f.status.padEnd(7)} ${formatBytes(f.size).padStart(10)}  ` +
          `${JSON.stringify(f.id)} -> ${f.path}${f.message ? `: ${f.message}` : ""}`,
      );
    }
  }
}

async function purge(
  store: CartStore,
  volume: Volume,
  olderThan: string | undefined,
): Promise<void> {
  if (olderThan === undefined) {
    throw new UsageError("purge needs --older-than DURATION (such as 90s, 12h or 7d)");
  }
  const ms = parseDuration(olderThan);
  if (ms === null) {
    throw new UsageError(
      `--older-than "${olderThan}" is not a duration: use a number with s, m, h, d or w (7d)`,
    );
  }
  const now = Date.now();
  const before = now - ms;
  let count = 0;
  let bytes = 0;
  for (const cart of await store.liveCarts()) {
    if (cart.lastUsedAt >= before) continue;
    let taken = false;
    if (cart.status === "ready") taken = await store.unliveReady(cart.id, { usedBefore: before });
    else if (cart.status === "error") taken = await store.unlive(cart.id);
    if (!taken) continue; // in progress, or used / removed meanwhile
    // What removing it frees: its reservation (the bytes it counts), less the files it shares
    // with carts that stay (their bytes stay, counted by those carts).
    const shared = (await store.sharedOutside([cart.id])).get(cart.id) ?? 0;
    const held = Math.max(0, cart.reservedBytes - shared);
    await removeCart(store, volume, cart, `cartd admin purge --older-than ${olderThan}`);
    count++;
    bytes += held;
    say(
      `removed ${JSON.stringify(cart.uid)} (${cart.status}, last used ` +
        `${new Date(cart.lastUsedAt).toISOString()}, ${formatBytes(held)}` +
        (shared ? `; ${formatBytes(shared)} shared with carts that stay, kept)` : ")"),
    );
  }
  say(
    `Purged ${count} cart${count === 1 ? "" : "s"} not used for ${olderThan}, ` +
      `${formatBytes(bytes)} freed.`,
  );
}

async function fixit(
  config: Config,
  store: CartStore,
  volume: Volume,
  uids: string[],
): Promise<boolean> {
  if (!uids.length) throw new UsageError("fixit needs the uid of at least one failed cart");
  let ok = true;
  const fresh: Cart[] = [];
  // With access on, a uid may be several principals' carts: each failed one is fixed.
  const targets: { uid: string; old: Cart }[] = [];
  for (const uid of uids) {
    const live = await store.liveCartsOfUid(uid);
    if (!live.length) {
      console.error(`cartd admin fixit: no cart with uid ${JSON.stringify(uid)} found`);
      ok = false;
    }
    for (const old of live) targets.push({ uid, old });
  }
  for (const { uid, old } of targets) {
    if (old.status !== "error") {
      say(`${JSON.stringify(uid)} is ${old.status}, not failed: nothing to fix`);
      continue;
    }
    const newId = crypto.randomUUID();
    const from = volume.cartDir(old.id);
    const to = volume.cartDir(newId);
    let moved = false;
    const adopt = async () => {
      if (moved) return; // a retried transaction
      try {
        await Deno.rename(from, to);
        moved = true;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    };
    let cart: Cart | null;
    try {
      // Without a broker, the running service's sweep queues it: marked to be taken at once.
      cart = await store.retryFailed(old.id, newId, adopt, config.queue.kind === "memory");
    } catch (e) {
      if (moved) {
        await Deno.rename(to, from).catch((back) => {
          // The failed cart keeps its id but its files now sit under the new one: say where.
          console.error(
            `cartd admin fixit: could not move ${to} back to ${from} (${errorMessage(back)}); ` +
              `move it by hand before retrying ${JSON.stringify(uid)}`,
          );
        });
      }
      throw e;
    }
    if (!cart) {
      console.error(
        `cartd admin fixit: ${JSON.stringify(uid)} changed while being fixed; try again`,
      );
      ok = false;
      continue;
    }
    // The failed cart's row is gone from the live set; its folder now belongs to the new cart.
    await store.forget(old.id);
    const files = await store.files(cart.id);
    const kept = files.filter((f) => f.status === "staged").length;
    say(
      `${JSON.stringify(uid)}: was "${old.message}"; fresh cart ${cart.id} waiting, ` +
        `${kept} staged file${kept === 1 ? "" : "s"} kept, ${files.length - kept} to fetch again`,
    );
    fresh.push(cart);
  }
  if (fresh.length) {
    if (config.queue.kind === "memory") {
      // Marked by retryFailed, the cart is queued by the service's next sweep (worker/sweep.ts,
      // every half claim period, at least 1 s apart).
      const mostS = Math.max(1, config.work.claimTtlMs / 2000);
      say(
        "No broker is configured: the running service's next sweep queues the cart" +
          `${fresh.length === 1 ? "" : "s"}, within ${mostS} s (half of CARTD_CLAIM_TTL).`,
      );
    } else {
      const queue = await openQueue(config.queue);
      try {
        for (const cart of fresh) await queue.publish(cart.id);
      } finally {
        await queue.close();
      }
      say(`Queued ${fresh.length} cart${fresh.length === 1 ? "" : "s"}.`);
    }
  }
  return ok;
}

/**
 * `cartd dbsync` (create or upgrade the schema; exit 0) and `cartd dbchk` (exit 0 when the
 * schema is current, 1 when not), also spelt `cartd admin dbsync` / `cartd admin dbchk`.
 */
export async function schemaCommand(
  config: Config,
  command: "dbsync" | "dbchk",
): Promise<number> {
  const db = await openDb(config.database);
  try {
    if (command === "dbsync") {
      const before = await syncSchema(db);
      say(
        before === 0
          ? "Created the cartd schema."
          : `The cartd schema was at version ${before}; it is current now.`,
      );
      return 0;
    }
    const state = await schemaState(db);
    say(
      state.current
        ? `The cartd schema is current (version ${state.found}).`
        : `The cartd schema is at version ${state.found}; this cartd needs ${state.expected}: ` +
          "run 'cartd dbsync'.",
    );
    return state.current ? 0 : 1;
  } finally {
    await db.close();
  }
}

/**
 * Runs `cartd admin <args>`; returns the exit code. `settings` is called only once the command
 * line is known to be right (help and usage errors read no environment).
 */
export async function admin(
  settings: () => Config,
  args: string[],
  flags: Record<string, unknown>,
): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === "help") {
    (command === undefined && !flags.help ? console.error : console.log)(ADMIN_HELP);
    return command === undefined && !flags.help ? 2 : 0;
  }
  const help = adminCommandHelp(command);
  if (help === null) {
    console.error(`cartd admin: unknown command "${command}"; see 'cartd admin --help'`);
    return 2;
  }
  if (flags.help) {
    console.log(help);
    return 0;
  }
  try {
    const given = Object.keys(flags).filter((f) => flags[f] !== undefined);
    const wrong = given.find((f) => !COMMANDS[command][2].includes(f));
    if (wrong) {
      throw new UsageError(
        `${command} does not take --${wrong}; see 'cartd admin ${command} --help'`,
      );
    }
    if (command !== "fixit" && rest.length) {
      throw new UsageError(`${command} takes no arguments, but got "${rest.join(" ")}"`);
    }
    const config = settings();
    if (command === "dbsync" || command === "dbchk") return await schemaCommand(config, command);
    const db = await openCurrent(config);
    const store = new CartStore(db);
    const volume = new Volume(config.volumePath);
    try {
      if (command === "dump") {
        await dump(store, new Space(store, volume, config.space), flags.json === true);
        return 0;
      }
      if (command === "purge") {
        await purge(store, volume, flags["older-than"] as string | undefined);
        return 0;
      }
      return (await fixit(config, store, volume, rest)) ? 0 : 1;
    } finally {
      await db.close();
    }
  } catch (e) {
    console.error(`cartd admin ${command}: ${errorMessage(e)}`);
    return e instanceof UsageError || e instanceof ConfigError ? 2 : 1;
  }
}
