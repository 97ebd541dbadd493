/**
 * One archive file: one recall and one fetch for every cart that needs it (issue 14 item 2).
 *
 * **Bytes stored once: hard links within the volume.** A cart that needs an archive file
 * that a live cart holds staged already gets a hard link to those bytes in its own folder
 * (`carts/<id>/files/<idx>`, as any staged file), after the hash rule below; no archive
 * request is made. Every path that reads or removes a cart's files stays as it was: a
 * download reads the link, removing a cart's folder removes its links only, and the bytes go
 * with the last link. A file system without hard links makes each cart fetch its own copy.
 *
 * **The hash rule.** A stored copy serves a cart only where the cart's `hashtype`/`hashsum`
 * (if it gives one) matches what was verified for those bytes: the copy's own requested hash
 * (checked when it was staged), or its measured SHA-256; for another hash type the link is
 * hashed here (a local read, no archive request) before it is kept. A copy whose verified
 * digest differs is never used, and the cart fetches its own.
 *
 * **One lead per archive file.** The cart of this process that first needs a file that is
 * not stored leads it ({@linkcode FileShares.lead}): it alone recalls and fetches it. Other
 * carts of the process wait for that lead to end (outside the fetch slots) and then link the
 * copy it recorded, or lead themselves if it failed. With `claims` (production mode: several
 * workers on one database), leading a file also takes its row in `file_claims`: a worker
 * whose claim is held by another process waits (polling every `pollMs`) until that claim is
 * given up, or has expired because its worker died. A worker renews its claims every third
 * of `ttlMs`.
 *
 * **Counting.** A link is recorded with the content key of its inode (`linked: true`); the
 * store counts its bytes only where no live cart counts them already (lib/store/shared.ts).
 *
 * @module
 */
import type { HashType } from "../lib/cart/document.ts";
import { contentKey, type StagedFacts } from "../lib/cart/staged.ts";
import type { CartFile, CartStore, StoredCopy } from "../lib/store/store.ts";
import type { Volume } from "../lib/volume/volume.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import type { ThreadPool } from "../threads/pool.ts";

export { contentKey } from "../lib/cart/staged.ts";

/**
 * Files whose stored copies {@linkcode FileShares.withHints} asks for in one query: the first
 * HEADs of a cart wait for this many files to be read from the store (one page).
 */
const HINT_BATCH = 256;

/** Whether a stored copy may serve a file by the hash rule: yes, no, or hash it to know. */
export type HashVerdict = "yes" | "no" | "check";

/**
 * The hash rule (see the module doc) for `file` and the stored `copy`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { hashVerdict } from "./shares.ts";
 * const copy = { hashtype: "md5", hashsum: "aa", sha256: "bb" };
 * assert.equal(hashVerdict({ hashtype: null, hashsum: null }, copy), "yes");
 * assert.equal(hashVerdict({ hashtype: "md5", hashsum: "aa" }, copy), "yes");
 * assert.equal(hashVerdict({ hashtype: "md5", hashsum: "cc" }, copy), "no");
 * assert.equal(hashVerdict({ hashtype: "sha256", hashsum: "bb" }, copy), "yes");
 * assert.equal(hashVerdict({ hashtype: "sha256", hashsum: "cc" }, copy), "no");
 * assert.equal(hashVerdict({ hashtype: "sha1", hashsum: "dd" }, copy), "check");
 * // Staged without a manifest, the copy's SHA-256 was not measured: hashed to know.
 * const unmeasured = { hashtype: null, hashsum: null, sha256: null };
 * assert.equal(hashVerdict({ hashtype: "sha256", hashsum: "bb" }, unmeasured), "check");
 * ```
 */
export function hashVerdict(
  file: { hashtype: string | null; hashsum: string | null },
  copy: { hashtype: string | null; hashsum: string | null; sha256: string | null },
): HashVerdict {
  if (file.hashsum === null || file.hashtype === null) return "yes";
  if (file.hashtype === "sha256" && copy.sha256 !== null) {
    return copy.sha256 === file.hashsum ? "yes" : "no";
  }
  if (copy.hashtype === file.hashtype && copy.hashsum !== null) {
    return copy.hashsum === file.hashsum ? "yes" : "no";
  }
  return "check";
}

