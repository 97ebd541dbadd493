/**
 * HTTP client of the Pacifica Archive Interface (SPEC §2).
 *
 * - `HEAD {base}{id}` → {@linkcode ArchiveStatus} (media, size, mtime, message)
 * - `POST {base}{id}` → ask for a tape recall
 * - `GET {base}{id}` → the file's bytes as a stream
 *
 * Every call has a time limit up to the response headers (`requestTimeoutMs`); every failure
 * is an {@linkcode ArchiveError} that names the id and the cause and says whether trying
 * again may help.
 *
 * @example
 * ```ts
 * import { ArchiveClient } from "./client.ts";
 * const archive = new ArchiveClient("http://127.0.0.1:8080/");
 * const st = await archive.status("1234");
 * if (st.media === "tape") await archive.stage("1234");
 * ```
 * @module
 */
import { log, seconds } from "../util/log.ts";
import { type ArchiveHealth, archiveHealth, isUnreachable, OutageError } from "./health.ts";
import { type ArchiveMethod, type ArchiveOutcome, recordMetric } from "../util/metric_events.ts";

/** Where the archive keeps a file: ready on `disk`, on `tape` (needs a recall), or `error`. */
export type Media = "disk" | "tape" | "error";

/** What a HEAD tells about one archive file. */
export interface ArchiveStatus {
  /** `X-Pacifica-File-Storage-Media`. */
  media: Media;
  /** `X-Content-Length`, in bytes. */
  size: number;
  /**
   * `Last-Modified`, seconds since the epoch (a float). When the header is missing or cannot
   * be read, this is the time of the HEAD: the file is still deliverable, only its date is
   * unknown.
   */
  mtime: number;
  /** `X-Pacifica-Messsage` (sic, three s), or "" when absent. */
  message: string;
}

/** A failed archive call. The message names the id and the cause, for a person. */
export class ArchiveError extends Error {
  /** True when the same call may well succeed later (network error, timeout, 5xx). */
  readonly retryable: boolean;
  /** The archive id the call was about. */
  readonly id: string;
  /** The cause without the id, e.g. `the archive answered 500 Internal Server Error to GET`. */
  readonly reason: string;
  /** The HTTP status when the archive answered, else undefined. */
  readonly status?: number;
  /** True when the archive did not answer (or send bytes) in time. */
  readonly timedOut: boolean;
  /**
   * True when the archive could not be reached at all (connection refused or reset, DNS), or
   * stayed so for longer than `CARTD_ARCHIVE_OUTAGE_MAX` (see ./health.ts).
   */
  readonly unreachable: boolean;
  /**
   * The archive's own words, when its answer had a body: the `message` of its JSON error page
   * (Pacifica's, e.g. `File not found`), else its text, both made fit for clients by
   * {@linkcode archiveText}; "" when there is none (a HEAD answer never has one). Already part
   * of `reason`. The archive's whole message goes to the log only.
   */
  readonly detail: string;

  /** Builds the error; `message` becomes `archive id "<id>": <reason>`. */
  constructor(
    id: string,
    reason: string,
    opts: {
      retryable: boolean;
      status?: number;
      timedOut?: boolean;
      unreachable?: boolean;
      detail?: string;
      cause?: unknown;
    },
  ) {
    super(`archive id ${JSON.stringify(id)}: ${reason}`, { cause: opts.cause });
    this.name = "ArchiveError";
    this.id = id;
    this.reason = reason;
    this.retryable = opts.retryable;
    this.status = opts.status;
    this.timedOut = opts.timedOut ?? false;
    this.unreachable = opts.unreachable ?? false;
    this.detail = opts.detail ?? "";
  }
}

