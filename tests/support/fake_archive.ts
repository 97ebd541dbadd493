/**
 * A test double of the Pacifica Archive Interface (SPEC §2) over real HTTP, with faults that
 * tests script per id: tape recalls that take time, `error` media, missing files, HEADs that
 * fail for a while, missing HEAD headers, corrupt / short / cut / stalled / failed / slow GETs.
 * It counts every request per id so tests can assert how often the archive was asked.
 *
 * Its errors are the real archive's: a missing file answers 500 with Pacifica's JSON error page
 * (`status`, `message`, `traceback`, `version`) to GET and POST, and 500 with no body to HEAD;
 * an id that contains `/` answers 404 to HEAD and POST and 500 to GET (the real interface splits
 * the path), unless the fake is started with `pathIds: true`.
 *
 * It is also fast enough for benchmarks: big files are served in large chunks from a repeated
 * pattern (no copy per chunk) or straight from a file on disk.
 *
 * Tape: behind the fake sits a {@linkcode TapeLibrary} (tests/support/tape_library.ts), exposed
 * as `archive.library`. A file put with `tape: { tape, position }` (or placed by the library's
 * own `placement`) reports what the library says on HEAD (`tape` until a drive has read it);
 * a successful stage POST joins the library's recall queue (HEAD never does). A GET of a file
 * still on tape answers 500 (`getOnTape: "error"`, the default) or recalls it and waits
 * (`getOnTape: "recall"`). `archive.evict(id)` pushes a file back to tape. The older per-file
 * `tapeMs` delay still works beside it, for tests that need only a delay.
 *
 * @example
 * ```ts
 * import { startFakeArchive } from "./fake_archive.ts";
 * await using archive = startFakeArchive({ tapeLibrary: { drives: 1, mountMs: 500, readMs: 10 } });
 * archive.put("1234", new TextEncoder().encode("hello"), { tape: { tape: "T1", position: 0 } });
 * archive.put("old", "hello", { tapeMs: 200 }); // a plain delay after the first POST
 * archive.put("big", { size: 64 << 20 });
 * const res = await fetch(archive.url + "1234", { method: "HEAD" }); // media: tape
 * archive.counts("1234"); // { head: 1, post: 0, get: 0 }
 * await fetch(archive.url + "1234", { method: "POST" }); // queued; on disk 510 ms later
 * archive.libraryStats().mounts; // 1
 * ```
 * @module
 */

import { createHash } from "node:crypto";
import {
  TapeLibrary,
  type TapeLibraryOptions,
  type TapeSlot,
  type TapeStats,
} from "./tape_library.ts";

export type { TapeLibraryOptions, TapeSlot, TapeStats };

/**
 * The bytes of a fake file: literal bytes, a UTF-8 string, `size` bytes of a repeated
 * `pattern` (default: a fixed pseudo-random 64 KiB block), or a file on disk (`path`).
 */
export type FakeContent = Uint8Array | string | { size: number; pattern?: Uint8Array } | {
  path: string;
};

/**
 * Faults and details of one fake file. "The first N GETs" counts every GET of the id
 * (1-based), whatever happened to it; `Infinity` means always.
 */
