/**
 * Brings one archive file to disk, verified (SPEC §2).
 *
 * HEAD ({@linkcode headFile}: a 5xx is asked again for a while before the file counts as
 * missing) → while on tape: stage POST, poll HEAD with a growing delay, re-POST now and then,
 * give up after a limit → GET written to `dest.part` (a file that fits one write as it
 * arrives, with its crc32; a bigger one piped to disk by the runtime, and read from the page
 * cache behind the pipe, ./tail_sums.ts, only when a hash is wanted: its crc32 is then summed
 * too, else left null for a zip to measure) with the requested hash, and sha256 when
 * `measureSha256` asks for it, computed in the same thread, size checked against `X-Content-Length`, retried with a
 * growing delay when short / corrupt / failed → mtime from `Last-Modified` → rename to `dest`.
 *
 * The worker does not wait for tape here: it recalls files with the process's one
 * `RecallManager` (./recalls.ts), outside any thread, and stages a file with `onTape:
 * "return"` only once it is on disk. Then a file found on tape (a HEAD says so, or a GET fails
 * and the HEAD after it says so: the archive pushed it back) ends the attempt at once with a
 * {@linkcode StageError} of code `"ontape"`, and the worker recalls it again.
 *
 * @example
 * ```ts
 * import { DEFAULT_STAGE_SETTINGS, stageFile } from "./stage_file.ts";
 * const staged = await stageFile({
 *   archiveUrl: "http://127.0.0.1:8080/",
 *   archiveId: "1234",
 *   dest: "/volume/cart/1/2/3/foo.txt",
 *   hashtype: "sha1",
 *   hashsum: "…",
 *   label: "fileids[0] (id 1234)",
 * }, DEFAULT_STAGE_SETTINGS);
 * console.log(staged.size, staged.sha256);
 * ```
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { crc32 } from "node:zlib";
import { dirname } from "node:path";
import { ArchiveClient, ArchiveError, type ArchiveStatus } from "../archive/client.ts";
import { backoffDelays, retry, sleep } from "../util/backoff.ts";
import { isNoSpace } from "../util/fs_errors.ts";
import { errorMessage, log, seconds } from "../util/log.ts";
import { QuickFs } from "./quick_fs.ts";
import { TailSums } from "./tail_sums.ts";
import { sectionDefaults, type StageSettings } from "../config/config.ts";
import type { HashType } from "../cart/document.ts";
import { contentKey, type StagedFacts } from "../cart/staged.ts";

/** Defaults of {@linkcode StageSettings}: those of the settings table (lib/config/settings.ts). */
export const DEFAULT_STAGE_SETTINGS: StageSettings = Object.freeze(sectionDefaults("staging"));

/** One file to stage. */
export interface StageJob {
  /** The archive's base URL, ending with "/". */
  archiveUrl: string;
  /** The file's id in the archive. */
  archiveId: string;
  /** Absolute final path. The bytes go to `${dest}.part` first, renamed when verified. */
  dest: string;
  /** Algorithm of `hashsum`; both or neither. */
  hashtype?: HashType;
  /** Expected hex digest, compared case-insensitively. */
  hashsum?: string;
  /** How messages name the file, e.g. `fileids[3] (id 1234)`. */
  label: string;
  /** A HEAD the caller already did; with media `disk` no HEAD is sent before the GET. */
  status?: ArchiveStatus;
  /**
   * A file on tape: `"wait"` (default) recalls it here (stage POST, polls) and goes on;
   * `"return"` fails at once with a {@linkcode StageError} of code `"ontape"`, for a caller
   * that recalls files itself (the worker, with its `RecallManager`) and must not hold a
   * thread's task while the tape turns.
   */
  onTape?: "wait" | "return";
  /**
   * Measure the file's SHA-256 (default true). Only a manifest needs it, and it is the
   * costliest part of staging (about 0.55 GB/s a core, where CRC-32 runs at 20 GB/s): the
   * worker asks for it only for a cart with a manifest. Without it the result's `sha256` is
   * null, unless `hashtype` is `sha256` (then it is measured to check `hashsum` anyway).
   */
  measureSha256?: boolean;
}

