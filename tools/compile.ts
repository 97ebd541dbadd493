/**
 * `deno task compile`: builds the `cartd` binary with `deno compile`: main.ts with the Web
 * Worker thread (`--include threads/thread.ts`), and the narrowest permissions cartd works
 * with, baked in:
 *
 * - `--allow-net`, `--allow-env`, `--allow-sys=hostname,statfs,getPriority,setPriority` (the
 *   worker's owner id, the free space of the volume, and the document thread's lower
 *   priority);
 * - `--allow-read` and `--allow-write` of the volume folder (`--volume`, default
 *   `/srv/cartd`), which holds the carts and the SQLite database, and of the folder of a
 *   SQLite file kept elsewhere (`--database FILE`: SQLite writes `-wal` and `-shm` files
 *   beside it); `--allow-read` of the folders given with `--read` (e.g. for
 *   `cartd archive --prefix DIR`). Nothing else.
 *
 * A compiled binary cannot widen its permissions at run time, so the folders are chosen when
 * building; the binary defaults `VOLUME_PATH` (and `CARTD_SQLITE_PATH`) to them.
 *
 * `deno compile` fetches Deno's runtime (`denort`) for the target from Deno's release host the
 * first time; when that fails this prints one line saying so instead of a stack trace.
 *
 * Usage:
 *   deno task compile [--target TARGET] [--output FILE] [--volume DIR] [--database FILE]
 *                     [--read DIR]... [--dry-run]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { dirname, isAbsolute, resolve } from "node:path";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** Targets of `--target` (Deno's list; `deno compile --help` has the current one). */
export const TARGETS: readonly string[] = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
];

/** The volume folder a binary is built for unless `--volume` says otherwise. */
export const DEFAULT_VOLUME = "/srv/cartd";

/** What the binary is built for. */
export interface CompileOptions {
  /** Absolute folder of VOLUME_PATH (carts, and the SQLite file unless `database` is set). */
  volume: string;
  /** Absolute path of a SQLite file outside the volume. */
  database?: string;
  /** Further absolute folders the binary may read. */
  read?: string[];
  target?: string;
  /** Where the binary goes (default `cartd` in the repository). */
  output?: string;
}

/**
 * V8 settings of every cartd process:
 *
 * - a young generation of 2 MiB per isolate instead of V8's default (up to 16 MiB per
 *   semi-space) keeps the main thread and each Web Worker thread from holding tens of MiB of
 *   garbage between collections; measured on a 10,000-file cart, peak RSS fell from 360 to
 *   220 MiB at the same speed (see bench/);
 * - `--expose-gc` lets lib/util/memory.ts collect at a bounded pace (CARTD_GC_SLACK).
 */
export const V8_FLAGS = "--v8-flags=--max-semi-space-size=2,--expose-gc";

/**
 * Deno's unstable network features that cartd uses: `SO_REUSEPORT`, so that every HTTP thread
 * accepts on the API's port (app/http_threads.ts). Without it cartd serves from the main
 * thread alone, and says so.
 */
export const UNSTABLE_FLAGS = "--unstable-net";

/**
 * glibc malloc settings for every cartd process, passed as `GLIBC_TUNABLES` (the binary cannot
 * set them itself: glibc reads them when the process starts). Other C libraries ignore them.
 *
 * - A download hands out fresh 1 MiB chunks. By default glibc maps each one afresh and unmaps
 *   it on free, so every byte sent costs a page fault. Buffers under 2 MiB from the heap, and
 *   up to 16 MiB of freed heap kept, let the chunks reuse warm memory (lib/util/memory.ts collects
 *   them every 8 MiB): a 1 GiB download went from about 600–900 to 1100–1300 MiB/s.
 * - One arena for all threads instead of one per thread: each thread's arena kept what
 *   staging had used (about 36 MiB each), which a shared arena reuses. Two arenas were 16 MiB
 *   less than one per thread; one is 5–15 MiB less again (40,000-file cart: 143–149 / 145–153
 *   MiB at ready / GET, against 150–151 / 166–168), and staged as fast or faster. Downloads
 *   measured the same within this machine's noise.
 */
export const MALLOC_TUNABLES =
  "glibc.malloc.mmap_threshold=2097152:glibc.malloc.trim_threshold=16777216:glibc.malloc.arena_max=1";

