/**
 * A local folder served as a Pacifica Archive Interface (SPEC §2), for the quick start
 * (`cartd archive --prefix DIR`). Every file is on "disk".
 *
 * - `HEAD /{id}` → 204 with `X-Pacifica-File-Storage-Media: disk`, `X-Content-Length`,
 *   `Last-Modified` (float seconds) and Pacifica's other headers
 * - `GET /{id}` → the bytes, chunked
 * - `POST /{id}` → 200 (nothing to recall)
 *
 * An id is the file's path below the prefix, percent-decoded. An id that escapes the prefix
 * (`..`, or a symlink leading out), names a folder, or does not exist answers `500` with a
 * JSON error page, as the real archive does.
 *
 * @example
 * ```ts
 * import { serveArchive } from "./server.ts";
 * const server = serveArchive({ prefix: "examples/archive", port: 8080, hostname: "127.0.0.1" });
 * await server.finished;
 * ```
 * @module
 */

import { isAbsolute, relative, resolve } from "node:path";
import { ConfigError } from "../config/config.ts";
import { listenFailure } from "../util/listen.ts";

/** Options of {@linkcode serveArchive}. */
export interface ServeArchiveOptions {
  /** The folder whose files are served. */
  prefix: string;
  /** TCP port (0: any free port, see `server.addr`). */
  port: number;
  /** Address to listen on, e.g. "127.0.0.1" or "0.0.0.0". */
  hostname: string;
  /** Stops the server when aborted. */
  signal?: AbortSignal;
  /** Called once listening (default: silent). */
  onListen?: (addr: Deno.NetAddr) => void;
  /** The flag that named `prefix`, for messages (default "--prefix"). */
  prefixFlag?: string;
  /** The flag that chooses `port`, for messages (default "--port PORT"). */
  portFlag?: string;
}

const READ_CHUNK = 1 << 20;

function jsonError(status: number, message: string): Response {
  const text = status === 500 ? "Internal Server Error" : "Method Not Allowed";
  return new Response(JSON.stringify({ status: `${status} ${text}`, message }), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}

function within(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel);
}

/**
 * Throws a {@linkcode ConfigError} naming `prefix` (and `flag`) unless it is a folder this
 * process can read: a missing archive folder would otherwise only show as carts that fail.
 */
export function checkArchiveFolder(prefix: string, flag = "--prefix"): void {
  const root = resolve(prefix);
  const named = `the archive folder ${root} (${flag} ${prefix})`;
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(root);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ConfigError(`${named} does not exist: give the folder whose files to serve`);
    }
    if (e instanceof Deno.errors.NotCapable) {
      throw new ConfigError(
        `cartd may not read ${named}: grant it with --allow-read (a compiled cartd reads only ` +
          "the folders it was built for: deno task compile --read DIR)",
      );
    }
    throw new ConfigError(`cannot read ${named}: ${e instanceof Error ? e.message : e}`);
  }
  if (!info.isDirectory) {
    throw new ConfigError(`${named} is not a folder: give the folder whose files to serve`);
  }
}

/**
 * Serves `opts.prefix` as a Pacifica Archive Interface. Throws a {@linkcode ConfigError} when
 * the prefix is not a readable folder, and a `ListenError` naming the address when the port
 * cannot be bound; nothing is left listening then.
 */
export function serveArchive(opts: ServeArchiveOptions): Deno.HttpServer<Deno.NetAddr> {
  checkArchiveFolder(opts.prefix, opts.prefixFlag);
  const root = resolve(opts.prefix);
  let realRoot: string | undefined;

  /** The absolute path of an id, or a message why it has none. */
  async function locate(pathname: string): Promise<{ path: string; info: Deno.FileInfo } | string> {
    let id: string;
    try {
      id = decodeURIComponent(pathname.slice(1));
    } catch {
      return `Invalid id: ${pathname.slice(1)}`;
    }
    if (id === "" || id.includes("\0")) return `Invalid id: ${JSON.stringify(id)}`;
    const path = resolve(root, id);
    if (!within(root, path) || id.split(/[\\/]/).includes("..")) {
      return `Invalid id (outside the archive): ${id}`;
    }
    try {
      realRoot ??= await Deno.realPath(root);
      const real = await Deno.realPath(path);
      if (!within(realRoot, real)) return `Invalid id (outside the archive): ${id}`;
      const info = await Deno.stat(real);
      if (!info.isFile) return `Not a file: ${id}`;
      return { path: real, info };
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return `File not found: ${id}`;
      return `Cannot read ${id}: ${err instanceof Error ? err.message : String(err)}`;
    }
  }

  async function handle(req: Request): Promise<Response> {
    const method = req.method;
    if (method !== "HEAD" && method !== "GET" && method !== "POST") {
      return jsonError(405, `Method ${method} is not supported by this archive`);
    }
    if (method === "POST") await req.body?.cancel();
    const found = await locate(new URL(req.url).pathname);
    if (typeof found === "string") return jsonError(500, found);
    const { path, info } = found;
    const id = relative(realRoot!, path);
    if (method === "POST") {
      return new Response(JSON.stringify({ message: "File was staged", file: id }), {
        status: 200,
        headers: { "Content-Type": "application/json" },
      });
    }
    if (method === "HEAD") {
      const mtime = (info.mtime?.getTime() ?? Date.now()) / 1000;
      const ctime = (info.ctime ?? info.birthtime ?? info.mtime)?.getTime() ?? Date.now();
      return new Response(null, {
        status: 204,
        headers: {
          "X-Pacifica-Messsage": "File was found",
          "X-Pacifica-File": id,
          "X-Content-Length": String(info.size),
          "Last-Modified": String(mtime),
          "X-Pacifica-Ctime": String(ctime / 1000),
          "X-Pacifica-Bytes-Per-Level": `(${info.size},)`,
          "X-Pacifica-File-Storage-Media": "disk",
        },
      });
    }
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path);
    } catch (err) {
      return jsonError(500, `Cannot read ${id}: ${err instanceof Error ? err.message : err}`);
    }
    let closed = false;
    const close = () => {
      if (!closed) {
        closed = true;
        file.close();
      }
    };
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const buf = new Uint8Array(READ_CHUNK);
        let n: number | null;
        try {
          n = await file.read(buf);
        } catch (err) {
          close();
          controller.error(err);
          return;
        }
        if (n === null) {
          close();
          controller.close();
        } else controller.enqueue(buf.subarray(0, n));
      },
      cancel: close,
    }, { highWaterMark: 0 });
    return new Response(body, {
      status: 200,
      headers: { "Content-Type": "application/octet-stream" },
    });
  }

  try {
    return Deno.serve({
      port: opts.port,
      hostname: opts.hostname,
      signal: opts.signal,
      onListen: opts.onListen ?? (() => {}),
      onError: (err) =>
        jsonError(500, `Archive error: ${err instanceof Error ? err.message : String(err)}`),
    }, handle);
  } catch (e) {
    throw listenFailure(e, opts.hostname, opts.port, "the archive", opts.portFlag ?? "--port PORT");
  }
}