/**
 * What was written to `dest` (its mtime is set from `Last-Modified`): the store's facts, and
 * the content key of the file written (`contentKey` of lib/cart/staged.ts; absent when it
 * could not be read, such as a file removed at once), taken here so that the worker's main
 * thread makes no call of its own per file.
 */
export type StagedFile = StagedFacts & { key?: string };

/**
 * Why staging failed. `"ontape"` is not a failure of the file: it is on tape (again) and must
 * be recalled before it is fetched (only with `onTape: "return"`, or after a GET found it back
 * on tape more than `fetchAttempts` times).
 */
export type StageErrorCode =
  | "hash"
  | "archive"
  | "timeout"
  | "size"
  | "nospace"
  | "io"
  | "ontape";

/** A file that could not be staged; the message names `job.label` and the cause, for a person. */
export class StageError extends Error {
  /** Kind of failure. */
  readonly code: StageErrorCode;
  /** Builds the error. */
  constructor(code: StageErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StageError";
    this.code = code;
  }
}

const WRITE_CHUNK = 1 << 20;

/**
 * While a big file is piped to disk, its sums read what was written every this many
 * milliseconds (lib/staging/tail_sums.ts)…
 */
const TAIL_TICK_MS = 50;
/**
 * …for this long at most a tick: with a CRC-32 alone that reads some 30 MB from the page cache,
 * more than a file gets in a tick; a SHA-256 (0.55 GB/s) reads 1 MB, and leaves the rest for
 * the end, so that it does not hold the thread the other pipes need.
 */
const TAIL_BUDGET_MS = 2;

/** This thread's choice between quick synchronous and asynchronous fs calls (see quick_fs.ts). */
const quickFs = new QuickFs();

/**
 * Stages one file: see the module description. Resolves with the verified file at
 * `job.dest`; rejects with a {@linkcode StageError}, or with the abort reason when `signal`
 * aborts. Never leaves `${dest}.part` behind.
 */
export async function stageFile(
  job: StageJob,
  settings: StageSettings,
  signal?: AbortSignal,
): Promise<StagedFile> {
  signal?.throwIfAborted();
  if ((job.hashtype === undefined) !== (job.hashsum === undefined)) {
    throw new StageError("hash", `${job.label}: hashtype and hashsum must be given together`);
  }
  // The client shares this thread's health of the archive: while it is unreachable, calls
  // wait for it (up to `outageMaxMs`) rather than spend the file's attempts.
  const client = new ArchiveClient(job.archiveUrl, {
    requestTimeoutMs: settings.requestTimeoutMs,
    outageMaxMs: settings.outageMaxMs,
  });
  let status = await waitForDisk(client, job, settings, signal);
  for (let backOnTape = 0;; backOnTape++) {
    try {
      return await retry(() => download(client, job, status, settings, signal), {
        attempts: settings.fetchAttempts,
        delays: retryDelays(settings),
        isRetryable: (err) => err instanceof AttemptFailure,
        signal,
      });
    } catch (err) {
      const error = err instanceof AttemptFailure ? err.error : err;
      // A GET found the file back on tape: wait for it again here, unless the caller recalls.
      const again = error instanceof StageError && error.code === "ontape" &&
        job.onTape !== "return" && backOnTape < settings.fetchAttempts;
      if (!again) throw error;
      status = await waitForDisk(client, { ...job, status: undefined }, settings, signal);
    }
  }
}

/** The error of a file found on tape when it was to be fetched. */
function onTapeError(job: StageJob, what: string): StageError {
  return new StageError(
    "ontape",
    `${job.label}: ${what}; it is recalled again (if this repeats, ask the archive's ` +
      "operators why it goes back to tape so soon)",
  );
}

