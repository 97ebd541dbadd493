/**
 * The worker: takes cart ids from the queue and drives each cart through the state machine.
 *
 * ```
 * claim → waiting → staging:  HEAD every file (sizes), reserve space, stage files in threads
 *                             (on a first try, a batch at a time: the first batches fetch
 *                             while the archive is asked for the sizes of the rest)
 *       → bundling:           check every staged file, plan the tar (write it when "bundle")
 *       → ready               (or error, with a message naming the file and the cause)
 * ```
 *
 * The database is the truth: a worker claims a cart for a while and renews the claim as it
 * works; when the cart is deleted or replaced, or the claim is lost, the work stops and the
 * cart's folder is removed. A cart whose worker died is queued again by any worker's sweep
 * once the claim expires, and resumes with the files that are already staged.
 *
 * @module
 */
import { hostname } from "node:os";
import type { ArchiveClient, ArchiveStatus } from "../lib/archive/client.ts";
import { sleep } from "../lib/util/backoff.ts";
import { planBundle } from "../lib/bundle/plan.ts";
import { cartBundleOptions, planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { headFile, StageError } from "../lib/staging/stage_file.ts";
import type { Config } from "../lib/config/config.ts";
import { DbUnavailableError } from "../lib/db/db.ts";
import { Batcher } from "../lib/util/batcher.ts";
import { Channel } from "../lib/util/channel.ts";
import { forEachLimited } from "../lib/util/limit.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import type { Queue } from "../lib/queue/queue.ts";
import { cancellations } from "../lib/space/remove_cart.ts";
import { expireCarts } from "../lib/space/retention.ts";
import { NO_SPACE, NoSpaceError, type Space } from "../lib/space/space.ts";
import type { Cart, CartFile, CartStore, StagedFacts } from "../lib/store/store.ts";
import type { Volume } from "../lib/volume/volume.ts";
import { TaskError, type ThreadPool } from "../threads/pool.ts";

/** What a worker needs. */
export interface WorkerDeps {
  /** Where carts are claimed and their progress recorded. */
  store: CartStore;
  /** Where cart ids come from, and where orphaned carts are queued again. */
  queue: Queue;
  /** The folder layout under VOLUME_PATH. */
  volume: Volume;
  /** The service's settings. */
  config: Config;
  /** The threads that stage, hash and bundle files. */
  pool: ThreadPool;
  /** The archive that files are staged from. */
  archive: ArchiveClient;
  /** Reserves space for carts, purging least-recently-used ones to make room. */
  space: Space;
}

/** A failure that ends the cart in `error` with this message. */
export class CartFailure extends Error {
  /** Builds the failure; `message` becomes the cart's message. */
  constructor(message: string) {
    super(message);
    this.name = "CartFailure";
  }
}

/** Why a cart's work was stopped without failing it. */
class Stopped extends Error {
  constructor(readonly why: "gone" | "shutdown" | "unsure") {
    super(
      why === "gone"
        ? "the cart was deleted or replaced"
        : why === "shutdown"
        ? "the worker is shutting down"
        : "the claim could not be renewed in time (database away?); another worker may take it",
    );
    this.name = "Stopped";
  }
}

/**
 * A cart's first staging reserves room, and lets the files fetch, a batch at a time: the
 * first batch of this many files, so that the first fetches start within milliseconds…
 */
const FIRST_BATCH_FILES = 256;
/**
 * …then batches of a quarter of the files released so far, up to this many: each reservation
 * sums the cart's staged bytes (a pass over its rows), so their number must grow more slowly
 * than the cart (a 40,000-file cart makes 15 of them; with batches of 256 it made 156, and they
 * took 3 s of the main thread).
 */
const MOST_BATCH_FILES = 4096;
/** A batch is also released once its files hold this many bytes. */
const RESERVE_EVERY_BYTES = 64 * 1024 * 1024;

/** A size the archive told, as the store records it. */
type SizeRecord = { idx: number; size: number; mtime: number };

/** What fetching a cart's files did. */
interface FetchCounts {
  fetched: number;
  adopted: number;
  again: number;
}

/** How messages name a file: `fileids[3] (id 1234)`. */
export function fileLabel(file: Pick<CartFile, "idx" | "archiveId">): string {
  return `fileids[${file.idx}] (id ${file.archiveId})`;
}

/** Consumes the queue and processes carts. */
export class CartWorker {
  /** This worker's name in claims: host, process and a random part. */
  readonly owner = `${hostname().slice(0, 40)}:${Deno.pid}:${crypto.randomUUID().slice(0, 8)}`;
  #active = new Map<string, AbortController>();
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #sweeping = false;
  #swept = false;
  #stopping = false;
  /** Folders without a row at the last sweep. */
  #folderSuspects = new Set<string>();
  /** Carts to queue again when this worker stops. */
  #handBack = new Set<string>();
  #onCancel: EventListener = (event) => {
    const id = (event as CustomEvent<string>).detail;
    this.#active.get(id)?.abort(new Stopped("gone"));
  };

  /** A worker on `deps`; nothing runs until {@linkcode start}. */
  constructor(readonly deps: WorkerDeps) {}

  /** Starts consuming, and sweeps for orphaned carts now and every half claim period. */
  async start(): Promise<void> {
    cancellations.addEventListener("cancel", this.#onCancel);
    await this.sweep();
    await this.deps.queue.consume((id) => this.work(id), this.deps.config.limits.cartsInFlight);
    this.#sweeper = setInterval(() => {
      this.sweep().catch((e) => log.warn("sweep failed", { error: errorMessage(e) }));
    }, Math.max(1000, this.deps.config.work.claimTtlMs / 2));
  }

  /** Stops taking work; carts in progress are released for another worker. */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#sweeper);
    cancellations.removeEventListener("cancel", this.#onCancel);
    for (const id of this.#active.keys()) this.#handBack.add(id);
    for (const c of this.#active.values()) c.abort(new Stopped("shutdown"));
    const deadline = Date.now() + 10_000;
    while (this.#active.size && Date.now() < deadline) await sleep(50);
    // Claims are released now: queue those carts (and messages that came meanwhile) again, so
    // that another worker takes them at once instead of after the sweep's quiet period.
    for (const id of this.#handBack) await this.deps.queue.publish(id).catch(() => {});
    await this.deps.queue.close();
  }

  /**
   * Queues unfinished carts nobody holds, and removes what deleted or replaced carts left:
   * their rows (when no live claim protects them) and folders without a row.
   */
  async sweep(): Promise<void> {
    if (this.#sweeping) return; // a sweep waiting on a slow broker is enough
    this.#sweeping = true;
    try {
      await this.#sweep();
    } finally {
      this.#sweeping = false;
    }
  }

  async #sweep(): Promise<void> {
    const { store, queue, volume, config } = this.deps;
    // The first sweep queues every orphan (an in-process queue starts empty); later ones only
    // carts left unclaimed for a while, so that a long backlog is not queued again and again.
    const quietSince = this.#swept ? Date.now() - 5 * config.work.claimTtlMs : Date.now();
    this.#swept = true;
    for (const cart of await store.orphans(quietSince)) {
      if (this.#active.has(cart.id)) continue;
      if (await store.requeue(cart.id, quietSince)) {
        log.info("cart queued again", { uid: cart.uid, cart: cart.id, status: cart.status });
        await queue.publish(cart.id);
      }
    }
    const now = Date.now();
    for (const cart of await store.dead()) {
      if (this.#active.has(cart.id)) continue;
      if (cart.claimOwner && (cart.claimExpires ?? 0) >= now) continue;
      await volume.remove(cart.id);
      await store.forget(cart.id);
    }
    // A folder without a row is removed when a second sweep still finds it so: a row that is
    // being written in another process's open transaction (fixit moves a folder) is spared.
    const suspects = new Set<string>();
    for (const id of await volume.cartIds()) {
      if (this.#active.has(id) || (await store.cart(id))) continue;
      if (this.#folderSuspects.has(id)) await volume.remove(id);
      else suspects.add(id);
    }
    this.#folderSuspects = suspects;
    await expireCarts(store, volume, this.deps.config.space.retentionMs);
  }

  /** Handles one queue message: claims the cart and works on it until it is final. */
  async work(cartId: string): Promise<void> {
    const { store, config } = this.deps;
    // A second message for a cart this process works on already (the sweep queues carts that
    // wait unclaimed, and a message may come twice): the claim would let this owner in again,
    // and two runs of one cart would tear each other's files down. The running work covers it.
    if (this.#active.has(cartId)) return;
    if (this.#stopping) return void this.#handBack.add(cartId);
    const controller = new AbortController();
    this.#active.set(cartId, controller);
    let cart: Cart | null;
    try {
      cart = await store.claim(cartId, this.owner, config.work.claimTtlMs);
    } catch (e) {
      log.warn("could not claim cart", { cart: cartId, error: errorMessage(e) });
      this.#active.delete(cartId);
      return;
    }
    if (!cart) {
      this.#active.delete(cartId);
      return;
    }
    // Renew the claim; stop when it is lost, and also when it cannot be renewed for most of
    // its life (the database is away): by the time it expires another worker may take the
    // cart, and two workers must never fetch into the same files.
    let renewed = Date.now();
    const heartbeat = setInterval(async () => {
      try {
        if (!(await store.renew(cartId, this.owner, config.work.claimTtlMs))) {
          controller.abort(new Stopped("gone"));
        } else renewed = Date.now();
      } catch {
        if (Date.now() - renewed > (config.work.claimTtlMs * 2) / 3) {
          controller.abort(new Stopped("unsure"));
        }
      }
    }, Math.max(200, config.work.claimTtlMs / 3));
    const started = Date.now();
    let again = false;
    try {
      if (cart.attempts > config.work.maxAttempts) {
        throw new CartFailure(
          `The cart failed ${config.work.maxAttempts} times (worker crashes included); ` +
            "DELETE and POST it again, or see the worker logs",
        );
      }
      log.info("cart claimed", { uid: cart.uid, cart: cart.id, attempt: cart.attempts });
      await this.#process(cart, controller.signal);
      log.info("cart ready", { uid: cart.uid, cart: cart.id, ms: Date.now() - started });
    } catch (error) {
      const reason = controller.signal.aborted ? controller.signal.reason : error;
      if (reason instanceof Stopped) {
        log.info("cart work stopped", { uid: cart.uid, cart: cart.id, why: reason.message });
        if (reason.why === "gone") await this.#removeIfDead(cartId);
      } else if (error instanceof DbUnavailableError) {
        log.warn("database lost during cart work; it will resume", {
          uid: cart.uid,
          cart: cart.id,
          error: error.message,
        });
      } else if (error instanceof TaskError && error.code === "crashed") {
        log.warn("thread crashed; cart queued again", { uid: cart.uid, cart: cart.id });
        again = true;
      } else {
        await this.#fail(cart, error);
      }
    } finally {
      clearInterval(heartbeat);
      this.#active.delete(cartId);
      await store.release(cartId, this.owner).catch(() => {});
    }
    // Only now: a message that came back while the cart was still active here was dropped.
    if (again) await this.deps.queue.publish(cartId).catch(() => {});
  }

  /**
   * After work stopped because the cart seemed gone: removes its folder and rows when it is
   * really deleted or replaced. A cart that is still live lost its claim to another worker
   * (ours expired), which is now using the folder: it stays. When the database cannot say,
   * nothing is removed; the sweep removes what is dead later.
   */
  async #removeIfDead(cartId: string): Promise<void> {
    const { store, volume } = this.deps;
    try {
      const row = await store.cart(cartId);
      if (row && (await store.liveCart(row.uid))?.id === cartId) return;
      await volume.remove(cartId);
      if (row) await store.forget(cartId);
    } catch (e) {
      log.warn("could not clean up a stopped cart; the sweep will", {
        cart: cartId,
        error: errorMessage(e),
      });
    }
  }

  async #fail(cart: Cart, error: unknown): Promise<void> {
    const { store, volume } = this.deps;
    const nospace = error instanceof NoSpaceError ||
      (error instanceof TaskError && error.code === "nospace");
    // Messages written for people (they name the file and the cause) are kept; anything else
    // may carry paths or internals, so it goes to the log and people get a sentence.
    const forPeople = error instanceof CartFailure ||
      (error instanceof TaskError && error.name === "StageError");
    const message = nospace
      ? NO_SPACE
      : forPeople
      ? errorMessage(error)
      : `The cart could not be prepared because of an internal error; the worker log has ` +
        `the details (cart ${cart.id})`;
    if (!forPeople && !nospace) {
      log.error("unexpected error in cart work", {
        uid: cart.uid,
        cart: cart.id,
        error: errorMessage(error),
      });
    }
    if (nospace) {
      await volume.remove(cart.id);
      await store.setReserved(cart.id, 0);
    } else {
      // The staged files stay (for `cartd admin fixit`); the reservation becomes what they hold.
      await this.deps.space.settle(cart.id).catch(() => {});
    }
    if (await store.move(cart.id, "error", message, null, this.owner)) {
      log.warn("cart failed", { uid: cart.uid, cart: cart.id, error: message });
    } else {
      await this.#removeIfDead(cart.id); // deleted or replaced meanwhile
    }
  }

  async #process(cart: Cart, signal: AbortSignal): Promise<void> {
    const { store } = this.deps;
    let status = cart.status;
    if (status === "waiting") {
      if (!(await store.move(cart.id, "staging", "", null, this.owner))) throw new Stopped("gone");
      status = "staging";
    }
    if (status === "staging") {
      await this.#stage(cart, signal);
      if (!(await store.move(cart.id, "bundling", "", null, this.owner))) {
        throw new Stopped("gone");
      }
    }
    await this.#bundle(cart, signal);
  }

  /**
   * Asks the archive for a file's size, by the rule that staging follows too
   * ({@linkcode headFile}: 5xx answers are asked again for `CARTD_MISSING_AFTER`).
   */
  async #status(file: CartFile, signal: AbortSignal): Promise<ArchiveStatus> {
    const { archive, config } = this.deps;
    const label = fileLabel(file);
    let status: ArchiveStatus;
    try {
      status = await headFile(
        archive,
        { archiveId: file.archiveId, label },
        config.staging,
        signal,
      );
    } catch (error) {
      signal.throwIfAborted();
      if (error instanceof StageError) throw new CartFailure(error.message);
      throw error;
    }
    if (status.media === "error") {
      throw new CartFailure(
        `${label}: the archive reports the file's media as "error"` +
          (status.message ? `: ${status.message}` : ""),
      );
    }
    return status;
  }

  /**
   * Asks the archive for every file's size (those not known from an earlier attempt), reserves
   * the space, and stages every file not recorded as staged. The files are read from the
   * store a page at a time: a cart of any size is worked through with one page in memory.
   */
  async #stage(cart: Cart, signal: AbortSignal): Promise<void> {
    await this.deps.volume.prepare(cart.id);
    // What the archive told of each file, until the file is fetched (which then needs no HEAD
    // of its own): a few dozen bytes a file.
    const statuses = new Map<number, ArchiveStatus>();
    const done = cart.attempts > 1
      ? await this.#stageResumed(cart, statuses, signal)
      : await this.#stageFresh(cart, statuses, signal);
    if (done.adopted || done.again) {
      log.info("staged files found on disk", {
        uid: cart.uid,
        cart: cart.id,
        files: done.adopted,
        again: done.again || undefined,
      });
    }
  }

  /**
   * A cart's first attempt: the files' sizes are asked for and their room reserved a batch
   * at a time ({@linkcode FIRST_BATCH_FILES} files at first, growing with the cart, or
   * {@linkcode RESERVE_EVERY_BYTES}),
   * and each batch is fetched as soon as its room is reserved, while the archive is asked for
   * the sizes of the rest. No file is fetched before its bytes are reserved; a cart that does
   * not fit fails at the first batch that does not, and what it fetched goes with the cart.
   */
  async #stageFresh(
    cart: Cart,
    statuses: Map<number, ArchiveStatus>,
    signal: AbortSignal,
  ): Promise<FetchCounts> {
    const { store, space } = this.deps;
    const sizes = this.#sizeRecorder(cart);
    const reserved = new Channel<CartFile>();
    // Asking and fetching stop together: when either fails, or the cart's work is stopped.
    const both = new AbortController();
    const stop = () => both.abort(signal.reason);
    signal.addEventListener("abort", stop, { once: true });
    if (signal.aborted) stop();
    let batch: CartFile[] = [];
    let batchBytes = 0;
    let releasedBytes = 0;
    let releasedFiles = 0;
    // Reservations are made one after another, each for all the bytes released so far.
    let reserving = Promise.resolve();
    const release = (): Promise<void> => {
      const files = batch;
      const upTo = releasedBytes + batchBytes;
      batch = [];
      batchBytes = 0;
      releasedBytes = upTo;
      releasedFiles += files.length;
      reserving = reserving.then(async () => {
        if (files.length === 0) return;
        // Asking runs ahead of fetching by a batch at most, so what is held for the files in
        // between stays small.
        await reserved.room(FIRST_BATCH_FILES, both.signal);
        await space.reserve(cart, upTo);
        for (const file of files) reserved.push(file);
      });
      return reserving;
    };
    const asking = (async () => {
      try {
        await forEachLimited(
          store.eachFile(cart.id, "unsized"),
          this.deps.config.limits.filesPerCart,
          async (file, inner) => {
            const status = await this.#askSize(file, statuses, sizes, inner);
            batch.push({ ...file, size: status.size, mtime: status.mtime });
            batchBytes += status.size;
            const most = Math.min(
              MOST_BATCH_FILES,
              Math.max(FIRST_BATCH_FILES, releasedFiles >> 2),
            );
            if (batch.length >= most || batchBytes >= RESERVE_EVERY_BYTES) {
              await release();
            }
          },
          both.signal,
        );
        await sizes.flush();
        await release();
        await this.#reserveCart(cart, releasedBytes);
        reserved.close();
      } catch (error) {
        await sizes.flush().catch(() => {});
        reserved.fail(error);
        both.abort(error);
        throw error;
      }
    })();
    const fetching = this.#fetch(cart, reserved, statuses, both.signal).catch((error) => {
      both.abort(error);
      throw error;
    });
    try {
      // The first failure is the cart's: the other side was stopped because of it.
      const [asked, fetched] = await Promise.allSettled([asking, fetching]);
      if (asked.status === "rejected") throw asked.reason;
      if (fetched.status === "rejected") throw fetched.reason;
      return fetched.value;
    } finally {
      signal.removeEventListener("abort", stop);
    }
  }

  /**
   * A cart tried before (a worker died, or its claim was lost): the sizes still unknown are
   * asked for, the whole cart's room is reserved, then every file not yet staged is fetched
   * or, when it is found whole on disk, adopted.
   */
  async #stageResumed(
    cart: Cart,
    statuses: Map<number, ArchiveStatus>,
    signal: AbortSignal,
  ): Promise<FetchCounts> {
    const { store, config } = this.deps;
    const sizes = this.#sizeRecorder(cart);
    try {
      await forEachLimited(
        store.eachFile(cart.id, "unsized"),
        config.limits.filesPerCart,
        async (file, inner) => void await this.#askSize(file, statuses, sizes, inner),
        signal,
      );
    } catch (error) {
      await sizes.flush().catch(() => {});
      throw error;
    }
    await sizes.flush();
    await this.#reserveCart(cart, 0);
    return await this.#fetch(cart, store.eachFile(cart.id, "unstaged"), statuses, signal);
  }

  /** Records the sizes the archive tells, in batches. */
  #sizeRecorder(cart: Cart): Batcher<SizeRecord> {
    return new Batcher((items) => this.deps.store.setFileSizes(cart.id, items), 256, 200);
  }

  /** Asks the archive for a file's size; keeps its answer for the fetch and records the size. */
  async #askSize(
    file: CartFile,
    statuses: Map<number, ArchiveStatus>,
    sizes: Batcher<SizeRecord>,
    signal: AbortSignal,
  ): Promise<ArchiveStatus> {
    const status = await this.#status(file, signal);
    statuses.set(file.idx, status);
    await sizes.add({ idx: file.idx, size: status.size, mtime: status.mtime });
    return status;
  }

  /**
   * Once every size is recorded: the cart's total, and its whole reservation (its files, and
   * its tar when it is a `"bundle": true` cart) when that is more than `reservedBytes`.
   */
  async #reserveCart(cart: Cart, reservedBytes: number): Promise<void> {
    const { store, volume, space } = this.deps;
    const total = await store.totalSize(cart.id);
    await store.setTotalBytes(cart.id, total);
    const tar = cart.bundle
      ? planCartBundle(cart, await StagedFiles.load(store, cart, volume, true), {
        format: "tar",
      }).size
      : 0;
    if (total + tar !== reservedBytes) await space.reserve(cart, total + tar);
    log.info("staging", { uid: cart.uid, cart: cart.id, files: cart.fileCount, bytes: total });
  }

  /**
   * Stages `files`, `CARTD_FILES_PER_CART` at a time. After a first attempt
   * a file may already sit on disk with its size but without a record (a crash came between
   * the rename and the batched record): it was checked before the rename, so hashing it is
   * enough (it is fetched after all when a requested hash does not match). Records are
   * written in batches; a crash loses at most the last moments' records, and those files are
   * found on disk on resume.
   */
  async #fetch(
    cart: Cart,
    files: Iterable<CartFile> | AsyncIterable<CartFile>,
    statuses: Map<number, ArchiveStatus>,
    signal: AbortSignal,
  ): Promise<FetchCounts> {
    const { store, volume, config, pool } = this.deps;
    const counts = { fetched: 0, adopted: 0, again: 0 };
    const staged = new Batcher<{ idx: number; facts: StagedFacts }>(
      (items) => store.filesStaged(cart.id, items),
      256,
      200,
    );
    const lookOnDisk = cart.attempts > 1;
    try {
      await forEachLimited(files, config.limits.filesPerCart, async (file, inner) => {
        const dest = volume.filePath(cart.id, file.idx);
        if (lookOnDisk && file.size !== null && (await sizeOnDisk(dest)) === file.size) {
          const hashes = await pool.hash(dest, file.hashtype ?? undefined, inner);
          if (file.hashsum === null || hashes.wanted === file.hashsum) {
            const { size, sha256, crc32 } = hashes;
            await staged.add({
              idx: file.idx,
              facts: { size, mtime: file.mtime ?? 0, sha256, crc32 },
            });
            counts.adopted++;
            return;
          }
          await Deno.remove(dest).catch(() => {});
          counts.again++;
        }
        const status = statuses.get(file.idx);
        statuses.delete(file.idx);
        let facts: StagedFacts;
        try {
          facts = await pool.stage(
            {
              archiveUrl: config.archiveUrl,
              archiveId: file.archiveId,
              dest,
              hashtype: file.hashtype ?? undefined,
              hashsum: file.hashsum ?? undefined,
              label: fileLabel(file),
              status,
            },
            config.staging,
            inner,
          );
        } catch (error) {
          // The file that failed first is marked (those stopped because of it are not).
          if (error instanceof TaskError && error.code !== "nospace" && !inner.aborted) {
            await store.fileStatus(cart.id, file.idx, "error", error.message);
          }
          throw error;
        }
        await staged.add({ idx: file.idx, facts });
        counts.fetched++;
      }, signal);
    } catch (error) {
      await staged.flush().catch(() => {});
      throw error;
    }
    await staged.flush();
    return counts;
  }

  /**
   * Checks every file against the store and the disk (one fetched again when it is missing),
   * plans the tar, writes it for a `"bundle": true` cart, and marks the cart ready.
   */
  async #bundle(cart: Cart, signal: AbortSignal): Promise<void> {
    const { store, volume, pool } = this.deps;
    let files = await StagedFiles.load(store, cart, volume, true);
    const missing = new Set<number>(files.columns.unstaged.map((i) => files.idx(i)));
    await forEachLimited(rows(files.length), 32, async (i) => {
      if ((await sizeOnDisk(files.source(i))) !== files.size(i)) missing.add(files.idx(i));
    }, signal);
    if (missing.size) {
      log.warn("staged files missing at bundling; fetching again", {
        uid: cart.uid,
        cart: cart.id,
        files: missing.size,
      });
      const again: CartFile[] = [];
      for await (const file of store.eachFile(cart.id)) if (missing.has(file.idx)) again.push(file);
      await this.#fetch(cart, again, new Map(), signal);
      files = await StagedFiles.load(store, cart, volume);
    }
    const readyAt = Date.now();
    const ready = { ...cart, readyAt };
    // The tar of a "bundle": true cart is laid out as downloads plan it (under the cart's uid).
    const options = cartBundleOptions(ready, { format: "tar" });
    const plan = planBundle(files, options);
    if (cart.bundle) {
      const written = await pool.bundle({
        files: files.columns,
        options,
        dest: volume.bundlePath(cart.id),
      }, signal);
      if (written.etag !== plan.etag || written.size !== plan.size) {
        throw new CartFailure(
          "The tar written to disk does not match its plan; POST the cart again",
        );
      }
    }
    signal.throwIfAborted();
    if (!(await store.move(cart.id, "ready", "", readyAt, this.owner))) throw new Stopped("gone");
    // The reservation of a ready cart is what it holds on disk: its checked files, and the tar.
    const held = files.bytes + (cart.bundle ? plan.size : 0);
    await this.deps.space.settle(cart.id, held).catch((e) =>
      log.warn("could not settle the reservation", { cart: cart.id, error: errorMessage(e) })
    );
  }
}

/** 0, 1, …, n - 1. */
function* rows(n: number): Generator<number> {
  for (let i = 0; i < n; i++) yield i;
}

/** The size of the file at `path`, or -1 when there is none. */
function sizeOnDisk(path: string): Promise<number> {
  return Deno.stat(path).then((s) => s.size, () => -1);
}