/** A file linked from a stored copy: what to record. */
export interface Reused {
  /** The staged facts (the copy's). */
  facts: StagedFacts;
  /** The content key of the bytes. */
  key: string;
  /** The copy it links to. */
  from: StoredCopy;
}

/** A file with what {@linkcode FileShares.withHints} found of its stored copies. */
export interface ShareHint {
  /** The file. */
  file: CartFile;
  /** Whether another live cart held its archive file staged when the hint was asked. */
  stored: boolean;
  /** The records of the process's other carts then (see `FileShares.worthLooking`). */
  epoch: number;
}

/** What {@linkcode FileShares.lead} gives: the lead of one archive file, until ended. */
export interface Lead {
  /** The archive file led. */
  readonly archiveId: string;
  /** Who leads: `<cart id>:<index>`. */
  readonly holder: string;
  /** Ends the lead (once recorded, or failed): the carts waiting for it look again. */
  end(): void;
  /** Whether another cart of this process waits for it (its record is then written at once). */
  readonly wanted: boolean;
}

/** Settings of {@linkcode FileShares}. */
export interface ShareOptions {
  /** Take a claim in the database per file led (several workers on one database). */
  claims: boolean;
  /** The claim's owner (the worker process's claim owner). */
  owner: string;
  /** How long a claim lasts unless renewed, in ms. */
  ttlMs: number;
  /** How often a claim held by another process is asked for again, in ms (default 1,000). */
  pollMs?: number;
}

/** One lead: small, as a 100,000-file cart may hold as many (its promise made on demand). */
interface LeadEntry {
  cart: string;
  idx: number;
  /** Resolves the carts of this process waiting for it; undefined while none waits. */
  waiters: (() => void)[] | undefined;
  /** The database claim's key, when claims are on. */
  claimKey: string | undefined;
}

/** Counters of {@linkcode FileShares.stats}. */
export interface ShareStats {
  /** Files linked from a stored copy (no archive request). */
  linked: number;
  /** Leads ended so far. */
  leads: number;
  /** Times a cart waited for another cart's lead (in this process or another). */
  waits: number;
}

/** The SHA-256 (hex) of an archive id: its key in `file_claims`. */
export async function fileClaimKey(archiveId: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(archiveId));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The process's shared files: see the module doc. One per worker process. */
export class FileShares {
  readonly #store: CartStore;
  readonly #volume: Volume;
  readonly #pool: ThreadPool;
  readonly #options: Required<ShareOptions>;
  readonly #leads = new Map<string, LeadEntry>();
  #renewer: ReturnType<typeof setInterval> | undefined;
  #stats: ShareStats = { linked: 0, leads: 0, waits: 0 };
  /** Staged files recorded by the process's carts, in all and by each cart staging. */
  #recorded = 0;
  readonly #recordedBy = new Map<string, number>();

  /** Shares over `store` and `volume`; `pool` hashes links of another hash type. */
  constructor(store: CartStore, volume: Volume, pool: ThreadPool, options: ShareOptions) {
    this.#store = store;
    this.#volume = volume;
    this.#pool = pool;
    this.#options = { pollMs: 1_000, ...options };
  }

  /** Whether leads take a claim in the database (several workers on one database). */
  get claims(): boolean {
    return this.#options.claims;
  }