/** A download attempt that may be retried; `error` is what to report if it was the last. */
class AttemptFailure extends Error {
  constructor(readonly error: StageError) {
    super(error.message);
  }
}

/** The delays between tries of one archive call: `retryDelayMs`, doubling each retry. */
function retryDelays(settings: StageSettings): Iterator<number> {
  return backoffDelays({ initialMs: settings.retryDelayMs, maxMs: Infinity, jitter: 0 });
}

function archiveFailure(job: StageJob, err: ArchiveError): StageError {
  return new StageError(err.timedOut ? "timeout" : "archive", `${job.label}: ${err.reason}`, {
    cause: err,
  });
}

/** Runs one archive call, retrying retryable failures with a growing delay. */
async function withRetries<T>(
  job: StageJob,
  settings: StageSettings,
  signal: AbortSignal | undefined,
  call: () => Promise<T>,
): Promise<T> {
  try {
    return await retry(call, {
      attempts: settings.fetchAttempts,
      delays: retryDelays(settings),
      isRetryable: (err) => err instanceof ArchiveError && err.retryable,
      signal,
    });
  } catch (err) {
    throw err instanceof ArchiveError ? archiveFailure(job, err) : err;
  }
}

/** How {@linkcode headFile} names a file: its archive id, and its label for messages. */
export interface FileRef {
  /** The file's id in the archive. */
  archiveId: string;
  /** How messages name the file, e.g. `fileids[3] (id 1234)`. */
  label: string;
}

/**
 * HEAD of one archive file, by the rule of SPEC §2 that both the worker's size requests and
 * {@linkcode stageFile} follow. The archive answers 500 to a missing file and to a passing
 * failure alike, so an answer of 5xx (or 408/429, a connection failure, a time-out) is asked
 * again on a growing delay ({@linkcode backoffDelays} from `retryDelayMs` up to `pollMaxMs`)
 * until `missingAfterMs` have passed since the first such failure; only then does the file
 * count as missing. Its error names the file, what the archive answered, for how long, and
 * the archive's own message: a HEAD answer has no body, so one GET is sent then to read the
 * `message` of the archive's JSON error page. Any other failure (a 404, a header missing) is
 * final at once.
 *
 * @throws {StageError} naming `file.label`; or `signal.reason` when `signal` aborts.
 */
export async function headFile(
  client: ArchiveClient,
  file: FileRef,
  settings: StageSettings,
  signal?: AbortSignal,
): Promise<ArchiveStatus> {
  let failingMs = 0;
  try {
    return await retry(() => client.status(file.archiveId, signal), {
      deadlineMs: settings.missingAfterMs,
      delays: backoffDelays({ initialMs: settings.retryDelayMs, maxMs: settings.pollMaxMs }),
      isRetryable: (err) => err instanceof ArchiveError && err.retryable,
      signal,
      onFailure: (_, { elapsedMs }) => failingMs = elapsedMs,
    });
  } catch (err) {
    if (!(err instanceof ArchiveError) || signal?.aborted) throw err;
    if (!err.retryable) throw headFailure(file, err);
    throw await missingFile(client, file, err, failingMs, signal);
  }
}

/** What {@linkcode headVerdict} makes of a failing HEAD: the error's code and its words. */
export interface HeadVerdict {
  /** The code of the {@linkcode StageError} to throw. */
  code: StageErrorCode;
  /** The reason, without the file's label (the caller puts `label: ` before it). */
  reason: string;
}

/**
 * The words of the HEAD rule of SPEC §2, for {@linkcode headFile} and the recall manager
 * (./recalls.ts), which applies the same rule on its own poll schedule:
 *
 * - `failingMs` undefined: `err` is final at once (not retryable); an id with `/` that
 *   answers 404 gets the hint that the Pacifica Archive Interface cannot serve it.
 * - else: the calls kept failing for `failingMs`; an archive that answered (5xx) makes the
 *   file count as missing (`says`: the archive's own message, from a GET or POST error page),
 *   one that did not answer is named as possibly down.
 */
