/**
 * The staging stage: brings every file of a cart from the archive onto the cart volume.
 *
 * ```
 * HEAD each file (its size) → reserve the room → fetch it in a thread (threads/pool.ts)
 *                 └ on tape: recall it (the process's RecallManager) ┘ once it is on disk
 * ```
 *
 * Recall and fetch are separate (issue 14): a file whose HEAD says `tape` is handed to the
 * worker process's one `RecallManager` (lib/staging/recalls.ts) as soon as its HEAD answers,
 * so every tape file of the cart is asked for at once (up to `CARTD_RECALLS_MAX` over the
 * process), and the first such HEAD has the stage requests of the cart's other files sent
 * ahead of their HEADs (worker/early_stages.ts: the HEADs go at the pace of the HEAD ceiling,
 * the stage requests need not); it waits for the tape without a fetch slot or a thread, and
 * joins the fetch queue when the archive says `disk`. Fetch slots (`CARTD_FILES_PER_CART`, `CARTD_FILES_IN_FLIGHT`)
 * are held only while a file is fetched. A file that a fetch finds back on tape (the archive
 * pushed it back) is recalled again. A cart left with nothing but recalls to wait for tells
 * the dispatcher (`CartRun.onRecallsOnly`), which frees its place among
 * `CARTD_CARTS_IN_FLIGHT` for carts that have work.
 *
 * A cart's first attempt does this a batch at a time: the first batches fetch while the
 * archive is asked for the sizes of the rest, and no file is fetched before its bytes are
 * reserved. A resumed cart (a worker died, or its claim was lost) asks for the sizes still
 * unknown, reserves the whole cart, and fetches what is not staged, adopting the files it finds
 * whole on disk. Files are read from the store a page at a time, so a cart of any size is
 * worked through with one page in memory.
 *
 * @module
 */
import type { ArchiveStatus } from "../lib/archive/client.ts";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { headFile, type StagedFile, StageError } from "../lib/staging/stage_file.ts";
import type { CartFile, CartStore, StagedFacts } from "../lib/store/store.ts";
import { Batcher } from "../lib/util/batcher.ts";
import { Channel } from "../lib/util/channel.ts";
import { forEachLimited } from "../lib/util/limit.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { TaskError } from "../threads/pool.ts";
import type { CartRun } from "./context.ts";
import { CartFailure } from "./errors.ts";
import { startSpan, traced } from "../lib/util/trace.ts";
import { contentKey, type Lead, type Reused, type ShareHint, sharesOf } from "./shares.ts";
import { EarlyStages } from "./early_stages.ts";

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

/**
 * What the archive told of each file (by index), kept until the file is fetched: its HEAD, or
 * for a file on tape its recall under way (which resolves with the HEAD that said `disk`, or
 * with nothing when another cart led the file meanwhile: then look for its copy), or a stored
 * copy already linked into the cart's folder (no archive request at all).
 */
export type Statuses = Map<
  number,
  | (ArchiveStatus & { recalled?: true; epoch?: number })
  | Promise<ArchiveStatus | undefined>
  | { reused: Reused }
>;

/**
 * How often one file may be found back on tape when it is fetched (the archive pushed it
 * back after saying `disk`) before its cart fails: each time it is recalled again.
 */
const MOST_RETURNS_TO_TAPE = 5;

/** What fetching a cart's files did. */
export interface FetchCounts {
  /** Files brought from the archive. */
  fetched: number;
  /** Files found whole on disk and recorded without a fetch. */
  adopted: number;
  /** Files found on disk that did not match, and were fetched again. */
  again: number;
  /** Files linked from a copy another cart holds (worker/shares.ts). */
  linked: number;
}

/** How messages name a file: `fileids[3] (id 1234)`. */
export function fileLabel(file: Pick<CartFile, "idx" | "archiveId">): string {
  return `fileids[${file.idx}] (id ${file.archiveId})`;
}

/** The size of the file at `path`, or -1 when there is none. */
export function sizeOnDisk(path: string): Promise<number> {
  return Deno.stat(path).then((s) => s.size, () => -1);
}

/**
 * Stages every file of `run.cart` not recorded as staged: asks the archive for the sizes not
 * known from an earlier attempt, reserves the space and fetches. Throws what stopped it: a
 * {@linkcode CartFailure}, a thread's `TaskError`, `NoSpaceError`, or the signal's reason.
 */