  /** What was shared so far. */
  stats(): ShareStats {
    return { ...this.#stats };
  }

  /**
   * The files of cart `cartId` from `files`, in their order, each with whether a live cart
   * other than `cartId` held its archive file staged when asked (`stored`): one store query
   * per {@linkcode HINT_BATCH} files instead of a {@linkcode reuse} lookup per file, so that
   * a cart whose files no other cart holds pays nothing per file for sharing. The hint is as
   * of the query: {@linkcode worthLooking} says when it may be stale (another cart of this
   * process recorded files since). A cart that is fetching a file at the same time leads it
   * ({@linkcode lead}), and the waiting cart looks for its copy once that lead ends.
   */
  async *withHints(
    files: AsyncIterable<CartFile> | Iterable<CartFile>,
    cartId: string,
  ): AsyncGenerator<ShareHint> {
    let batch: CartFile[] = [];
    const flush = async function* (this: FileShares) {
      const epoch = this.#othersRecorded(cartId);
      const stored = await this.#store.stagedElsewhere(batch.map((f) => f.archiveId), cartId);
      const out = batch;
      batch = [];
      for (const file of out) yield { file, stored: stored.has(file.archiveId), epoch };
    }.bind(this);
    for await (const file of files) {
      batch.push(file);
      if (batch.length >= HINT_BATCH) yield* flush();
    }
    if (batch.length) yield* flush();
  }

  /**
   * Whether to look for a stored copy of `hint.file` ({@linkcode reuse}): when the hint found
   * one, or when another cart of this process has recorded staged files since the hint was
   * asked (it may hold this one now).
   */
  worthLooking(hint: ShareHint): boolean {
    return hint.stored || this.epoch(hint.file.cartId) !== hint.epoch;
  }

  /**
   * How many staged files the process's carts other than `cartId` have recorded while
   * `cartId` stages: a lookup for a stored copy that found none holds while this stays.
   */
  epoch(cartId: string): number {
    return this.#othersRecorded(cartId);
  }

  /** Cart `cartId` recorded `count` staged files (see {@linkcode worthLooking}). */
  noteRecorded(cartId: string, count: number): void {
    this.#recorded += count;
    this.#recordedBy.set(cartId, (this.#recordedBy.get(cartId) ?? 0) + count);
  }

  /** Staged files recorded by the process's carts other than `cartId` (while it stages). */
  #othersRecorded(cartId: string): number {
    return this.#recorded - (this.#recordedBy.get(cartId) ?? 0);
  }

  /**
   * Links a stored copy of `file` (another live cart's staged file, by the hash rule) to
   * `dest`, replacing what is there; null when there is none that serves.
   */
  async reuse(file: CartFile, dest: string, signal: AbortSignal): Promise<Reused | null> {
    const copies = await this.#store.copiesOf(file.archiveId, file.cartId);
    for (const copy of copies) {
      const verdict = hashVerdict(file, copy);
      if (verdict === "no") continue;
      const source = this.#volume.filePath(copy.cartId, copy.idx);
      const temp = `${dest}.link`;
      await Deno.remove(temp).catch(() => {});
      try {
        await Deno.link(source, temp);
      } catch (e) {
        // Removed meanwhile (its cart went), or no hard links here: the next copy, or a fetch.
        log.debug("a stored copy could not be linked", { from: source, error: errorMessage(e) });
        continue;
      }
      const info = await Deno.stat(temp);
      let facts: StagedFacts = {
        size: copy.size,
        mtime: copy.mtime,
        sha256: copy.sha256,
        crc32: copy.crc32,
      };
      let ok = info.size === copy.size;
      if (ok && verdict === "check") {
        const hashes = await this.#pool.hash(temp, file.hashtype as HashType, signal);
        ok = hashes.wanted === file.hashsum && hashes.size === copy.size;
        facts = { ...facts, sha256: hashes.sha256, crc32: hashes.crc32 };
      }
      if (!ok) {
        await Deno.remove(temp).catch(() => {});
        continue;
      }
      await Deno.rename(temp, dest);
      this.#stats.linked++;
      return { facts, key: contentKey(info), from: copy };
    }
    return null;
  }