/** Options of {@linkcode ArchiveClient}. */
export interface ArchiveClientOptions {
  /** Time limit of each call up to the response headers, in ms (default 60000). */
  requestTimeoutMs?: number;
  /** The fetch to use (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /**
   * Longest archive outage (ms) a call waits through (`CARTD_ARCHIVE_OUTAGE_MAX`, default
   * 600,000): the client then shares this module instance's {@linkcode ArchiveHealth} of its
   * base URL (./health.ts). Ignored when `health` is given.
   */
  outageMaxMs?: number;
  /** The health to consult (default: the shared one of the base URL, see `outageMaxMs`). */
  health?: ArchiveHealth;
}

/** The longest archive text a client is shown (see {@linkcode archiveText}). */
export const ARCHIVE_TEXT_MAX = 200;
/** The longest archive text written to the log, in characters. */
const LOGGED_TEXT_MAX = 2000;

/**
 * The archive's own words as clients see them (docs/api.md, "Errors"): its first line, with
 * control characters removed, anything that looks like an absolute path (`/srv/…`,
 * `C:\…`) replaced by `…`, and at most {@linkcode ARCHIVE_TEXT_MAX} characters (cut with a
 * `…`). The archive's whole message is logged by the client instead.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { archiveText } from "./client.ts";
 * assert.equal(archiveText("File not found"), "File not found");
 * assert.equal(archiveText("Can't open posix file: /srv/a/b.dat\nTraceback"), "Can't open posix file: …");
 * ```
 */
