/**
 * Tests of the one-file build (`deno task build`): the same entry point as the `cartd` binary,
 * bundled into `cartd.js` with its Web Worker thread beside it as `thread.js`.
 *
 * The tests build their own copy into a temporary folder (from the sources as they are now, so
 * they never test a stale `dist/`), and start it from there the way the binary runs: no
 * deno.json, no npm or remote modules, and exactly the permissions `deno task compile` bakes
 * into the binary, plus reading its own folder (the binary's modules are embedded instead).
 * `deno task build` + `CARTD_TEST_ENTRY=dist/cartd.js` runs the end-to-end suite against
 * `dist/` as well (see README, "One file to deploy").
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import denoJson from "../../deno.json" with { type: "json" };
import { startFakeArchive } from "../support/fake_archive.ts";
import { permissions, postCart, ROOT, spawnCollecting, waitFor } from "../support/harness.ts";
import { build, externalReferences } from "../../tools/build.ts";
import {
  MALLOC_TUNABLES,
  permissionFlags,
  runtimeFailure,
  UNSTABLE_FLAGS,
  V8_FLAGS,
} from "../../tools/compile.ts";

/** A folder holding a fresh build: cartd.js and thread.js. */
let built: Promise<string> | null = null;
function artifact(): Promise<string> {
  built ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "cartd-artifact-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const problems = await build(dir);
    assert.deepEqual(problems, [], "the bundle depends on files outside it");
    return dir;
  })();
  return built;
}

/** A copy of the build without some of its files. */
async function copyWithout(missing: string): Promise<string> {
  const from = await artifact();
  const dir = await Deno.makeTempDir({ prefix: "cartd-artifact-" });
  for (const name of ["cartd.js", "thread.js", "http_thread.js", "document_thread.js"]) {
    if (name !== missing) await Deno.copyFile(`${from}/${name}`, `${dir}/${name}`);
  }
  return dir;
}