export function headVerdict(
  archiveId: string,
  err: ArchiveError,
  failingMs?: number,
  says?: string,
): HeadVerdict {
  if (failingMs === undefined) {
    // The Pacifica Archive Interface splits the URL path at "/" (encoded or not): such an id
    // answers 404 to HEAD (and 500 to GET), however it is sent.
    const hint = err.status === 404 && archiveId.includes("/")
      ? ' (the Pacifica Archive Interface cannot serve an id that contains "/")'
      : "";
    return { code: "archive", reason: `${err.reason}${hint}` };
  }
  const during = `for ${seconds(failingMs)} s`;
  if (err.status === undefined) {
    return {
      code: err.timedOut ? "timeout" : "archive",
      reason: `${err.reason} (asked again ${during}); check that the archive is up`,
    };
  }
  return {
    code: "archive",
    reason: `${err.reason} ${during}, so the file counts as missing from the archive` +
      (says ? ` (the archive says: ${says})` : ""),
  };
}

/** A HEAD failure that no retry can mend, as a {@linkcode StageError} naming the file. */
export function headFailure(file: FileRef, err: ArchiveError): StageError {
  const { code, reason } = headVerdict(file.archiveId, err);
  return new StageError(code, `${file.label}: ${reason}`, { cause: err });
}

/**
 * The error of a file whose HEAD kept failing for `elapsedMs`, naming the file. When the
 * archive answered (5xx), one GET reads its own message for the file, since the HEAD answer
 * had no body to carry it.
 */
export async function missingFile(
  client: ArchiveClient,
  file: FileRef,
  err: ArchiveError,
  elapsedMs: number,
  signal?: AbortSignal,
): Promise<StageError> {
  let says = err.detail;
  if (err.status !== undefined && !says) {
    try {
      const body = await client.open(file.archiveId, signal);
      // Only the archive's error message was wanted; a body dropped unread changes nothing.
      await body.cancel().catch(() => {});
    } catch (got) {
      if (signal?.aborted) throw signal.reason;
      if (got instanceof ArchiveError) says = got.detail;
    }
  }
  const { code, reason } = headVerdict(file.archiveId, err, elapsedMs, says);
  return new StageError(code, `${file.label}: ${reason}`, { cause: err });
}

/** HEAD, and while on tape: stage, poll with a growing delay, re-stage, time out. */
async function waitForDisk(
  client: ArchiveClient,
  job: StageJob,
  settings: StageSettings,
  signal?: AbortSignal,
): Promise<ArchiveStatus> {
  const head = () => headFile(client, job, settings, signal);
  let st = job.status ?? await head();
  if (st.media === "tape" && job.onTape === "return") {
    throw onTapeError(job, "the file is on tape");
  }
  const start = performance.now();
  const delays = backoffDelays({ initialMs: settings.pollInitialMs, maxMs: settings.pollMaxMs });
  let lastPost: number | undefined;
  for (;;) {
    if (st.media === "disk") return st;
    if (st.media === "error") {
      throw new StageError(
        "archive",
        `${job.label}: the archive reports media "error"${st.message ? `: ${st.message}` : ""}`,
      );
    }
    if (lastPost === undefined || performance.now() - lastPost >= settings.restageEveryMs) {
      await withRetries(job, settings, signal, () => client.stage(job.archiveId, signal));
      lastPost = performance.now();
    }
    const now = performance.now();
    const remaining = settings.stageTimeoutMs - (now - start);
    if (remaining <= 0) {
      throw new StageError(
        "timeout",
        `${job.label}: still on tape after ${seconds(now - start)} s`,
      );
    }
    const untilRestage = lastPost + settings.restageEveryMs - now;
    await sleep(Math.max(0, Math.min(delays.next().value, remaining, untilRestage)), signal);
    st = await head();
  }
}

