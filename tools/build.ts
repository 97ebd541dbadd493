/**
 * `deno task build`: builds cartd into one self-contained JavaScript file, `dist/cartd.js`,
 * with its Web Worker thread as a second bundled entry beside it, `dist/thread.js`
 * (threads/pool.ts loads `./thread.js` next to the bundle). Both come from the same sources
 * that `deno run main.ts` and `deno compile` use, so the end-to-end tests run against the
 * program graph of the binary.
 *
 * The build fails (exit 1, one line per problem) when the output still depends on a file that
 * is not in it: a dynamic `import()` of a local or npm module the bundler could not follow, a
 * `new URL("./….ts", import.meta.url)` left pointing at a source file, or a bare `npm:` /
 * `jsr:` / `http(s):` import. Only `node:` built-ins may stay outside.
 *
 * The bundle behaves as the sources do: the same arguments and settings, and `VOLUME_PATH`
 * defaulting to `var/volume` under the current folder. A deploy sets `VOLUME_PATH` to the
 * folder it grants; the build prints that command for the folder it wrote
 * ({@linkcode runCommand}), with the V8 flags and malloc settings of every cartd process.
 *
 * Usage: `deno task build [--outdir DIR] [--volume DIR]` (DIR relative to the repository;
 * `--volume` only changes the printed command, default `/srv/cartd`)
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { resolve } from "node:path";
import {
  DEFAULT_VOLUME,
  MALLOC_TUNABLES,
  permissionFlags,
  UNSTABLE_FLAGS,
  V8_FLAGS,
} from "./compile.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** The entries of the build: output file name → source module (relative to the root). */
export const ENTRIES: ReadonlyArray<[output: string, source: string]> = [
  ["cartd.js", "main.ts"],
  ["thread.js", "threads/thread.ts"],
  ["http_thread.js", "app/http_thread.ts"],
  ["document_thread.js", "app/document_thread.ts"],
];

/** What in a bundle would make it depend on files outside it; empty when it stands alone. */
export function externalReferences(code: string): string[] {
  const found: string[] = [];
  const patterns: [RegExp, string][] = [
    [/\bimport\s*\(\s*([^)]{0,120})\)/g, "dynamic import"],
    [/\bnew\s+URL\s*\(\s*(["'`][^"'`]*\.[cm]?tsx?["'`])/g, "URL of a source file"],
    [/^(?:import|export)\s[^\n]*?\bfrom\s*(["'][^"']+["'])/gm, "static import"],
    [/^import\s*(["'][^"']+["'])/gm, "side-effect import"],
  ];
  for (const [pattern, what] of patterns) {
    for (const m of code.matchAll(pattern)) {
      const spec = m[1].trim();
      if (/^["'`]node:/.test(spec)) continue;
      found.push(`${what} ${spec}`);
    }
  }
  return found;
}

async function bundle(source: string, output: string): Promise<string | null> {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--platform", "deno", "--output", output, source],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "inherit",
    stderr: "piped",
  }).output();
  if (code === 0) return null;
  const text = new TextDecoder().decode(stderr).trim();
  return text.split("\n").find((l) => /error/i.test(l)) ?? (text || `exit code ${code}`);
}

/** Builds every entry into `outdir`; returns the problems found (empty on success). */
export async function build(outdir: string): Promise<string[]> {
  await Deno.mkdir(outdir, { recursive: true });
  const problems: string[] = [];
  for (const [output, source] of ENTRIES) {
    const path = `${outdir}/${output}`;
    await Deno.remove(path).catch(() => {});
    const failed = await bundle(source, path);
    if (failed) {
      problems.push(`${source}: deno bundle failed: ${failed}`);
      continue;
    }
    const code = await Deno.readTextFile(path);
    for (const ref of externalReferences(code)) {
      problems.push(`${path}: ${ref} is not in the bundle`);
    }
    const size = (code.length / 1024 / 1024).toFixed(2);
    console.log(`built ${path} (${size} MB) from ${source}`);
  }
  return problems;
}

/**
 * The shell command that runs the bundle in `outdir` (absolute) on the volume `volume`
 * (absolute): the environment and permissions of the compiled binary, which reads nothing but
 * the volume and the bundle's own folder. Arguments of `cartd` go after it.
 */
export function runCommand(outdir: string, volume: string): string {
  return [
    `GLIBC_TUNABLES=${MALLOC_TUNABLES} VOLUME_PATH=${volume} \\`,
    `  deno run --no-config ${V8_FLAGS} ${UNSTABLE_FLAGS} \\`,
    `  ${permissionFlags({ volume, read: [outdir] }).join(" ")} \\`,
    `  ${outdir}/cartd.js`,
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      outdir: { type: "string", default: `${ROOT}dist` },
      volume: { type: "string", default: DEFAULT_VOLUME },
    },
  });
  const outdir = resolve(values.outdir!);
  const problems = await build(outdir);
  for (const p of problems) console.error(`build: ${p}`);
  if (!problems.length) {
    console.log(
      `Run it (keep cartd.js and thread.js together) with:\n${
        runCommand(outdir, resolve(values.volume!))
      }`,
    );
  }
  Deno.exit(problems.length ? 1 : 0);
}
