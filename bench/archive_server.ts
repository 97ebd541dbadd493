/**
 * The fake Pacifica archive of the benchmarks, in a process of its own so that serving files
 * never competes with the benchmark driver's event loop (or with cartd's).
 *
 * It runs {@linkcode startFakeArchive} on a free port and a small control API on another:
 *
 * - `POST /put` with `{"prefix": "big-", "count": 16, "size": 67108864, "kind": "pattern"}`
 *   adds `big-000000` … `big-000015` (ids from {@linkcode benchIds}); `kind` is `pattern`
 *   (a repeated 64 KiB block, for big files), `bytes` (one shared buffer per size, for small
 *   files) or `path` (with `"path": "/a/file"`, served from disk). `options` are
 *   {@linkcode FakeFileOptions}, e.g. `{"tapeMs": 60000}`.
 * - `GET /counts?id=ID` → `{"head": 3, "post": 1, "get": 1}`
 * - `POST /reset` forgets every count.
 *
 * On start it prints one JSON line to stdout: `{"archive": URL, "control": URL}`. SIGTERM or
 * SIGINT stops it.
 *
 * @module
 */
import {
  type FakeFileOptions,
  patternBytes,
  startFakeArchive,
} from "../tests/support/fake_archive.ts";
import { benchIds } from "./common.ts";

/** A batch of files to add. */
export interface PutSpec {
  prefix: string;
  count: number;
  size: number;
  kind: "pattern" | "bytes" | "path";
  path?: string;
  options?: FakeFileOptions;
}

const archive = startFakeArchive();
const shared = new Map<number, Uint8Array>();

function put(spec: PutSpec): number {
  const ids = benchIds(spec.prefix, spec.count);
  for (const id of ids) {
    if (spec.kind === "pattern") {
      archive.put(id, { size: spec.size }, spec.options);
    } else if (spec.kind === "path") {
      if (!spec.path) throw new Error("kind path needs a path");
      archive.put(id, { path: spec.path }, spec.options);
    } else {
      let bytes = shared.get(spec.size);
      if (!bytes) shared.set(spec.size, bytes = patternBytes(spec.size, 0x1234567 + spec.size));
      archive.put(id, bytes, spec.options);
    }
  }
  return ids.length;
}

async function control(req: Request): Promise<Response> {
  const url = new URL(req.url);
  try {
    if (req.method === "POST" && url.pathname === "/put") {
      const specs = [await req.json()].flat() as PutSpec[];
      let added = 0;
      for (const spec of specs) added += put(spec);
      return Response.json({ added });
    }
    if (req.method === "GET" && url.pathname === "/counts") {
      return Response.json(archive.counts(url.searchParams.get("id") ?? ""));
    }
    if (req.method === "POST" && url.pathname === "/reset") {
      archive.resetCounts();
      return Response.json({ reset: true });
    }
    return Response.json({ message: "Not Found" }, { status: 404 });
  } catch (e) {
    return Response.json({ message: e instanceof Error ? e.message : String(e) }, { status: 400 });
  }
}

const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, control);
console.log(JSON.stringify({
  archive: archive.url,
  control: `http://127.0.0.1:${server.addr.port}/`,
}));

const stop = Promise.withResolvers<void>();
for (const sig of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(sig, () => stop.resolve());
await stop.promise;
await server.shutdown();
await archive.close();
Deno.exit(0);