/** One GET into `dest.part`; verified and renamed, or `.part` removed. */
async function download(
  client: ArchiveClient,
  job: StageJob,
  status: ArchiveStatus,
  settings: StageSettings,
  signal?: AbortSignal,
): Promise<StagedFile> {
  const part = `${job.dest}.part`;
  const ctl = new AbortController();
  const fetchSignal = signal ? AbortSignal.any([signal, ctl.signal]) : ctl.signal;
  const expected = status.size;
  let file: Deno.FsFile | undefined;
  let renamed = false;
  let watchdog: ReturnType<typeof setInterval> | undefined;
  let tail: TailSums | undefined;
  let written = 0;
  try {
    let body: ReadableStream<Uint8Array>;
    try {
      body = await client.open(job.archiveId, fetchSignal);
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (err instanceof ArchiveError) {
        // The archive may have pushed the file back to tape since it was on disk (a real
        // archive then answers 500): one HEAD tells, and such a file goes back to recalling.
        if (err.status !== undefined && await backOnTape(client, job, signal)) {
          throw onTapeError(
            job,
            `the archive answered the download with ${err.reason}, ` +
              "and says the file is on tape again",
          );
        }
        const failure = archiveFailure(job, err);
        if (err.retryable) throw new AttemptFailure(failure);
        throw failure;
      }
      throw err;
    }
    // A file that fits the buffer is written in one call once it is all here (create, write
    // and close in one trip to the I/O threads: a cart of 10,000 small files makes 20,000
    // fewer); a bigger one is piped to disk as it comes, and read behind the pipe for its sums.
    const sha256: Hash | undefined = job.measureSha256 !== false || job.hashtype === "sha256"
      ? createHash("sha256")
      : undefined;
    const wanted: Hash | undefined = job.hashtype && job.hashtype !== "sha256"
      ? createHash(job.hashtype)
      : undefined;
    const whole = expected <= WRITE_CHUNK;
    // A piped file is read back for a hash, but not for its CRC-32 alone: that pass cost 10 %
    // of the time of 16 × 64 MiB (it holds the thread the other pipes need, bench/bigfiles.ts),
    // and only a zip needs the CRC-32 (measured once the cart is ready, worker/bundle_cart.ts).
    const readBack = sha256 !== undefined || wanted !== undefined;
    if (!whole) {
      try {
        file = await createPart(part);
        tail = await TailSums.open(part, [sha256, wanted].filter((h) => h !== undefined), quickFs);
      } catch (err) {
        // The download is given up for this error; the body dropped unread changes nothing.
        await body.cancel().catch(() => {});
        throw fsError(job, err, "could not create");
      }
    }

    // Idle watchdog: no bytes for requestTimeoutMs aborts the GET. A piped file is watched
    // by its size on disk, and its sums read what was written since the last tick.
    const idleMs = settings.requestTimeoutMs;
    const watchMs = Math.max(10, Math.min(1000, idleMs / 4));
    let lastByte = performance.now();
    let sizeSeen = 0;
    watchdog = setInterval(() => {
      if (tail) {
        tail.size().then((size) => {
          if (size !== sizeSeen) {
            sizeSeen = size;
            lastByte = performance.now();
          }
        }, () => {});
        if (readBack) tail.catchUp(TAIL_BUDGET_MS);
      }
      if (performance.now() - lastByte >= idleMs) {
        ctl.abort(
          new ArchiveError(job.archiveId, `the archive sent no bytes for ${seconds(idleMs)} s`, {
            retryable: true,
            timedOut: true,
          }),
        );
      }
    }, whole ? watchMs : Math.min(watchMs, TAIL_TICK_MS));

    let crc: number | null = 0;
    if (tail) {
      written = await pipeToPart(job, part, body, file!, expected, signal, fetchSignal, ctl.signal);
      file = undefined; // the pipe closed it
      // The pipe moves the body in the runtime without a JavaScript call per 64 KiB chunk (on
      // 2 cores: 1.3–1.8 s of CPU per GiB with the sums, against 2.2–2.7 s reading the chunks
      // here; bench/bigfiles.ts); the sums read behind it, so only the last tick's bytes are
      // left to read now.
      crc = readBack ? await finishSums(job, tail, written, signal) : null;
    }
    // No bigger than the file: a 1 KiB file must not cost a 1 MiB buffer (they add up fast
    // between garbage collections when a cart has thousands of small files).
    const buf = new Uint8Array(whole ? Math.max(1, expected) : 1);
    let filled = 0;
    const out = file;
    const writeAll = async (data: Uint8Array) => {
      if (!out) return await writePart(part, data);
      for (let off = 0; off < data.byteLength;) off += await out.write(data.subarray(off));
    };
    const flush = async (data: Uint8Array) => {
      // The write runs off-thread while the hashes read the same bytes here.
      const writing = writeAll(data);
      writing.catch(() => {}); // handled below; avoids an unhandled rejection if hashing throws
      sha256?.update(data);
      wanted?.update(data);
      crc = crc32(data, crc ?? 0);
      try {
        await writing;
      } catch (err) {
        throw fsError(job, err, "could not write");
      }
    };

    const reader = whole ? body.getReader() : undefined;
    while (reader) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await readUnlessAborted(reader, fetchSignal);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        const reason = ctl.signal.aborted ? ctl.signal.reason : err;
        if (reason instanceof ArchiveError) throw new AttemptFailure(archiveFailure(job, reason));
        throw new AttemptFailure(
          new StageError(
            "archive",
            `${job.label}: the download broke off after ${written} of ${expected} bytes: ${
              reason instanceof Error ? reason.message : String(reason)
            }`,
            { cause: reason },
          ),
        );
      }
      if (chunk.done) break;
      const data = chunk.value;
      lastByte = performance.now();
      written += data.byteLength;
      if (written > expected) {
        // The attempt fails for the size; the rest of the body dropped unread changes nothing.
        await reader.cancel().catch(() => {});
        throw new AttemptFailure(
          new StageError(
            "size",
            `${job.label}: the archive sent more than the ${expected} bytes it announced`,
          ),
        );
      }
      if (!whole && data.byteLength >= WRITE_CHUNK / 2) {
        // Big chunks go straight to the file (after what is buffered, to keep the order).
        if (filled > 0) await flush(buf.subarray(0, filled));
        filled = 0;
        await flush(data);
      } else {
        if (filled + data.byteLength > buf.length) {
          await flush(buf.subarray(0, filled));
          filled = 0;
        }
        buf.set(data, filled);
        filled += data.byteLength;
      }
    }
    if (filled > 0 || whole) await flush(buf.subarray(0, filled));
    clearInterval(watchdog);
    watchdog = undefined;

    if (written !== expected) {
      throw new AttemptFailure(
        new StageError(
          "size",
          `${job.label}: the archive sent ${written} of the ${expected} bytes it announced`,
        ),
      );
    }
    const sha256Hex = sha256 ? sha256.digest("hex") : null;
    if (job.hashtype && job.hashsum !== undefined) {
      const got = wanted ? wanted.digest("hex") : sha256Hex;
      if (got !== job.hashsum.trim().toLowerCase()) {
        throw new AttemptFailure(
          new StageError("hash", `File hash does not match for ${job.label}`),
        );
      }
    }
    try {
      file?.close();
      file = undefined;
      const { mtime } = status;
      await quickFs.call(
        () => Deno.utimeSync(part, mtime, mtime),
        () => Deno.utime(part, mtime, mtime),
      );
      await quickFs.call(() => Deno.renameSync(part, job.dest), () => Deno.rename(part, job.dest));
      renamed = true;
    } catch (err) {
      throw fsError(job, err, "could not finish");
    }
    const info = await quickFs.call(() => Deno.statSync(job.dest), () => Deno.stat(job.dest))
      .catch(() => undefined);
    return {
      size: written,
      mtime: status.mtime,
      sha256: sha256Hex,
      crc32: crc === null ? null : crc >>> 0,
      key: info && contentKey(info),
    };
  } finally {
    if (watchdog !== undefined) clearInterval(watchdog);
    tail?.[Symbol.dispose]();
    ctl.abort();
    if (file) {
      try {
        file.close();
      } catch { /* already closed */ }
    }
    if (!renamed) {
      await Deno.remove(part).catch((err) => {
        // NotFound: the .part was never made. Another failure leaves it behind: say so.
        if (err instanceof Deno.errors.NotFound) return;
        log.warn("could not remove a partial download", {
          file: job.label,
          path: part,
          error: errorMessage(err),
        });
      });
    }
  }
}