export interface FakeFileOptions {
  /**
   * The file is on this tape of the fake's {@linkcode TapeLibrary}, at this position: HEAD
   * says `tape` until a stage POST has queued it and a drive has read it. Not with `tapeMs`.
   */
  tape?: TapeSlot;
  /**
   * The file is on tape, outside the library: HEAD says `tape` until this many ms after the
   * first stage POST (`Infinity`: forever). Before any POST it stays on tape. A GET meanwhile
   * answers 500 (or, with `getOnTape: "recall"`, counts as that POST and waits). Not with
   * `tape`.
   */
  tapeMs?: number;
  /** HEAD reports media `error` (GET answers 500); `message` tells why. */
  error?: boolean;
  /** `X-Pacifica-Messsage` (default "File was found" / "File is on tape" / "File is in error"). */
  message?: string;
  /** `Last-Modified`, float seconds (default 1795991303.87). */
  mtime?: number;
  /** HEAD headers to leave out, e.g. `["X-Content-Length"]` (case-insensitive). */
  omitHeaders?: string[];
  /** HEAD headers to set to these values instead (e.g. a wrong `X-Content-Length`). */
  headers?: Record<string, string>;
  /** The first N GETs answer 500 JSON. */
  failGets?: number;
  /** The first N HEADs answer 500 with no body, as the real archive does to a missing file. */
  failHeads?: number;
  /** HEADs answer 500 with no body until this many ms after the id's first HEAD. */
  failHeadsMs?: number;
  /** The first N GETs send the right size with one byte flipped (mid-file). */
  corruptGets?: number;
  /** The first N GETs end cleanly after `cutAt` bytes (a short body). */
  shortGets?: number;
  /** The first N GETs drop the connection after `cutAt` bytes (chunked body left unfinished). */
  cutGets?: number;
  /** The first N GETs send `cutAt` bytes, then nothing more until the client gives up. */
  stallGets?: number;
  /** Where short / cut / stalled GETs stop (default: half the file). */
  cutAt?: number;
  /** Delay before answering HEAD (ms). */
  headDelayMs?: number;
  /** Delay before answering POST (ms). */
  postDelayMs?: number;
  /** Delay before the GET answer's headers (ms). */
  getDelayMs?: number;
  /** Delay between body chunks (ms): a slow archive. */
  chunkDelayMs?: number;
  /** Body chunk size (default 1 MiB). */
  chunkSize?: number;
  /** Status of the stage POST answer (default 200). */
  postStatus?: number;
}

/** Requests of one id so far. */
export interface FakeCounts {
  head: number;
  post: number;
  get: number;
}

/** One request as the fake saw it. `at` is `performance.now()` when it arrived. */
export interface FakeRequest {
  method: string;
  at: number;
  /** The request's Content-Length header, or null. */
  contentLength: string | null;
}

/** A running fake archive. `close()` (or `await using`) stops it. */
export interface FakeArchive extends AsyncDisposable {
  /** Base URL, ending with "/". */
  readonly url: string;
  /** The port it listens on (127.0.0.1). */
  readonly port: number;
  /**
   * Adds or replaces a file (resets its tape state, not its counts). With `tape` it is placed
   * in the library (on tape); without, a file the fake had placed is taken off tape, and one
   * the library's own `placement` put on tape stays there. Throws given both `tape` and
   * `tapeMs`.
   */
  put(id: string, content: FakeContent, options?: FakeFileOptions): void;
  /** Removes a file: from now on it answers 500 like a missing one. */
  remove(id: string): void;
  /** The tape library behind the fake (one of default settings unless given). */
  readonly library: TapeLibrary;
  /**
   * Pushes a file on disk back to tape (the library's, or a `tapeMs` file's, which then
   * needs a new POST and its delay again); false when it was not on disk or not a tape file.
   */
  evict(id: string): boolean;
  /** The library's counters now (mounts, files read, stage requests, …). */
  libraryStats(): TapeStats;
  /** Requests of `id` so far (also counts requests for missing ids). */
  counts(id: string): FakeCounts;
  /** Requests of every id so far (cheap: kept as running totals). */
  totals(): FakeCounts;
  /**
   * GETs of `id` whose whole body was handed to the HTTP server (the stream's end reached, not
   * cut, stalled or cancelled), as against `counts(id).get`, which counts every GET that
   * arrived: a GET cut by the client (a killed cartd) is counted there only.
   */
  wholeGets(id: string): number;
  /** Every request of `id` so far, in order. */
  log(id: string): FakeRequest[];
  /** Forgets the counts and logs of every id. */
  resetCounts(): void;
  /** Hex digest of a file's (correct) bytes. */
  digest(id: string, hashtype: string): Promise<string>;
  /** The file's (correct) bytes; for small files. */
  bytes(id: string): Promise<Uint8Array>;
  /** The size of a file. */
  size(id: string): number;
  /** The URL of an id (path-like ids keep their "/"). */
  fileUrl(id: string): string;
  /** Stops the server; unfinished bodies are cut. */
  close(): Promise<void>;
}

/** `Last-Modified` of fake files unless set. */
export const FAKE_MTIME = 1795991303.87;