export function archiveText(raw: string): string {
  const first = raw.trim().split(/\r\n|\r|\n/, 1)[0] ?? "";
  const text = first
    // deno-lint-ignore no-control-regex
    .replace(/[\x00-\x1f\x7f]+/g, " ")
    .replace(/(^|[^\w.:/\\~-])(?:\/|[A-Za-z]:\\)[^\s'"`,;()<>\[\]{}]*/g, "$1…")
    .trim();
  return text.length > ARCHIVE_TEXT_MAX ? `${text.slice(0, ARCHIVE_TEXT_MAX - 1)}…` : text;
}

const MEDIA_HEADER = "X-Pacifica-File-Storage-Media";
const SIZE_HEADER = "X-Content-Length";
const MAX_ERROR_BODY = 4096;

/**
 * The URL path of an archive id below the base: characters a URL cannot carry are
 * percent-encoded (as `encodeURIComponent` does). A `/` stays a `/` so that path-like ids
 * (the quick-start archive's) read naturally, except when the id has a `.`/`..` segment or a
 * segment that a URL parser would treat as one: then every `/` is encoded too, so that no
 * parser can resolve the dots away and the archive sees the id exactly as given.
 */
export function encodeArchiveId(id: string): string {
  const segments = id.split("/");
  const dotty = segments.some((s) => /^(?:\.|%2e){1,2}$/i.test(s));
  return dotty ? encodeURIComponent(id) : segments.map(encodeURIComponent).join("/");
}

/** HTTP client of one Pacifica Archive Interface. Stateless; safe to share. */
export class ArchiveClient {
  readonly #base: string;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;
  readonly #health: ArchiveHealth;

  /** `baseUrl` is the archive's base URL; a missing trailing `/` is added. */
  constructor(baseUrl: string, options: ArchiveClientOptions = {}) {
    this.#base = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
    this.#timeoutMs = options.requestTimeoutMs ?? 60_000;
    this.#fetch = options.fetch ?? globalThis.fetch;
    this.#health = options.health ??
      archiveHealth(this.#base, { outageMaxMs: options.outageMaxMs, fetch: options.fetch });
  }

  /** The archive's reachability that this client's calls consult and report to. */
  get health(): ArchiveHealth {
    return this.#health;
  }

  /** The URL of an archive id: the base followed by {@linkcode encodeArchiveId}. */
  fileUrl(id: string): string {
    return this.#base + encodeArchiveId(id);
  }

  /** HEAD: where the file is and how big. Missing or invalid required headers → ArchiveError. */
  async status(id: string, signal?: AbortSignal): Promise<ArchiveStatus> {
    const res = await this.#call(id, "HEAD", signal);
    // A HEAD answer has no body to lose: cancelling only frees the connection.
    await res.body?.cancel().catch(() => {});
    const h = res.headers;
    const rawMedia = h.get(MEDIA_HEADER);
    if (rawMedia === null) {
      throw new ArchiveError(id, `the archive's HEAD answer has no ${MEDIA_HEADER} header`, {
        retryable: false,
        status: res.status,
      });
    }
    const media = rawMedia.trim().toLowerCase();
    if (media !== "disk" && media !== "tape" && media !== "error") {
      throw new ArchiveError(
        id,
        `the archive's HEAD answer has an unknown ${MEDIA_HEADER}: ${JSON.stringify(rawMedia)}`,
        { retryable: false, status: res.status },
      );
    }
    const message = h.get("X-Pacifica-Messsage") ?? h.get("X-Pacifica-Message") ?? "";
    const rawSize = h.get(SIZE_HEADER);
    let size = NaN;
    if (rawSize !== null && /^\s*\d+\s*$/.test(rawSize)) size = Number(rawSize);
    if (!Number.isSafeInteger(size)) {
      // A file in error may not know its size; do not let that hide the media error.
      if (media === "error") size = 0;
      else {
        throw new ArchiveError(
          id,
          rawSize === null
            ? `the archive's HEAD answer has no ${SIZE_HEADER} header`
            : `the archive's HEAD answer has an invalid ${SIZE_HEADER}: ${JSON.stringify(rawSize)}`,
          { retryable: false, status: res.status },
        );
      }
    }
    return {
      media,
      size,
      mtime: parseMtime(h.get("Last-Modified")),
      message: message ? archiveText(message) : "",
    };
  }

  /** POST with an empty body: asks the archive to bring the file to disk. Expects 2xx. */
  async stage(id: string, signal?: AbortSignal): Promise<void> {
    const res = await this.#call(id, "POST", signal);
    // The status said it all; a body that fails while being dropped changes nothing.
    await res.body?.cancel().catch(() => {});
  }

  /**
   * GET: the file's bytes. The time limit covers the headers only; the caller watches the
   * body (and may abort it through `signal`, which stays attached to the stream).
   */
  async open(id: string, signal?: AbortSignal): Promise<ReadableStream<Uint8Array>> {
    const res = await this.#call(id, "GET", signal);
    if (res.body === null) return new ReadableStream({ start: (c) => c.close() });
    return res.body;
  }

  /**
   * One archive call through the archive's health: while the archive is unreachable, the call
   * waits for it to be back (and is sent again when it found it unreachable) instead of
   * failing; it fails with an unreachable, non-retryable {@linkcode ArchiveError} only when
   * the outage outlasts `CARTD_ARCHIVE_OUTAGE_MAX`.
   */
  async #call(id: string, method: ArchiveMethod, signal?: AbortSignal): Promise<Response> {
    for (;;) {
      try {
        await this.#health.waitUp(signal);
      } catch (err) {
        if (!(err instanceof OutageError)) throw err;
        throw new ArchiveError(id, `${method} could not reach the archive: ${err.message}`, {
          retryable: false,
          unreachable: true,
          cause: err,
        });
      }
      try {
        const res = await this.#attempt(id, method, signal);
        this.#health.reachable();
        return res;
      } catch (err) {
        if (!(err instanceof ArchiveError) || !err.unreachable) {
          if (err instanceof ArchiveError && err.status !== undefined) this.#health.reachable();
          throw err;
        }
        this.#health.down();
      }
    }
  }

  /**
   * One archive request, counted and timed (until the answer's headers, or the failure) for
   * the metrics (lib/util/metric_events.ts): by method, and by {@linkcode outcomeOf} its end.
   */
  async #attempt(id: string, method: ArchiveMethod, signal?: AbortSignal): Promise<Response> {
    signal?.throwIfAborted();
    const started = performance.now();
    let outcome: ArchiveOutcome = "error";
    try {
      const res = await this.#send(id, method, signal);
      outcome = outcomeOf(res.status);
      return res;
    } catch (err) {
      if (signal?.aborted) outcome = "aborted";
      else if (err instanceof ArchiveError && err.status !== undefined) {
        outcome = outcomeOf(err.status);
      } else if (err instanceof ArchiveError && err.timedOut) outcome = "timeout";
      throw err;
    } finally {
      const elapsed = (performance.now() - started) / 1000;
      recordMetric({ kind: "archive", method, outcome, seconds: elapsed });
    }
  }

  async #send(id: string, method: ArchiveMethod, signal?: AbortSignal): Promise<Response> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(new TimeoutMarker()), this.#timeoutMs);
    const combined = signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal;
    const init: RequestInit = { method, signal: combined };
    if (method === "POST") {
      init.body = new Uint8Array(0);
      init.headers = { "Content-Length": "0" };
    }
    let res: Response;
    try {
      res = await this.#fetch(this.fileUrl(id), init);
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (timeout.signal.aborted) {
        throw new ArchiveError(
          id,
          `the archive did not answer ${method} within ${seconds(this.#timeoutMs)} s`,
          { retryable: true, timedOut: true, cause: err },
        );
      }
      throw new ArchiveError(
        id,
        `${method} to the archive failed: ${err instanceof Error ? err.message : String(err)}`,
        { retryable: true, unreachable: isUnreachable(err), cause: err },
      );
    } finally {
      clearTimeout(timer);
    }
    if (res.status >= 200 && res.status < 300) return res;
    const said = method === "HEAD" ? "" : await errorDetail(res);
    if (said) {
      // The archive's whole message, for operators: one escaped line, capped.
      log.warn("the archive answered an error", {
        id,
        method,
        status: res.status,
        message: said.length > LOGGED_TEXT_MAX ? `${said.slice(0, LOGGED_TEXT_MAX)}…` : said,
      });
    }
    const detail = archiveText(said);
    throw new ArchiveError(
      id,
      `the archive answered ${res.status}${
        res.statusText ? ` ${res.statusText}` : ""
      } to ${method}` +
        (detail ? `: ${detail}` : ""),
      {
        retryable: res.status >= 500 || res.status === 408 || res.status === 429,
        status: res.status,
        detail,
      },
    );
  }
}