/**
 * Reads and sums what `tail` has left of a piped file of `written` bytes; returns its CRC-32.
 *
 * @throws {StageError} when the file could not be read back whole.
 */
async function finishSums(
  job: StageJob,
  tail: TailSums,
  written: number,
  signal: AbortSignal | undefined,
): Promise<number> {
  try {
    await tail.finish(signal);
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw fsError(job, err, "could not read back");
  }
  if (tail.bytes !== written) {
    throw fsError(
      job,
      new Error(`read back ${tail.bytes} of the ${written} bytes written`),
      "could not read back",
    );
  }
  return tail.crc32;
}

/**
 * Pipes `body` into `file` (which the pipe closes) and returns the bytes on disk. The pipe
 * runs in the runtime, chunk after chunk, without calls into this thread's JavaScript. A body
 * that breaks off, or that the idle watchdog aborts (`watchdog`, through the fetch's signal),
 * is a failed attempt (as is a write that fails for another reason than a full disk, which
 * is "No Space Available"); more bytes than `expected` is a size error.
 */
async function pipeToPart(
  job: StageJob,
  part: string,
  body: ReadableStream<Uint8Array>,
  file: Deno.FsFile,
  expected: number,
  signal: AbortSignal | undefined,
  fetchSignal: AbortSignal,
  watchdog: AbortSignal,
): Promise<number> {
  const onDisk = () => Deno.stat(part).then((st) => st.size, () => 0);
  // Aborting the fetch fails the pipe by itself; this makes the time limit and a cancel hold
  // even if the body missed the abort (as readUnlessAborted does for reads).
  const aborted = new Promise<never>((_, reject) => {
    if (fetchSignal.aborted) reject(fetchSignal.reason);
    fetchSignal.addEventListener("abort", () => reject(fetchSignal.reason), { once: true });
  });
  aborted.catch(() => {});
  try {
    const piping = body.pipeTo(file.writable);
    piping.catch(() => {});
    await Promise.race([piping, aborted]);
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    if (isNoSpace(err)) throw fsError(job, err, "could not write");
    const reason = watchdog.aborted ? watchdog.reason : err;
    if (reason instanceof ArchiveError) throw new AttemptFailure(archiveFailure(job, reason));
    throw new AttemptFailure(
      new StageError(
        "archive",
        `${job.label}: the download broke off after ${await onDisk()} of ${expected} bytes: ${
          reason instanceof Error ? reason.message : String(reason)
        }`,
        { cause: reason },
      ),
    );
  }
  const written = await onDisk();
  if (written > expected) {
    throw new AttemptFailure(
      new StageError(
        "size",
        `${job.label}: the archive sent more than the ${expected} bytes it announced`,
      ),
    );
  }
  return written;
}

