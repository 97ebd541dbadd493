/**
 * `POST /_cartd/estimate`: what a cart document would cost, without creating a cart
 * (issue 14, item 3). The body is a cart document, read and checked exactly as `POST /{uid}`
 * reads it (same body limit, same parser, same `400`); the answer tells how many of its files
 * and bytes are on disk at the archive, on tape, or staged here already for a live cart, which
 * ids the archive does not know, and whether the cart fits in the space left now. Nothing is
 * stored and nothing is reserved, ever.
 *
 * The path has two segments, so it can never be taken for a cart's uid (one segment); the
 * `_cartd` segment names cartd's own requests beside the Pacifica ones.
 *
 * Cost: the store is asked once (a few hundred ids per query) for the files live carts have
 * staged; every other distinct archive id gets one HEAD, `CARTD_FILES_PER_CART` at a time. An id the archive answers `500` is asked
 * again on a growing delay for at most {@linkcode ESTIMATE_MISSING_AFTER_MS} (the missing-file
 * rule of SPEC §2, shortened for a request a person waits on), then once with GET for the
 * archive's own message. The whole estimate has {@linkcode ESTIMATE_TIME_LIMIT_MS}: past it,
 * it answers `504` and names the limit, rather than half an answer.
 *
 * @module
 */
import { type ArchiveClient, ArchiveError, type ArchiveStatus } from "../lib/archive/client.ts";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import {
  type CartDocument,
  CartDocumentError,
  type CartFileRequest,
  parseCartDocument,
} from "../lib/cart/document.ts";
import type { Config } from "../lib/config/config.ts";
import type { Space } from "../lib/space/space.ts";
import { headFile, StageError } from "../lib/staging/stage_file.ts";
import type { CartFile, CartStore } from "../lib/store/store.ts";
import { forEachLimited } from "../lib/util/limit.ts";
import { log, seconds } from "../lib/util/log.ts";
import { readBody } from "./body.ts";
import { json } from "./json.ts";

/** Where the estimate is served. */
export const ESTIMATE_PATH = "/_cartd/estimate";

/**
 * How long an id the archive answers `500` is asked about again before it counts as unknown
 * (SPEC §2's rule, with `CARTD_MISSING_AFTER` when that is shorter). Fixed for now; a setting
 * (`CARTD_ESTIMATE_MISSING_AFTER`) may take its place.
 */
export const ESTIMATE_MISSING_AFTER_MS = 3_000;

/**
 * The most time one estimate may take, store and archive included; past it the answer is
 * `504`. Fixed for now; a setting (`CARTD_ESTIMATE_TIMEOUT`) may take its place.
 */
export const ESTIMATE_TIME_LIMIT_MS = 30_000;

/** What the estimate needs besides the store and the settings the routes have. */
export interface EstimateSources {
  /** The archive the files would be staged from (HEAD only). */
  archive: ArchiveClient;
  /** The space under VOLUME_PATH (read only: {@linkcode Space.report}, never a reservation). */
  space: Space;
}

/** Everything {@linkcode estimate} uses. */
export interface EstimateDeps extends EstimateSources {
  /** Where the files live carts have staged are recorded. */
  store: CartStore;
  /** The request limits (`CARTD_MAX_BODY`, `CARTD_MAX_FILES`, `CARTD_FILES_PER_CART`) and the
   * staging settings the HEADs follow. */
  config: Config;
}

/** A count of files and their bytes. */
export interface Tally {
  /** How many of the document's entries. */
  files: number;
  /** The sum of their sizes, in bytes. */
  bytes: number;
}

/** An archive id that the archive does not know (or cannot serve). */
export interface UnknownId {
  /** The id, as the document gave it. */
  id: string;
  /** Why it counts as unknown, for a person (what the archive answered, and for how long). */
  message: string;
}

/** Whether the cart fits now: the rule the worker's reservation follows (SPEC §4). */
export interface SpaceEstimate {
  /** Bytes the cart would reserve: all its known files, plus its tar when `"bundle": true`. */
  needed: number;
  /** True when it fits now, without removing any cart. */
  fits: boolean;
  /** Bytes missing now (0 when it fits): under the cap or on the disk, whichever is more. */
  short: number;
  /** True when it fits now, or would once the LRU purge removed the ready carts it may. */
  fitsAfterPurge: boolean;
  /** Bytes held by the ready carts the LRU purge may remove now (0 with CARTD_LRU_PURGE off). */
  purgeable: number;
  /** Free bytes of the file system under VOLUME_PATH. */
  free: number;
  /** `CARTD_VOLUME_SIZE`, or null when only the file system limits. */
  volumeSize: number | null;
  /** Bytes every cart holds now. */
  reserved: number;
  /** Bytes that carts in progress have reserved but not written yet. */
  outstanding: number;
}

