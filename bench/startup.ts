/**
 * Start-up time: from spawning cartd to the first answer of `GET /`, for `deno run main.ts`
 * (the sources) and for the one-file build (`cartd.js` + `thread.js`, built fresh into a
 * temporary folder and run like the binary: no deno.json, the binary's permissions).
 *
 * Usage: `deno run --allow-all bench/startup.ts [--runs N]`
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { build } from "../tools/build.ts";
import { permissionFlags } from "../tools/compile.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Spawns `deno args… --port P` and returns ms until `GET /` answers 200. */
async function startupMs(args: string[], cwd: string, volume: string): Promise<number> {
  const port = freePort();
  const start = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [...args, "--port", String(port)],
    cwd,
    env: { VOLUME_PATH: volume, CARTD_LOG_LEVEL: "warn", NO_COLOR: "1" },
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    for (;;) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/`);
        await res.body?.cancel();
        if (res.ok) return performance.now() - start;
      } catch { /* not yet */ }
      if (performance.now() - start > 30_000) throw new Error(`no answer: deno ${args.join(" ")}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
}

const { values } = parseArgs({
  args: Deno.args,
  options: { runs: { type: "string", default: "5" } },
});
const runs = Number(values.runs);
const app = await Deno.makeTempDir({ prefix: "cartd-startup-" });
const problems = await build(app);
if (problems.length) throw new Error(problems.join("\n"));

const cases: [string, (volume: string) => string[], string][] = [
  ["deno run main.ts", (volume) => [
    "run",
    ...permissionFlags({ volume, read: [ROOT] }),
    `${ROOT}main.ts`,
  ], ROOT],
  ["one-file build (cartd.js)", (volume) => [
    "run",
    "--no-config",
    "--no-npm",
    "--no-remote",
    ...permissionFlags({ volume, read: [app] }),
    `${app}/cartd.js`,
  ], app],
];

console.log(`start-up to the first GET / answer, ${runs} runs each (fresh volume per run)`);
for (const [name, args, cwd] of cases) {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const volume = await Deno.makeTempDir({ prefix: "cartd-startup-volume-" });
    try {
      times.push(await startupMs(args(volume), cwd, volume));
    } finally {
      await Deno.remove(volume, { recursive: true });
    }
  }
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)];
  console.log(
    `${name.padEnd(28)} median ${median.toFixed(0)} ms  min ${times[0].toFixed(0)} ms  ` +
      `max ${times.at(-1)!.toFixed(0)} ms`,
  );
}
await Deno.remove(app, { recursive: true });