/** The outcome of an answer with status `status`: `ok` for 2xx, else its class (`5xx`, …). */
function outcomeOf(status: number): ArchiveOutcome {
  if (status >= 200 && status < 300) return "ok";
  if (status >= 500) return "5xx";
  if (status >= 400) return "4xx";
  return status >= 300 ? "3xx" : "1xx";
}

class TimeoutMarker extends Error {
  constructor() {
    super("archive request timed out");
    this.name = "TimeoutError";
  }
}

/** Float seconds, or an HTTP date; anything else (or absent) → now. */
function parseMtime(raw: string | null): number {
  if (raw !== null) {
    const t = raw.trim();
    if (/^\d+(?:\.\d*)?$/.test(t)) return Number(t);
    const ms = Date.parse(t);
    if (Number.isFinite(ms)) return ms / 1000;
  }
  return Date.now() / 1000;
}

/**
 * The `message` of a JSON error page (Pacifica's), else the page's text (both as the archive
 * wrote them, up to {@linkcode MAX_ERROR_BODY} bytes read).
 */
async function errorDetail(res: Response): Promise<string> {
  try {
    const reader = res.body?.getReader();
    if (!reader) return "";
    const parts: Uint8Array[] = [];
    let n = 0;
    while (n < MAX_ERROR_BODY) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      n += value.byteLength;
    }
    // The first MAX_ERROR_BODY bytes are read; the rest of an error page is dropped unread.
    await reader.cancel().catch(() => {});
    const text = new TextDecoder().decode(concat(parts).subarray(0, MAX_ERROR_BODY)).trim();
    try {
      const json = JSON.parse(text);
      if (json && typeof json.message === "string") return json.message.trim();
    } catch {
      // not JSON: fall through to the raw text
    }
    return text;
  } catch {
    return "";
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}