/** The answer of `POST /_cartd/estimate`. */
export interface Estimate {
  /** Every entry of the document. */
  files: number;
  /** The bytes of every entry whose size is known (all but the unknown ones). */
  bytes: number;
  /** Entries the archive has on disk. */
  disk: Tally;
  /** Entries the archive has on tape (a recall would be needed). */
  tape: Tally;
  /** Entries the archive reports with media `error` (a cart would fail on them). */
  error: Tally;
  /**
   * Entries whose bytes are on this volume already, staged for a live cart (same archive id,
   * and the same hash where the document gives one). Not asked of the archive. A new cart
   * fetches them again today: this says what is on the volume, not what would be skipped.
   */
  staged: Tally;
  /** Entries whose id the archive does not know, and those ids (each once). */
  unknown: { files: number; ids: UnknownId[] };
  /** Whether the cart fits. */
  space: SpaceEstimate;
}

/** The estimate was stopped by its time limit. */
class TimeLimit extends Error {}

/** The archive did not answer at all (down, unreachable, or too slow for every try). */
class ArchiveDown extends Error {}

/**
 * Answers one `POST /_cartd/estimate`: `200` with an {@linkcode Estimate}; `400`/`413` for a
 * bad or too large document, as `POST /{uid}` answers; `502` when the archive cannot be
 * reached; `504` when the estimate took longer than {@linkcode ESTIMATE_TIME_LIMIT_MS}.
 */