/** The permission flags baked into the binary. */
export function permissionFlags(options: CompileOptions): string[] {
  const writable = [options.volume];
  if (options.database && !isInside(options.database, options.volume)) {
    writable.push(dirname(options.database));
  }
  const readable = [...writable, ...(options.read ?? [])];
  return [
    "--allow-net",
    "--allow-env",
    "--allow-sys=hostname,statfs,getPriority,setPriority",
    `--allow-read=${readable.join(",")}`,
    `--allow-write=${writable.join(",")}`,
  ];
}

/** The environment the binary starts with (the run-time environment wins). */
export function bakedEnv(options: CompileOptions): string {
  const lines = [`VOLUME_PATH=${options.volume}`];
  if (options.database) lines.push(`CARTD_SQLITE_PATH=${options.database}`);
  return lines.join("\n") + "\n";
}

/** The arguments of `deno` that build the binary (`envFile` holds {@linkcode bakedEnv}). */
export function compileArgs(options: CompileOptions, envFile: string): string[] {
  return [
    "compile",
    "--output",
    options.output ?? `${ROOT}cartd`,
    ...(options.target ? ["--target", options.target] : []),
    "--include",
    `${ROOT}threads/thread.ts`,
    "--include",
    `${ROOT}app/http_thread.ts`,
    "--include",
    `${ROOT}app/document_thread.ts`,
    `--env-file=${envFile}`,
    V8_FLAGS,
    UNSTABLE_FLAGS,
    ...permissionFlags(options),
    `${ROOT}main.ts`,
  ];
}

/**
 * One line for a failed `deno compile` whose cause is the runtime download; null for any other
 * failure (its own output says more).
 */
export function runtimeFailure(stderr: string, target: string): string | null {
  if (!/denort|dl\.deno\.land|Setting up base binary/i.test(stderr)) return null;
  const why = /dns error|Connect|timed out|connection|tls|certificate|404|403/i.exec(stderr)
    ? "it cannot be downloaded from Deno's release host (dl.deno.land) on this machine"
    : "it could not be set up";
  return `compile: Deno's runtime for ${target} (denort) is missing and ${why}; build where ` +
    `that host is reachable, or set DENORT_BIN to a denort ${Deno.version.deno} binary ` +
    `(see README, "One file to deploy").`;
}

function isInside(path: string, dir: string): boolean {
  const rel = resolve(path).slice(resolve(dir).length);
  return resolve(path).startsWith(resolve(dir)) && (rel === "" || rel.startsWith("/"));
}

function hostTarget(): string {
  const { arch, os } = Deno.build;
  return os === "windows"
    ? `${arch}-pc-windows-msvc`
    : os === "darwin"
    ? `${arch}-apple-darwin`
    : `${arch}-unknown-linux-gnu`;
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      target: { type: "string" },
      output: { type: "string" },
      volume: { type: "string", default: DEFAULT_VOLUME },
      database: { type: "string" },
      read: { type: "string", multiple: true },
      "dry-run": { type: "boolean" },
    },
  });
  for (const [flag, path] of [["--volume", values.volume], ["--database", values.database]]) {
    if (path !== undefined && !isAbsolute(path)) {
      console.error(`compile: ${flag} needs an absolute path (the binary may run anywhere)`);
      return 2;
    }
  }
  const options: CompileOptions = {
    volume: resolve(values.volume!),
    database: values.database && resolve(values.database),
    read: (values.read ?? []).map((p) => resolve(p)),
    target: values.target,
    output: values.output && resolve(values.output),
  };
  const envFile = await Deno.makeTempFile({ prefix: "cartd-env-" });
  try {
    await Deno.writeTextFile(envFile, bakedEnv(options));
    const denoArgs = compileArgs(options, envFile);
    if (values["dry-run"]) {
      console.log(["deno", ...denoArgs].join(" "));
      console.log(`# with ${envFile} holding: ${bakedEnv(options).trim().replace("\n", " ")}`);
      return 0;
    }
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: denoArgs,
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdout: "inherit",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(stderr);
    if (code === 0) {
      console.error(text.trimEnd());
      return 0;
    }
    const line = runtimeFailure(text, options.target ?? hostTarget());
    console.error(line ?? text.trimEnd());
    return 1;
  } finally {
    await Deno.remove(envFile).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