const DEFAULT_CHUNK = 1 << 20;

interface Source {
  size: number;
  /** A path for files served from disk. */
  path?: string;
  /** Bytes `[off, off+len)`; the result may be shared, never mutate it. */
  slice(off: number, len: number): Uint8Array | Promise<Uint8Array>;
}

interface Entry {
  source: Source;
  options: FakeFileOptions;
  stagedAt?: number;
}

/** Deterministic pseudo-random bytes (xorshift32), the default pattern of sized content. */
export function patternBytes(size: number, seed = 0x9e3779b9): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

let defaultPattern: Uint8Array | undefined;

function makeSource(content: FakeContent, chunkSize: number): Source {
  if (typeof content === "string") content = new TextEncoder().encode(content);
  if (content instanceof Uint8Array) {
    const bytes = content;
    return { size: bytes.byteLength, slice: (off, len) => bytes.subarray(off, off + len) };
  }
  if ("path" in content) {
    const path = content.path;
    const size = Deno.statSync(path).size;
    return {
      size,
      path,
      async slice(off, len) {
        using f = await Deno.open(path);
        await f.seek(off, Deno.SeekMode.Start);
        const buf = new Uint8Array(len);
        let n = 0;
        while (n < len) {
          const r = await f.read(buf.subarray(n));
          if (r === null) break;
          n += r;
        }
        return buf.subarray(0, n);
      },
    };
  }
  const size = content.size;
  const pattern = content.pattern ?? (defaultPattern ??= patternBytes(65536));
  if (pattern.byteLength === 0) throw new RangeError("fake archive: empty pattern");
  // The pattern repeated over pattern + chunk bytes: any window of up to `chunkSize` bytes is a
  // subarray, so serving needs no copy.
  const span = pattern.byteLength + Math.max(chunkSize, DEFAULT_CHUNK);
  const ring = new Uint8Array(span);
  for (let o = 0; o < span; o += pattern.byteLength) {
    ring.set(pattern.subarray(0, Math.min(pattern.byteLength, span - o)), o);
  }
  return {
    size,
    slice(off, len) {
      len = Math.min(len, size - off, span - pattern.byteLength);
      const start = off % pattern.byteLength;
      return ring.subarray(start, start + len);
    },
  };
}

const STATUS_TEXT: Record<number, string> = {
  404: "Not Found",
  405: "Method Not Allowed",
  500: "Internal Server Error",
};

/** Pacifica's JSON error page (CherryPy's `error_page_default` of the archive interface). */
function json(status: number, message: string): Response {
  const line = `${status} ${STATUS_TEXT[status] ?? ""}`.trim();
  const page = {
    status: line,
    message,
    traceback: `Traceback (most recent call last):\n  File "archive.py", line 1\n${message}\n`,
    version: "CherryPy 18.8.0",
  };
  return new Response(JSON.stringify(page), {
    status,
    statusText: STATUS_TEXT[status],
    headers: { "Content-Type": "application/json" },
  });
}