export async function estimate(deps: EstimateDeps, request: Request): Promise<Response> {
  const { config } = deps;
  const started = performance.now();
  const body = await readBody(request, config.limits.maxBodyBytes, config.api.bodyTimeoutMs);
  if (body === null) {
    // The words of POST /{uid}: the same document is refused the same way.
    return json({
      message: `The cart document is larger than ${config.limits.maxBodyBytes} bytes ` +
        "(CARTD_MAX_BODY); split the cart or raise the limit",
    }, 413);
  }
  let doc: CartDocument;
  try {
    doc = parseCartDocument(body, { maxFiles: config.limits.maxFiles });
  } catch (e) {
    if (e instanceof CartDocumentError) return json({ message: e.message }, 400);
    throw e;
  }

  const timeLimit = new AbortController();
  const timer = setTimeout(() => timeLimit.abort(new TimeLimit()), ESTIMATE_TIME_LIMIT_MS);
  const signal = AbortSignal.any([request.signal, timeLimit.signal]);
  const progress = { checked: 0, toCheck: 0 };
  try {
    const answer = await survey(deps, doc, signal, progress);
    log.info("estimate", {
      files: answer.files,
      bytes: answer.bytes,
      heads: progress.toCheck,
      fits: answer.space.fits,
      ms: Math.round(performance.now() - started),
    });
    return json(answer, 200);
  } catch (e) {
    if (timeLimit.signal.aborted) {
      log.warn("estimate stopped by its time limit", progress);
      return json({
        message:
          `The estimate took longer than its limit of ${
            seconds(ESTIMATE_TIME_LIMIT_MS)
          } s: the archive told about ${progress.checked} of the ${progress.toCheck} ids it ` +
          "was asked about. Try again later, or estimate the cart in smaller parts",
        limitSeconds: ESTIMATE_TIME_LIMIT_MS / 1000,
        checked: progress.checked,
        toCheck: progress.toCheck,
      }, 504);
    }
    if (e instanceof ArchiveDown) {
      return json({
        message: `The archive at ${deps.archive.fileUrl("")} could not be reached, so nothing ` +
          `can be estimated: ${e.message}`,
      }, 502);
    }
    if (request.signal.aborted) {
      // The client went away; no one reads this answer.
      log.info("estimate abandoned by the client", progress);
      return json({ message: "The request was abandoned by the client" }, 503);
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** What became of one entry of the document. */
type Outcome =
  | { kind: "staged"; copy: CartFile }
  | { kind: "archive"; status: ArchiveStatus }
  | { kind: "unknown"; message: string };

/** The estimate of `doc`: store, archive, then space. */
async function survey(
  deps: EstimateDeps,
  doc: CartDocument,
  signal: AbortSignal,
  progress: { checked: number; toCheck: number },
): Promise<Estimate> {
  const { store, archive, space, config } = deps;
  const copies = new Map<string, CartFile[]>();
  for (const copy of await store.stagedInLiveCarts(doc.files.map((f) => f.id))) {
    const list = copies.get(copy.archiveId);
    if (list) list.push(copy);
    else copies.set(copy.archiveId, [copy]);
  }
  signal.throwIfAborted();

  // Each entry staged already, or the first index of each id to ask the archive about.
  const staged = new Map<number, CartFile>();
  const toAsk = new Map<string, number>();
  doc.files.forEach((file, idx) => {
    const copy = copies.get(file.id)?.find((c) => sameBytes(file, c));
    if (copy) staged.set(idx, copy);
    else if (!toAsk.has(file.id)) toAsk.set(file.id, idx);
  });
  progress.toCheck = toAsk.size;

  const settings = {
    ...config.staging,
    missingAfterMs: Math.min(config.staging.missingAfterMs, ESTIMATE_MISSING_AFTER_MS),
  };
  const answers = new Map<string, Outcome>();
  await forEachLimited(toAsk, config.limits.filesPerCart, async ([id, idx], inner) => {
    const label = `fileids[${idx}] (id ${id})`;
    try {
      answers.set(id, {
        kind: "archive",
        status: await headFile(archive, { archiveId: id, label }, settings, inner),
      });
    } catch (e) {
      if (inner.aborted) throw inner.reason;
      if (!(e instanceof StageError)) throw e;
      if (e.cause instanceof ArchiveError && e.cause.status === undefined) {
        throw new ArchiveDown(e.message, { cause: e });
      }
      answers.set(id, { kind: "unknown", message: e.message });
    }
    progress.checked++;
  }, signal);

  const zero = (): Tally => ({ files: 0, bytes: 0 });
  const tallies = { disk: zero(), tape: zero(), error: zero(), staged: zero() };
  const unknown = { files: 0, ids: [] as UnknownId[] };
  const sized: { path: string; size: number; mtime: number }[] = [];
  doc.files.forEach((file, idx) => {
    const copy = staged.get(idx);
    const outcome: Outcome = copy ? { kind: "staged", copy } : answers.get(file.id)!;
    if (outcome.kind === "unknown") {
      unknown.files++;
      if (toAsk.get(file.id) === idx) unknown.ids.push({ id: file.id, message: outcome.message });
      return;
    }
    const { size, mtime } = outcome.kind === "staged"
      ? { size: outcome.copy.size ?? 0, mtime: outcome.copy.mtime ?? 0 }
      : outcome.status;
    const tally = outcome.kind === "staged" ? tallies.staged : tallies[outcome.status.media];
    tally.files++;
    tally.bytes += size;
    sized.push({ path: file.path, size, mtime });
  });
  const bytes = sized.reduce((total, f) => total + f.size, 0);
  const needed = bytes + (doc.bundle ? tarSize(doc, sized) : 0);
  signal.throwIfAborted();
  return {
    files: doc.files.length,
    bytes,
    ...tallies,
    unknown,
    space: await spaceFor(space, needed, doc.files.length),
  };
}

/**
 * True when the staged `copy` holds the bytes `want` asks for: any copy of the id when the
 * document gives no hash; else one whose measured sha256 is the hash asked for, or that was
 * itself verified against the same `hashtype` and `hashsum` (both lowercase in the store and
 * from the parser).
 */
function sameBytes(want: CartFileRequest, copy: CartFile): boolean {
  if (want.hashsum === undefined) return true;
  if (want.hashtype === "sha256" && copy.sha256 === want.hashsum) return true;
  return copy.hashtype === want.hashtype && copy.hashsum === want.hashsum;
}

/**
 * The size of the tar a `"bundle": true` cart writes, planned as the worker plans it
 * ({@linkcode planCartBundle}, from the sizes alone). Its top folder is the cart's uid, which
 * an estimate does not know; a short one stands in (a long uid adds pax headers to long
 * paths: a few hundred bytes per such file).
 */
function tarSize(
  doc: CartDocument,
  files: { path: string; size: number; mtime: number }[],
): number {
  const placeholder = { source: "-", sha256: "0".repeat(64), crc32: 0 };
  const cart = { uid: "cart", bundle: true, manifest: doc.manifest, readyAt: null };
  return planCartBundle(
    { ...cart, createdAt: Date.now() },
    files.map((f) => ({ ...f, ...placeholder })),
  ).size;
}

/**
 * Whether `needed` bytes for a cart of `fileCount` files fit now, by the rule of
 * `Space.tryReserve` (cap: what every cart holds plus this; disk: this plus what carts in
 * progress still owe plus a block per file of slack, against the free space), read without
 * the space lock and without reserving anything; and whether the LRU purge could make room,
 * by the rule of `Space.reserve`.
 */
async function spaceFor(space: Space, needed: number, fileCount: number): Promise<SpaceEstimate> {
  const report = await space.report();
  const { blockSize } = await space.disk(space.volume.cartsDir);
  const cap = report.volumeSize ?? 0;
  const capShort = cap > 0 ? Math.max(0, report.reserved + needed - cap) : 0;
  const slack = (fileCount + 2) * blockSize;
  const diskShort = Math.max(0, needed + slack + report.outstanding - report.free);
  const short = Math.max(capShort, diskShort);
  const candidates = space.settings.purge ? await space.purgeable() : [];
  const purgeable = candidates.reduce((total, c) => total + c.reservedBytes, 0);
  return {
    needed,
    fits: short === 0,
    short,
    fitsAfterPurge: short === 0 || (candidates.length > 0 && purgeable >= short),
    purgeable,
    free: report.free,
    volumeSize: report.volumeSize,
    reserved: report.reserved,
    outstanding: report.outstanding,
  };
}