/**
 * After a failed GET: true when one HEAD says the file is on tape. A HEAD that fails says
 * nothing (false): the GET's own failure is what counts then.
 */
async function backOnTape(
  client: ArchiveClient,
  job: StageJob,
  signal?: AbortSignal,
): Promise<boolean> {
  try {
    return (await client.status(job.archiveId, signal)).media === "tape";
  } catch {
    if (signal?.aborted) throw signal.reason;
    return false;
  }
}

/** Writes `data` to a new `path` in one call, creating its folder when that is missing. */
function writePart(path: string, data: Uint8Array): Promise<void> {
  return inFolder(
    path,
    () => quickFs.call(() => Deno.writeFileSync(path, data), () => Deno.writeFile(path, data)),
  );
}

/** Creates `path`, and its folder when that is missing. */
function createPart(path: string): Promise<Deno.FsFile> {
  return inFolder(path, () => Deno.open(path, { write: true, create: true, truncate: true }));
}

/**
 * Runs `create` for a new file at `path`; when its folder is missing, makes the folder and runs
 * it again (usually the folder exists: one call).
 */
async function inFolder<T>(path: string, create: () => Promise<T>): Promise<T> {
  try {
    return await create();
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
    await Deno.mkdir(dirname(path), { recursive: true });
    return await create();
  }
}