/** `deno run` flags that run the bundle like the binary: no config, nothing fetched. */
function runFlags(app: string, volume: string): string[] {
  const flags = permissionFlags({ volume }).map((f) =>
    f.startsWith("--allow-read=") ? `${f},${app}` : f
  );
  return [
    "run",
    "--no-config",
    "--no-npm",
    "--no-remote",
    V8_FLAGS,
    UNSTABLE_FLAGS,
    ...flags,
    `${app}/cartd.js`,
  ];
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

interface Started {
  url: string;
  /** Milliseconds from spawning the process to the first answer of `GET /`. */
  startupMs: number;
  output(): string;
  stop(): Promise<void>;
}

/** Starts the bundle in `app` (cwd: the volume) and waits for `GET /` to answer 200. */
async function startArtifact(app: string, env: Record<string, string>): Promise<Started> {
  const volume = await Deno.makeTempDir({ prefix: "cartd-artifact-volume-" });
  const port = freePort();
  const url = `http://127.0.0.1:${port}/`;
  const started = performance.now();
  const cartd = spawnCollecting(
    new Deno.Command(Deno.execPath(), {
      args: [...runFlags(app, volume), "--port", String(port)],
      cwd: volume,
      env: {
        CARTD_POLL_INITIAL: "0.05",
        CARTD_POLL_MAX: "0.3",
        CARTD_RETRY_DELAY: "0.05",
        CARTD_REQUEST_TIMEOUT: "3",
        VOLUME_PATH: volume,
        NO_COLOR: "1",
        ...env,
      },
      clearEnv: true,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }),
  );
  let exited = false;
  cartd.exited.then(() => exited = true);
  const stop = async () => {
    await cartd.stop();
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  };
  const deadline = started + 20_000;
  for (;;) {
    try {
      const res = await fetch(url);
      await res.body?.cancel();
      if (res.status === 200) break;
    } catch { /* not listening yet */ }
    if (exited || performance.now() > deadline) {
      await stop();
      throw new Error(`the artifact did not answer GET / (exited: ${exited}):\n${cartd.output()}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  return { url, startupMs: performance.now() - started, output: cartd.output, stop };
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

Deno.test("the build leaves no module outside the bundle", async () => {
  const dir = await artifact();
  for (const name of ["cartd.js", "thread.js", "http_thread.js", "document_thread.js"]) {
    const code = await Deno.readTextFile(`${dir}/${name}`);
    assert.deepEqual(externalReferences(code), [], name);
  }
  // The check finds what a bundler leaves behind when it cannot follow an import.
  assert.deepEqual(externalReferences('var m = await import(name);\nimport "npm:x";\n'), [
    "dynamic import name",
    'side-effect import "npm:x"',
  ]);
  assert.deepEqual(
    externalReferences('import { a } from "./lib/db.ts";\nnew URL("./thread.ts", u);'),
    ['URL of a source file "./thread.ts"', 'static import "./lib/db.ts"'],
  );
  assert.deepEqual(externalReferences('import { b } from "node:buffer";\n'), []);
});

Deno.test("the binary gets the permissions the end-to-end tests run cartd with", () => {
  // harness.ts adds the repository (the sources) to --allow-read; the binary embeds them.
  const volume = "/srv/cartd-volume";
  const e2e = permissions(volume).map((f) => f.replace(`,${ROOT}`, ""));
  assert.deepEqual(permissionFlags({ volume }), e2e);
  assert.deepEqual(permissionFlags({ volume, database: "/srv/db/cartd.sqlite3" }), [
    "--allow-net",
    "--allow-env",
    "--allow-sys=hostname,statfs,getPriority,setPriority",
    "--allow-read=/srv/cartd-volume,/srv/db",
    "--allow-write=/srv/cartd-volume,/srv/db",
  ]);
  assert.deepEqual(
    permissionFlags({ volume, database: `${volume}/x/cartd.sqlite3`, read: ["/srv/archive"] })
      .slice(3),
    ["--allow-read=/srv/cartd-volume,/srv/archive", "--allow-write=/srv/cartd-volume"],
  );
});

Deno.test("the artifact prints deno.json's version", async () => {
  const app = await artifact();
  const volume = await Deno.makeTempDir();
  const out = await new Deno.Command(Deno.execPath(), {
    args: [...runFlags(app, volume), "--version"],
    cwd: volume,
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(volume, { recursive: true });
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.equal(new TextDecoder().decode(out.stdout), `cartd ${denoJson.version}\n`);
});

Deno.test("the artifact starts, answers GET /, and stages a cart in its threads", async () => {
  await using archive = startFakeArchive();
  const files = { "a.txt": "alpha\n", "b.bin": new Uint8Array(300_000).fill(7) };
  for (const [id, content] of Object.entries(files)) archive.put(id, content);
  const app = await artifact();
  const cartd = await startArtifact(app, { ARCHIVE_INTERFACE_URL: archive.url });
  try {
    console.log(`artifact: GET / answered ${cartd.startupMs.toFixed(0)} ms after start`);
    assert.ok(cartd.startupMs < 10_000, `start-up took ${cartd.startupMs} ms`);
    const root = await fetch(cartd.url);
    assert.deepEqual(await root.json(), { message: "Pacifica Cartd Interface Up and Running" });

    for (const bundle of [false, true]) {
      const uid = `cart-${bundle}`;
      const doc = {
        fileids: [
          {
            id: "a.txt",
            path: "x/a.txt",
            hashtype: "sha256",
            hashsum: sha256(await archive.bytes("a.txt")),
          },
          {
            id: "b.bin",
            path: "y/b.bin",
            hashtype: "sha256",
            hashsum: sha256(await archive.bytes("b.bin")),
          },
        ],
        bundle,
      };
      const res = await postCart(cartd.url, uid, doc);
      assert.equal(res.status, 201, await res.text());
      const [code, state, message] = await waitFor(cartd.url, uid, "ready", 20_000);
      assert.equal(state, "ready", `HEAD ${code}: ${message}`);
      const tar = new Uint8Array(
        await (await fetch(`${cartd.url}${uid}?filename=c.tar`)).arrayBuffer(),
      );
      const text = new TextDecoder().decode(tar);
      // A "bundle": true cart's tar is under its uid (SPEC §1), any other under the name.
      const top = bundle ? uid : "c";
      assert.ok(text.includes(`${top}/x/a.txt`) && text.includes("alpha\n"), "the tar holds a.txt");
      assert.ok(tar.length > 300_000, "the tar holds b.bin");
    }
    // The second cart shares the first one's staged a.txt (same id and hash): one fetch.
    assert.equal(archive.counts("a.txt").get, 1, "a.txt fetched once for both carts");
  } catch (e) {
    console.error(cartd.output());
    throw e;
  } finally {
    await cartd.stop();
  }
});

Deno.test("an artifact without thread.js refuses to start, naming the module (CI fails)", async () => {
  const app = await copyWithout("thread.js");
  const volume = await Deno.makeTempDir({ prefix: "cartd-artifact-volume-" });
  try {
    const r = await new Deno.Command(Deno.execPath(), {
      args: [...runFlags(app, volume), "--port", "0"],
      cwd: volume,
      env: { VOLUME_PATH: volume, NO_COLOR: "1" },
      clearEnv: true,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      // A cartd that keeps running without threads is killed here, and fails the test.
      signal: AbortSignal.timeout(20_000),
    }).output();
    const stderr = new TextDecoder().decode(r.stderr);
    assert.notEqual(r.code, 0, "cartd started without its thread module");
    assert.match(stderr, /cartd: The staging threads cannot start \(.*thread\.js/);
    assert.doesNotMatch(stderr, /cartd listening/);
  } finally {
    await Deno.remove(app, { recursive: true });
    await Deno.remove(volume, { recursive: true });
  }
});

Deno.test("deno task compile builds the binary or says in one line why it cannot", async () => {
  const out = await Deno.makeTempDir({ prefix: "cartd-compile-" });
  try {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}tools/compile.ts`, "--output", `${out}/cartd`, "--volume", out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(r.stderr).trim();
    if (r.code !== 0) {
      // No runtime here (Deno's release host cannot be reached): one clear line, no trace.
      assert.equal(stderr.split("\n").length, 1, stderr);
      assert.match(stderr, /^compile: Deno's runtime for \S+ \(denort\) is missing/);
      console.log(stderr);
      return;
    }
    const version = await new Deno.Command(`${out}/cartd`, { args: ["--version"] }).output();
    assert.equal(new TextDecoder().decode(version.stdout), `cartd ${denoJson.version}\n`);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("a failed runtime download becomes one line; other failures do not", () => {
  const download = "error: Writing deno compile executable to temporary file 'x'\n\nCaused by:\n" +
    "    0: Setting up base binary.\n    1: error sending request for url " +
    "(https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip): client error " +
    "(Connect): dns error\n\nStack backtrace:\n   0: <unknown>";
  const line = runtimeFailure(download, "x86_64-unknown-linux-gnu");
  assert.ok(line && !line.includes("\n") && line.includes("dl.deno.land"), String(line));
  assert.equal(runtimeFailure("error: TS2322 Type 'string' is not assignable", "t"), null);
});

Deno.test("every launcher runs cartd with the same V8 flags and malloc settings", async () => {
  const root = new URL("../../", import.meta.url);
  const tasks = JSON.parse(await Deno.readTextFile(new URL("deno.json", root))).tasks;
  for (const name of ["start", "cartd"]) {
    assert.ok(tasks[name].includes(V8_FLAGS), `task ${name} lacks ${V8_FLAGS}`);
    assert.ok(
      tasks[name].startsWith(`GLIBC_TUNABLES=${MALLOC_TUNABLES} `),
      `task ${name} lacks GLIBC_TUNABLES=${MALLOC_TUNABLES}`,
    );
  }
  const dockerfile = await Deno.readTextFile(new URL("Dockerfile", root));
  assert.ok(dockerfile.includes(`ENV GLIBC_TUNABLES=${MALLOC_TUNABLES}\n`), "the Dockerfile");
  const readme = await Deno.readTextFile(new URL("README.md", root));
  assert.ok(readme.includes(`GLIBC_TUNABLES=${MALLOC_TUNABLES}`), "the README");
});