  /**
   * The lead of `file`'s archive file for `file`'s cart: the lead when it is this file's
   * already or can be taken now; otherwise `wait`, a promise that settles when the current
   * lead (of another cart here, or another process's claim) ends, after which the caller
   * looks for a stored copy and asks again. `signal` stops the wait.
   */
  async lead(file: CartFile, signal: AbortSignal): Promise<Lead | { wait: Promise<void> }> {
    const id = file.archiveId;
    const mine = this.#leads.get(id);
    if (mine) {
      if (mine.cart === file.cartId && mine.idx === file.idx) return this.#handle(id, mine);
      return { wait: this.#waitFor(mine, signal) };
    }
    let claimKey: string | undefined;
    if (this.#options.claims) {
      claimKey = await fileClaimKey(id);
      const { owner, ttlMs } = this.#options;
      const held = await this.#store.claimFiles([claimKey], owner, ttlMs);
      // Another cart of this process may have taken the lead while the claim was asked for.
      const meanwhile = this.#leads.get(id);
      if (meanwhile) return { wait: this.#waitFor(meanwhile, signal) };
      if (!held.has(claimKey)) {
        this.#stats.waits++;
        return { wait: this.#waitForClaim(claimKey, signal) };
      }
      this.#startRenewing();
    }
    const entry: LeadEntry = { cart: file.cartId, idx: file.idx, waiters: undefined, claimKey };
    this.#leads.set(id, entry);
    return this.#handle(id, entry);
  }

  /** A promise that settles when `entry` ends (or `signal` aborts). */
  #waitFor(entry: LeadEntry, signal: AbortSignal): Promise<void> {
    this.#stats.waits++;
    const done = new Promise<void>((resolve) => (entry.waiters ??= []).push(resolve));
    return abortable(done, signal);
  }

  /** Ends every lead of cart `cartId` (its staging ended, whichever way). */
  endCart(cartId: string): void {
    this.#recordedBy.delete(cartId);
    for (const [id, entry] of [...this.#leads]) {
      if (entry.cart === cartId) this.#end(id, entry);
    }
  }

  /** Stops renewing; the claims still held expire by themselves. */
  close(): void {
    if (this.#renewer !== undefined) clearInterval(this.#renewer);
    this.#renewer = undefined;
  }

  #handle(id: string, entry: LeadEntry): Lead {
    return {
      archiveId: id,
      holder: `${entry.cart}:${entry.idx}`,
      end: () => this.#end(id, entry),
      get wanted() {
        return entry.waiters !== undefined;
      },
    };
  }

  #end(id: string, entry: LeadEntry): void {
    if (this.#leads.get(id) !== entry) return;
    this.#leads.delete(id);
    this.#stats.leads++;
    for (const wake of entry.waiters ?? []) wake();
    if (entry.claimKey) {
      this.#store.releaseFiles([entry.claimKey], this.#options.owner).catch((e) =>
        log.warn("could not give up a file claim; it expires by itself", {
          error: errorMessage(e),
        })
      );
    }
    if (this.#leads.size === 0 && this.#renewer !== undefined) {
      clearInterval(this.#renewer);
      this.#renewer = undefined;
    }
  }

  /** Resolves once another process's claim on `key` is gone (given up or expired). */
  async #waitForClaim(key: string, signal: AbortSignal): Promise<void> {
    const { owner, ttlMs, pollMs } = this.#options;
    for (;;) {
      await sleep(pollMs, signal);
      const held = await this.#store.claimFiles([key], owner, ttlMs);
      if (held.has(key)) {
        // Free now: give it back at once; the lead is taken when the caller asks again.
        await this.#store.releaseFiles([key], owner);
        return;
      }
    }
  }

  #startRenewing(): void {
    if (this.#renewer !== undefined) return;
    const { owner, ttlMs } = this.#options;
    this.#renewer = setInterval(() => {
      this.#store.renewFileClaims(owner, ttlMs).catch((e) =>
        log.warn("could not renew the file claims", { error: errorMessage(e) })
      );
    }, Math.max(100, ttlMs / 3));
    Deno.unrefTimer(this.#renewer as unknown as number);
  }
}

function abortable(p: Promise<void>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** What {@linkcode sharesOf} reads of a worker's services (worker/context.ts `WorkerDeps`). */
export interface ShareDeps {
  /** The process's shares, when it made them. */
  shares?: FileShares;
  /** The store. */
  store: CartStore;
  /** The volume. */
  volume: Volume;
  /** The threads. */
  pool: ThreadPool;
  /** The settings (the claim period). */
  config: { work: { claimTtlMs: number } };
}

const made = new WeakMap<ShareDeps, FileShares>();

/**
 * The shares of a worker: `deps.shares`, or one made for these deps (in-process leads only,
 * no database claims), the same for every call with them.
 */
export function sharesOf(deps: ShareDeps): FileShares {
  if (deps.shares) return deps.shares;
  let shares = made.get(deps);
  if (!shares) {
    shares = new FileShares(deps.store, deps.volume, deps.pool, {
      claims: false,
      owner: "local",
      ttlMs: deps.config.work.claimTtlMs,
    });
    made.set(deps, shares);
  }
  return shares;
}