export async function stageCart(run: CartRun): Promise<void> {
  const { cart } = run;
  await run.deps.volume.prepare(cart.id);
  // What the archive told of each file, until the file is fetched (which then needs no HEAD
  // of its own): a few dozen bytes a file.
  const statuses: Statuses = new Map();
  let done: FetchCounts;
  try {
    done = cart.attempts > 1 ? await stageResumed(run, statuses) : await stageFresh(run, statuses);
  } finally {
    // The leads of files whose staging did not get as far as the fetch (the cart failed).
    sharesOf(run.deps).endCart(cart.id);
  }
  if (done.linked) {
    log.info("files shared with other carts (linked, not fetched)", {
      uid: cart.uid,
      cart: cart.id,
      files: done.linked,
    });
  }
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
 * {@linkcode RESERVE_EVERY_BYTES}), and each batch is fetched as soon as its room is
 * reserved, while the archive is asked for the sizes of the rest. A cart that does not fit
 * fails at the first batch that does not, and what it fetched goes with the cart.
 */
async function stageFresh(run: CartRun, statuses: Statuses): Promise<FetchCounts> {
  const { cart, signal, deps: { store, space, config } } = run;
  const sizes = sizeRecorder(run);
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
  let linkedBytes = 0;
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
  // Once a HEAD says `tape`, the other files' stage requests go out ahead of their HEADs.
  const early = new EarlyStages(run, (idx) => statuses.has(idx));
  const asking = (async () => {
    try {
      await forEachLimited(
        sharesOf(run.deps).withHints(store.eachFile(cart.id, "unsized"), cart.id),
        config.limits.filesPerCart,
        async (hint, inner) => {
          const { file } = hint;
          const status = await askSize(run, hint, statuses, sizes, inner, both.signal, early);
          batch.push({ ...file, size: status.size, mtime: status.mtime });
          // A file linked from a stored copy takes no room: another cart counts its bytes.
          if (status.linked) linkedBytes += status.size;
          else batchBytes += status.size;
          const most = Math.min(MOST_BATCH_FILES, Math.max(FIRST_BATCH_FILES, releasedFiles >> 2));
          if (batch.length >= most || batchBytes >= RESERVE_EVERY_BYTES) await release();
        },
        both.signal,
      );
      await sizes.flush();
      await release();
      await reserveCart(run, releasedBytes, linkedBytes);
      reserved.close();
    } catch (error) {
      await flushAfterFailure(run, sizes, "sizes");
      reserved.fail(error);
      both.abort(error);
      throw error;
    } finally {
      await early.end();
    }
  })();
  const fetching = fetchFiles({ ...run, signal: both.signal }, reserved, statuses).catch(
    (error) => {
      both.abort(error);
      throw error;
    },
  );
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
 * A cart tried before: the sizes still unknown are asked for, the whole cart's room is
 * reserved, then every file not yet staged is fetched or, when it is found whole on disk,
 * adopted.
 */
async function stageResumed(run: CartRun, statuses: Statuses): Promise<FetchCounts> {
  const { cart, signal, deps: { store, config } } = run;
  const sizes = sizeRecorder(run);
  // The recalls started while sizes are asked end with this stage: a cart that fails leaves
  // none behind in the process's recall manager.
  const ended = new AbortController();
  const recallSignal = AbortSignal.any([signal, ended.signal]);
  const early = new EarlyStages(run, (idx) => statuses.has(idx));
  try {
    // Bytes linked from stored copies: recorded ones, and those linked while sizes are asked.
    let linkedBytes = await store.linkedBytes(cart.id);
    try {
      await forEachLimited(
        sharesOf(run.deps).withHints(store.eachFile(cart.id, "unsized"), cart.id),
        config.limits.filesPerCart,
        async (hint, inner) => {
          const status = await askSize(run, hint, statuses, sizes, inner, recallSignal, early);
          if (status.linked) linkedBytes += status.size;
        },
        signal,
      );
    } catch (error) {
      await flushAfterFailure(run, sizes, "sizes");
      throw error;
    } finally {
      await early.end();
    }
    await sizes.flush();
    await reserveCart(run, 0, linkedBytes);
    return await fetchFiles(run, store.eachFile(cart.id, "unstaged"), statuses);
  } finally {
    ended.abort(new Error("the cart's staging ended"));
  }
}

/** Records the sizes the archive tells, in batches. */
function sizeRecorder({ cart, deps: { store } }: CartRun): Batcher<SizeRecord> {
  return new Batcher((items) => store.setFileSizes(cart.id, items), 256, 200);
}

/**
 * Writes what a batcher still holds after the stage failed; the stage's own error is the one
 * that counts, so a failure here is logged, not thrown. What is lost is found again on the
 * next attempt (sizes are asked for again, staged files are adopted from disk).
 */
async function flushAfterFailure<T>(
  { cart }: CartRun,
  batcher: Batcher<T>,
  what: "sizes" | "staged files",
): Promise<void> {
  try {
    await batcher.flush();
  } catch (e) {
    log.warn(`could not record the last ${what} of a failed stage; the next attempt redoes them`, {
      uid: cart.uid,
      cart: cart.id,
      error: errorMessage(e),
    });
  }
}

/**
 * Asks the archive for a file's size, by the rule that staging follows too
 * ({@linkcode headFile}: 5xx answers are asked again for `CARTD_MISSING_AFTER`); keeps the
 * answer for the fetch and records the size. A file that another live cart may hold staged
 * (`hint`, from `FileShares.withHints`) is linked from that copy instead, when one serves. A file on tape is recalled at once (its recall,
 * which `cartSignal` stops, is what is kept): recalls take no room on the volume, so they need
 * not wait for the reservation that its fetch waits for. The first file on tape makes `early`
 * send the stage requests of the files not asked yet (worker/early_stages.ts); each HEAD then
 * takes over or drops its file's early request.
 */
async function askSize(
  run: CartRun,
  hint: ShareHint,
  statuses: Statuses,
  sizes: Batcher<SizeRecord>,
  signal: AbortSignal,
  cartSignal: AbortSignal,
  early: EarlyStages,
): Promise<ArchiveStatus & { linked?: boolean }> {
  const { file } = hint;
  const { archive, config, volume } = run.deps;
  const label = fileLabel(file);
  // Staged for a live cart already: a link to its bytes, with no archive request.
  const shares = sharesOf(run.deps);
  const reused = shares.worthLooking(hint) &&
    await shares.reuse(file, volume.filePath(file.cartId, file.idx), signal);
  if (reused) {
    early.notOnTape(file.archiveId);
    statuses.set(file.idx, { reused });
    const { size, mtime } = reused.facts;
    await sizes.add({ idx: file.idx, size, mtime });
    return { media: "disk", size, mtime, linked: true } as ArchiveStatus & { linked: boolean };
  }
  let status: ArchiveStatus;
  try {
    // Size HEADs pass the process's HEAD ceiling too (CARTD_HEADS_PER_SECOND).
    await run.deps.recalls.headSlot(signal);
    status = await headFile(archive, { archiveId: file.archiveId, label }, config.staging, signal);
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
  if (status.media === "tape") {
    early.onTape();
    // A cart asks for no more sizes while it has many recalls waiting for the cap: its files
    // beyond those are held by nothing until their turn (CARTD_RECALLS_MAX).
    await run.deps.recalls.queueRoom(run.cart.id, signal);
  } else early.notOnTape(file.archiveId);
  // With database claims (several workers), a file is recalled only by the worker that leads
  // it; in one process the RecallManager's one recall per id is that already.
  const recall = shares.claims ? leadThenRecall : recallFile;
  // The fetch looks for a copy again when another cart of the process recorded files since.
  const known = status.media === "tape"
    ? recall(run, file, cartSignal)
    : Object.assign(status, { epoch: shares.epoch(file.cartId) });
  statuses.set(file.idx, known);
  await sizes.add({ idx: file.idx, size: status.size, mtime: status.mtime });
  return status;
}

/**
 * A file on tape: its recall once this cart leads the file (worker/shares.ts). When another
 * cart leads it, resolves with nothing once that lead ends: the fetch then looks for the copy
 * it recorded, or leads the file itself. Marked handled, as {@linkcode recallFile}.
 */
function leadThenRecall(
  run: CartRun,
  file: CartFile,
  signal: AbortSignal,
): Promise<ArchiveStatus | undefined> {
  const started = (async () => {
    const got = await sharesOf(run.deps).lead(file, signal);
    if ("wait" in got) {
      await got.wait;
      return undefined;
    }
    return await recallFile(run, file, signal);
  })();
  started.catch(() => {});
  return started;
}

/**
 * Starts the recall of a file on tape with the process's `RecallManager`. The promise is
 * marked handled: a recall that fails is reported where it is awaited (the fetch), and one
 * that no fetch awaits any more (the cart failed first, or was stopped) has nothing to say.
 */
function recallFile(run: CartRun, file: CartFile, signal: AbortSignal): Promise<ArchiveStatus> {
  const span = startSpan("cartd.recall", {
    "cartd.uid": run.cart.uid,
    "cartd.cart": run.cart.id,
    "cartd.file.index": file.idx,
    "cartd.archive_id": file.archiveId,
  });
  const recall = run.deps.recalls.recall(file.archiveId, {
    cart: run.cart.id,
    label: fileLabel(file),
    signal,
  });
  recall.then(() => span.end(), (error) => span.end(error));
  return recall;
}

/**
 * Once every size is recorded: the cart's total, and its whole reservation (its files, and
 * its tar when it is a `"bundle": true` cart) when that is more than `reservedBytes`.
 */
async function reserveCart(
  run: CartRun,
  reservedBytes: number,
  linkedBytes: number,
): Promise<void> {
  const { cart, deps: { store, space } } = run;
  const total = await store.totalSize(cart.id);
  await store.setTotalBytes(cart.id, total);
  const tar = cart.bundle ? await tarSize(run) : 0;
  // Files linked from stored copies are counted by the carts that fetched them.
  const own = Math.max(0, total - linkedBytes) + tar;
  if (own !== reservedBytes) await space.reserve(cart, own);
  log.info("staging", { uid: cart.uid, cart: cart.id, files: cart.fileCount, bytes: total });
}

/** The size of a `"bundle": true` cart's tar, planned from the sizes the archive told. */
async function tarSize({ cart, deps: { store, volume } }: CartRun): Promise<number> {
  const files = await StagedFiles.load(store, cart, volume, true);
  return planCartBundle(cart, files).size;
}

/** A file on its way to the fetch, and how often a fetch found it back on tape so far. */
interface ToFetch {
  file: CartFile;
  returns: number;
}

/** A staged file to record, with its content key, and the lead to end once it is recorded. */
interface ToRecord {
  idx: number;
  facts: StagedFacts;
  key?: string;
  linked?: boolean;
  lead?: Lead;
}

/**
 * Stages `files`, `CARTD_FILES_PER_CART` at a time, and records them as staged (in batches;
 * a crash loses at most the last moments' records, and those files are found on disk on
 * resume). A file that `statuses` says is on tape (or whose recall is under way) is recalled
 * first, holding no fetch slot while it waits; so is a file that a fetch finds on tape. After
 * a first attempt a file may already sit on disk with its size but without a record (a crash
 * came between the rename and the batched record): it was checked before the rename, so
 * hashing it is enough (it is fetched after all when a requested hash does not match). The
 * first file that fails is marked `error` in the store. Used by the bundling stage too, for
 * files that went missing.
 */
export async function fetchFiles(
  run: CartRun,
  files: Iterable<CartFile> | AsyncIterable<CartFile>,
  statuses: Statuses,
): Promise<FetchCounts> {
  const { cart, signal, deps: { store, volume, config, pool } } = run;
  const shares = sharesOf(run.deps);
  const counts = { fetched: 0, adopted: 0, again: 0, linked: 0 };
  // A file's lead ends once its record is written: the carts waiting for it then find it.
  const staged = new Batcher<ToRecord>(
    async (items) => {
      await store.filesStaged(cart.id, items);
      shares.noteRecorded(cart.id, items.length);
      for (const item of items) item.lead?.end();
    },
    256,
    200,
  );
  const lookOnDisk = cart.attempts > 1;
  // The files to fetch, in the order they can be: those on disk (or of media not known yet)
  // as the source gives them, those on tape once their recall says `disk`.
  const queue = new Channel<ToFetch>();
  // Stops what feeds the queue (the source, the recalls) when the fetching fails or stops.
  const feeding = new AbortController();
  const stop = () => feeding.abort(signal.reason);
  signal.addEventListener("abort", stop, { once: true });
  // The lanes wait on the queue: it ends with the feeding (whose reason they then throw).
  feeding.signal.addEventListener("abort", () => queue.fail(feeding.signal.reason));
  if (signal.aborted) stop();
  // Files taken from the source and not yet staged (queued, fetching or recalling), and of
  // those the ones fetching: the queue ends once the source has and none is left, and a cart
  // whose only files left are recalling frees its place in the dispatcher.
  let unfinished = 0;
  let fetching = 0;
  let fed = false;
  let failing = false;
  const settle = () => {
    if (!fed || feeding.signal.aborted) return;
    if (unfinished === 0) queue.close();
    else if (fetching === 0 && queue.size === 0) run.onRecallsOnly?.();
  };
  const recall = (item: ToFetch, started?: Promise<ArchiveStatus | undefined>) => {
    (started ?? recallFile(run, item.file, feeding.signal)).then((status) => {
      if (feeding.signal.aborted) return;
      // Nothing: another cart led the file meanwhile; the fetch looks for its copy first.
      // A recall shared with another cart may have ended in that cart's fetch already: the
      // status is marked so that the fetch looks for its copy too.
      if (status) statuses.set(item.file.idx, { ...status, recalled: true });
      else statuses.delete(item.file.idx);
      queue.push(item);
    }, async (error) => {
      if (feeding.signal.aborted || failing) return;
      // The first recall that fails is the cart's failure: its file is marked first.
      failing = true;
      await markFailed(store, cart.id, item.file, error);
      feeding.abort(error);
    });
  };
  const feeder = (async () => {
    try {
      for await (const file of files) {
        if (feeding.signal.aborted) return;
        unfinished++;
        const item = { file, returns: 0 };
        const known = statuses.get(file.idx);
        if (known instanceof Promise) {
          statuses.delete(file.idx);
          recall(item, known);
        } else if (known && "reused" in known) {
          queue.push(item); // linked already: only its record is left to write
        } else if (known?.media === "tape") {
          statuses.delete(file.idx);
          recall(item);
        } else {
          // The source is read as the fetches go, not ahead of them.
          await queue.room(config.limits.filesPerCart, feeding.signal);
          if (feeding.signal.aborted) return;
          queue.push(item);
        }
      }
      fed = true;
      settle();
    } catch (error) {
      feeding.abort(error);
    }
  })();
  const fetchOne = async ({ file, returns }: ToFetch, inner: AbortSignal) => {
    const dest = volume.filePath(cart.id, file.idx);
    const linkedAlready = statuses.get(file.idx);
    if (linkedAlready && "reused" in linkedAlready) {
      statuses.delete(file.idx);
      const { facts, key } = linkedAlready.reused;
      await staged.add({ idx: file.idx, facts, key, linked: true });
      counts.linked++;
      unfinished--;
      return;
    }
    if (lookOnDisk && file.size !== null && (await sizeOnDisk(dest)) === file.size) {
      const hashes = await pool.hash(dest, file.hashtype ?? undefined, inner);
      if (file.hashsum === null || hashes.wanted === file.hashsum) {
        const { size, sha256, crc32 } = hashes;
        // A link to another cart's bytes (a crash came before its record) is one again.
        const info = await Deno.stat(dest).catch(() => undefined);
        await staged.add({
          idx: file.idx,
          facts: { size, mtime: file.mtime ?? 0, sha256, crc32 },
          key: info && contentKey(info),
          linked: (info?.nlink ?? 1) > 1,
        });
        counts.adopted++;
        unfinished--;
        return;
      }
      // The fetch below replaces the file whole (it writes a part file and renames it), so
      // a file that cannot be removed here does no harm.
      await Deno.remove(dest).catch((e) =>
        log.debug("could not remove a staged file that did not match", {
          cart: cart.id,
          file: fileLabel(file),
          error: errorMessage(e),
        })
      );
      counts.again++;
    }
    // One cart leads each archive file: the others wait, outside the fetch slots, and link.
    const got = await shares.lead(file, feeding.signal);
    if ("wait" in got) {
      statuses.delete(file.idx);
      return recall({ file, returns }, got.wait.then(() => undefined));
    }
    // A file whose HEAD this attempt just answered was looked for in the store then (when a
    // copy may have been stored): it is looked for again only after a wait (a recall,
    // another cart's lead), or when another cart of the process recorded files since.
    const answered = statuses.get(file.idx);
    const fresh = answered !== undefined && !(answered instanceof Promise) &&
      !("reused" in answered) && !answered.recalled &&
      answered.epoch === shares.epoch(cart.id);
    const reused = fresh ? null : await shares.reuse(file, dest, inner);
    if (reused) {
      statuses.delete(file.idx);
      await staged.add({
        idx: file.idx,
        facts: reused.facts,
        key: reused.key,
        linked: true,
        lead: got,
      });
      counts.linked++;
      unfinished--;
      return;
    }
    const known = statuses.get(file.idx);
    const status = known instanceof Promise || (known && "reused" in known) ? undefined : known;
    statuses.delete(file.idx);
    // The thread's own HEAD (the media is not known here) passes the HEAD ceiling too.
    if (!status) await run.deps.recalls.headSlot(inner);
    let facts: StagedFile;
    try {
      facts = await traced("cartd.stage_file", {
        "cartd.uid": cart.uid,
        "cartd.cart": cart.id,
        "cartd.file.index": file.idx,
        "cartd.archive_id": file.archiveId,
      }, async (span) => {
        const staged = await pool.stage(
          {
            archiveUrl: config.archiveUrl,
            archiveId: file.archiveId,
            dest,
            hashtype: file.hashtype ?? undefined,
            hashsum: file.hashsum ?? undefined,
            label: fileLabel(file),
            status,
            onTape: "return",
            // Only a manifest needs the SHA-256; one asked for at download time measures it.
            measureSha256: cart.manifest,
          },
          config.staging,
          inner,
        );
        span.set({ "cartd.bytes": staged.size });
        return staged;
      });
    } catch (caught) {
      let error = caught;
      if (error instanceof TaskError && error.code === "ontape" && !inner.aborted) {
        // On tape: when its media was not known yet (a resumed cart), or pushed back since
        // the archive said `disk`, which may happen a few times but not for ever.
        const back = status?.media === "disk" ? returns + 1 : returns;
        if (back <= MOST_RETURNS_TO_TAPE) return recall({ file, returns: back });
        error = new CartFailure(
          `${fileLabel(file)}: the archive put the file back on tape ${back} times between ` +
            "its recall and its download; ask the archive's operators why it does not stay on disk",
        );
      }
      got.end();
      // The file that failed first is marked (those stopped because of it are not).
      if (!(error instanceof TaskError && error.code === "nospace") && !inner.aborted) {
        await markFailed(store, cart.id, file, error);
      }
      throw error;
    }
    // The thread read the key from the file it wrote. None when the file is gone already
    // (removed behind cartd's back: bundling fetches it again); it is then shared with nobody.
    const { key, ...record } = facts;
    await staged.add({ idx: file.idx, facts: record, key, lead: got });
    // Carts wait for this file: they find it once it is recorded, so that is done now.
    if (got.wanted) staged.flush().catch(() => {});
    counts.fetched++;
    unfinished--;
  };
  try {
    await forEachLimited(queue, config.limits.filesPerCart, async (item, inner) => {
      fetching++;
      try {
        await fetchOne(item, inner);
      } catch (error) {
        // Stops the feeding at once: the other lanes may be waiting on an empty queue.
        feeding.abort(error);
        throw error;
      } finally {
        fetching--;
        settle();
      }
    }, feeding.signal);
    await feeder;
  } catch (error) {
    feeding.abort(error);
    await flushAfterFailure(run, staged, "staged files");
    shares.endCart(cart.id);
    throw error;
  } finally {
    signal.removeEventListener("abort", stop);
  }
  await staged.flush();
  shares.endCart(cart.id);
  return counts;
}

/** Marks the file that failed its cart as `error`, with the failure's words. */
async function markFailed(
  store: CartStore,
  cartId: string,
  file: CartFile,
  error: unknown,
): Promise<void> {
  if (
    !(error instanceof TaskError || error instanceof StageError || error instanceof CartFailure)
  ) {
    return;
  }
  await store.fileStatus(cartId, file.idx, "error", error.message).catch((e) =>
    log.warn("could not mark the file that failed its cart", {
      cart: cartId,
      file: fileLabel(file),
      error: errorMessage(e),
    })
  );
}