/**
 * `reader.read()`, settled as soon as `signal` aborts. Aborting a fetch should fail a pending
 * body read by itself, but a read that misses the abort would wait forever on a stalled
 * archive; this makes the idle time limit hold whatever the fetch does.
 */
function readUnlessAborted(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  signal: AbortSignal,
): Promise<ReadableStreamReadResult<Uint8Array>> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      // The read is given up with signal.reason (rejected below); the body is not wanted.
      reader.cancel(signal.reason).catch(() => {});
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    reader.read().then(resolve, reject).finally(() => {
      signal.removeEventListener("abort", onAbort);
    });
  });
}

/** A file-system failure: ENOSPC → "No Space Available", else an "io" error naming the file. */
function fsError(job: StageJob, err: unknown, what: string): StageError {
  if (err instanceof StageError) return err;
  const e = err as { code?: string; message?: string };
  if (isNoSpace(err)) {
    return new StageError("nospace", "No Space Available", { cause: err });
  }
  // The path and the system's words go to the log; people get the file and the kind of error.
  const detail = err instanceof Error ? err.message : String(err);
  log.error("file system error while staging", { file: job.label, path: job.dest, error: detail });
  const kind = e?.code ?? (err instanceof Error ? err.name : "error");
  return new StageError(
    "io",
    `${job.label}: ${what} the file on the cart volume (${kind}); see the worker log`,
    { cause: err },
  );
}

/** What {@linkcode hashLocalFile} measured. */
export interface LocalHashes {
  /** Length in bytes. */
  size: number;
  /** Lowercase hex SHA-256 of the bytes. */
  sha256: string;
  /** Unsigned CRC-32 of the bytes. */
  crc32: number;
  /** The digest of `hashtype`, when one was asked for. */
  wanted?: string;
}

/**
 * Hashes a file that is already on disk: a staged file whose record a crash lost. It was
 * renamed into place only after its size (and hash) were checked, so reading it again is all
 * a resumed cart needs — far cheaper than a second tape recall.
 */
export async function hashLocalFile(path: string, hashtype?: HashType): Promise<LocalHashes> {
  const sha256 = createHash("sha256");
  const wanted = hashtype && hashtype !== "sha256" ? createHash(hashtype) : undefined;
  let crc = 0;
  let size = 0;
  using file = await Deno.open(path, { read: true });
  const buf = new Uint8Array(WRITE_CHUNK);
  for (;;) {
    const n = await file.read(buf);
    if (n === null) break;
    const data = buf.subarray(0, n);
    sha256.update(data);
    wanted?.update(data);
    crc = crc32(data, crc);
    size += n;
  }
  const sha256Hex = sha256.digest("hex");
  return {
    size,
    sha256: sha256Hex,
    crc32: crc >>> 0,
    ...(hashtype ? { wanted: wanted ? wanted.digest("hex") : sha256Hex } : {}),
  };
}