/** An error answer to HEAD: the status and the page's headers, no body. */
function headError(status: number): Response {
  return new Response(null, {
    status,
    statusText: STATUS_TEXT[status],
    headers: { "Content-Type": "application/json" },
  });
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function within(n: number, limit: number | undefined): boolean {
  return limit !== undefined && n <= limit;
}

/** Options of {@linkcode startFakeArchive}. */
export interface FakeArchiveOptions {
  /** The port to listen on (default: a free one). */
  port?: number;
  /**
   * Serve ids that contain `/` (as the quick-start archive does) instead of answering them as
   * the real Pacifica Archive Interface does (HEAD and POST 404, GET 500).
   */
  pathIds?: boolean;
  /**
   * The tape library behind the archive: its settings (the fake makes it and closes it), or
   * one made by the caller (the caller closes it). Default: a library of default settings,
   * holding only the files put with `tape`.
   */
  tapeLibrary?: TapeLibraryOptions | TapeLibrary;
  /**
   * A GET of a file on tape: `"error"` (default) answers 500 `File is on tape: <id>` and
   * recalls nothing; `"recall"` sends the file's stage request, waits until it is on disk,
   * then streams it (a wait cut by `close()` answers 500).
   */
  getOnTape?: "error" | "recall";
}

/**
 * Starts a fake archive on 127.0.0.1 and a free port. Ids are the percent-decoded URL path
 * after the first "/".
 */
export function startFakeArchive(opts: FakeArchiveOptions = {}): FakeArchive {
  const ownLibrary = !(opts.tapeLibrary instanceof TapeLibrary);
  const library = opts.tapeLibrary instanceof TapeLibrary
    ? opts.tapeLibrary
    : new TapeLibrary(opts.tapeLibrary ?? {});
  const getOnTape = opts.getOnTape ?? "error";
  const totals: FakeCounts = { head: 0, post: 0, get: 0 };
  const files = new Map<string, Entry>();
  const firstHead = new Map<string, number>();
  const whole = new Map<string, number>();
  const logs = new Map<string, FakeRequest[]>();
  const live = new Set<() => void>();

  const logOf = (id: string) => {
    let l = logs.get(id);
    if (!l) logs.set(id, l = []);
    return l;
  };
  const countsOf = (id: string): FakeCounts => {
    const c = { head: 0, post: 0, get: 0 };
    for (const r of logs.get(id) ?? []) {
      if (r.method === "HEAD") c.head++;
      else if (r.method === "POST") c.post++;
      else if (r.method === "GET") c.get++;
    }
    return c;
  };
  const mediaOf = (id: string, e: Entry): "disk" | "tape" | "error" => {
    if (e.options.error) return "error";
    const tapeMs = e.options.tapeMs;
    if (tapeMs === undefined) return library.media(id);
    if (e.stagedAt === undefined) return "tape";
    return performance.now() - e.stagedAt >= tapeMs ? "disk" : "tape";
  };

  /**
   * `getOnTape: "recall"`: stages a file on tape and waits until it is on disk; false when
   * the fake closed first. (A client that goes away does not end the wait: `request.signal`
   * of Deno.serve also aborts on every successful answer, and warns of it.)
   */
  function recall(id: string, e: Entry): Promise<boolean> {
    const { promise, resolve } = Promise.withResolvers<boolean>();
    let unsubscribe = () => {};
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finish = (onDisk: boolean) => {
      unsubscribe();
      clearTimeout(timer);
      live.delete(stop);
      resolve(onDisk);
    };
    const stop = () => finish(false);
    live.add(stop);
    const tapeMs = e.options.tapeMs;
    if (tapeMs === undefined) {
      // Listen first: a file may reach disk within stage() itself (a zero delay).
      unsubscribe = library.onDisk((event) => {
        if (event.id === id) finish(true);
      });
      library.stage(id);
      if (library.media(id) === "disk") finish(true);
    } else {
      const now = performance.now();
      e.stagedAt ??= now;
      const left = e.stagedAt + tapeMs - now;
      if (left <= 0) finish(true);
      else if (Number.isFinite(left)) timer = setTimeout(() => finish(true), left);
    }
    return promise;
  }

  function body(e: Entry, nth: number, onWhole: () => void): BodyInit | null {
    const o = e.options;
    const src = e.source;
    const chunk = o.chunkSize ?? DEFAULT_CHUNK;
    const cutAt = Math.min(src.size, o.cutAt ?? Math.floor(src.size / 2));
    const short = within(nth, o.shortGets);
    const cut = within(nth, o.cutGets);
    const stall = within(nth, o.stallGets);
    const corrupt = within(nth, o.corruptGets);
    const end = short || cut || stall ? cutAt : src.size;
    const flipAt = Math.floor(src.size / 2);
    let off = 0;
    // Files on disk are read sequentially through one handle, into fresh buffers.
    const file = src.path ? Deno.openSync(src.path) : undefined;
    const read = async (len: number): Promise<Uint8Array> => {
      if (!file) return src.slice(off, len);
      const buf = new Uint8Array(len);
      let n = 0;
      while (n < len) {
        const r = await file.read(buf.subarray(n));
        if (r === null) break;
        n += r;
      }
      return buf.subarray(0, n);
    };
    let released = false;
    let release = () => {
      released = true;
    };
    const done = () => {
      if (!released) file?.close();
      release();
    };
    return new ReadableStream<Uint8Array>({
      start(controller) {
        const stop = () => {
          try {
            controller.error(new Error("fake archive closed (stream cut at shutdown)"));
          } catch { /* already closed */ }
          done();
        };
        live.add(stop);
        release = () => {
          released = true;
          live.delete(stop);
        };
      },
      async pull(controller) {
        if (off >= end) {
          if (cut) {
            // Leave the chunked body unfinished: the client sees a broken connection.
            controller.error(new Error("fake archive: connection cut (deliberate fault)"));
          } else if (stall) {
            await new Promise<void>((resolve) => {
              const prev = release;
              release = () => {
                prev();
                resolve();
              };
            });
            return;
          } else {
            controller.close();
            if (!short) onWhole();
          }
          done();
          return;
        }
        if (o.chunkDelayMs && off > 0) await delay(o.chunkDelayMs);
        let part = await read(Math.min(chunk, end - off));
        if (part.byteLength === 0) {
          controller.error(new Error("fake archive: file shrank"));
          done();
          return;
        }
        if (corrupt && flipAt >= off && flipAt < off + part.byteLength) {
          part = part.slice();
          part[flipAt - off] ^= 0xff;
        }
        off += part.byteLength;
        controller.enqueue(part);
      },
      cancel() {
        done();
      },
    }, { highWaterMark: 0 });
  }

  async function handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    let id: string;
    try {
      id = decodeURIComponent(url.pathname.slice(1));
    } catch {
      return json(500, "Invalid id encoding");
    }
    const method = req.method;
    if (method === "HEAD") totals.head++;
    else if (method === "POST") totals.post++;
    else if (method === "GET") totals.get++;
    logOf(id).push({
      method,
      at: performance.now(),
      contentLength: req.headers.get("content-length"),
    });
    if (id.includes("/") && !opts.pathIds) {
      // The real interface routes the path's segments as arguments: HEAD and POST take one
      // and answer 404; GET opens the first segment, which is no file.
      await req.body?.cancel();
      if (method === "HEAD") return headError(404);
      if (method === "GET") return json(500, `File not found: ${id.split("/")[0]}`);
      return json(404, "Nothing matches the given URI");
    }
    const e = files.get(id);
    const o = e?.options ?? {};
    if (method === "HEAD") {
      if (o.headDelayMs) await delay(o.headDelayMs);
      if (!e) return headError(500);
      const now = performance.now();
      if (!firstHead.has(id)) firstHead.set(id, now);
      if (within(countsOf(id).head, o.failHeads)) return headError(500);
      if (o.failHeadsMs !== undefined && now - firstHead.get(id)! < o.failHeadsMs) {
        return headError(500);
      }
      const media = mediaOf(id, e);
      const headers: Record<string, string> = {
        "X-Pacifica-Messsage": o.message ??
          (media === "disk"
            ? "File was found"
            : media === "tape"
            ? "File is on tape"
            : "File is in error"),
        "X-Pacifica-File": `/archive/${id}`,
        "X-Content-Length": String(e.source.size),
        "Last-Modified": String(o.mtime ?? FAKE_MTIME),
        "X-Pacifica-Ctime": String(o.mtime ?? FAKE_MTIME),
        "X-Pacifica-Bytes-Per-Level": `(${media === "disk" ? e.source.size : 0},)`,
        "X-Pacifica-File-Storage-Media": media,
        ...o.headers,
      };
      const omit = new Set((o.omitHeaders ?? []).map((h) => h.toLowerCase()));
      const h = new Headers();
      for (const [k, v] of Object.entries(headers)) if (!omit.has(k.toLowerCase())) h.set(k, v);
      return new Response(null, { status: 204, headers: h });
    }
    if (method === "POST") {
      await req.body?.cancel();
      if (o.postDelayMs) await delay(o.postDelayMs);
      if (!e) return json(500, `File not found: ${id}`);
      if (o.tapeMs !== undefined) e.stagedAt ??= performance.now();
      if (o.postStatus && o.postStatus !== 200) return json(o.postStatus, "Stage failed");
      // Only a stage request that succeeded joins the library's recall queue (one for a file
      // on disk or in error is a no-op the library counts).
      if (o.tapeMs === undefined && !o.error) library.stage(id);
      return new Response(JSON.stringify({ message: "File was staged", file: `/archive/${id}` }), {
        status: 200,
        headers: { "Content-Type": "application/json" },
      });
    }
    if (method === "GET") {
      const nth = countsOf(id).get;
      if (o.getDelayMs) await delay(o.getDelayMs);
      if (!e) return json(500, `File not found: ${id}`);
      const media = mediaOf(id, e);
      if (media === "tape" && getOnTape === "recall") {
        if (!(await recall(id, e))) return json(500, `Recall cut short: ${id}`);
        if (files.get(id) !== e) return json(500, `File not found: ${id}`); // replaced meanwhile
      } else if (media !== "disk") return json(500, `File is on ${media}: ${id}`);
      if (within(nth, o.failGets)) return json(500, "Simulated archive failure");
      const sent = () => whole.set(id, (whole.get(id) ?? 0) + 1);
      return new Response(body(e, nth, sent), {
        status: 200,
        headers: { "Content-Type": "application/octet-stream" },
      });
    }
    return json(405, `Method ${method} not supported`);
  }

  const server = Deno.serve(
    { port: opts.port ?? 0, hostname: "127.0.0.1", onListen: () => {} },
    handle,
  );
  const port = server.addr.port;
  const base = `http://127.0.0.1:${port}/`;
  let closed: Promise<void> | undefined;

  const entry = (id: string) => {
    const e = files.get(id);
    if (!e) throw new Error(`fake archive: no file ${JSON.stringify(id)}`);
    return e;
  };
  const archive: FakeArchive = {
    url: base,
    port,
    put(id, content, options = {}) {
      if (options.tape && options.tapeMs !== undefined) {
        throw new TypeError(`fake archive: ${JSON.stringify(id)} has both tape and tapeMs`);
      }
      const source = makeSource(content, options.chunkSize ?? DEFAULT_CHUNK);
      const old = files.get(id);
      files.set(id, { source, options });
      if (options.tape) library.place(id, options.tape);
      else if (old?.options.tape) library.place(id, undefined);
    },
    remove(id) {
      if (files.get(id)?.options.tape) library.place(id, undefined);
      files.delete(id);
    },
    library,
    evict(id) {
      const e = files.get(id);
      if (!e || e.options.error) return false;
      if (e.options.tapeMs === undefined) return library.evict(id);
      if (mediaOf(id, e) !== "disk") return false;
      e.stagedAt = undefined;
      return true;
    },
    libraryStats: () => library.stats(),
    counts: countsOf,
    totals: () => ({ ...totals }),
    wholeGets: (id) => whole.get(id) ?? 0,
    log: (id) => [...(logs.get(id) ?? [])],
    resetCounts: () => {
      logs.clear();
      firstHead.clear();
      whole.clear();
      totals.head = totals.post = totals.get = 0;
    },
    async digest(id, hashtype) {
      const src = entry(id).source;
      const h = createHash(hashtype);
      for (let off = 0; off < src.size;) {
        const part = await src.slice(off, Math.min(DEFAULT_CHUNK, src.size - off));
        h.update(part);
        off += part.byteLength;
      }
      return h.digest("hex");
    },
    async bytes(id) {
      const src = entry(id).source;
      const out = new Uint8Array(src.size);
      for (let off = 0; off < src.size;) {
        const part = await src.slice(off, Math.min(DEFAULT_CHUNK, src.size - off));
        out.set(part, off);
        off += part.byteLength;
      }
      return out;
    },
    size: (id) => entry(id).source.size,
    fileUrl: (id) => base + id.split("/").map(encodeURIComponent).join("/"),
    close() {
      closed ??= (async () => {
        for (const stop of [...live]) stop();
        await server.shutdown();
        if (ownLibrary) library.close();
      })();
      return closed;
    },
    [Symbol.asyncDispose]() {
      return archive.close();
    },
  };
  return archive;
}
