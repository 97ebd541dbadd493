/**
 * The `cartd` command line as a new user meets it (issue 12, items 5–10): unknown commands and
 * flags, each command's `--help`, a port that is taken, a missing archive folder, which archive
 * a start uses, `admin dump` on a fresh volume, the `cartd` task, and the one-file build's run
 * command. Every case runs the real command (`CARTD_TEST_ENTRY`, as in the other end-to-end
 * tests) as a child process.
 */
import assert from "node:assert/strict";
import { build, runCommand } from "../../tools/build.ts";
import { startFakeArchive } from "../support/fake_archive.ts";
import {
  cartdCommand,
  ENTRY,
  listFiles,
  postCart,
  ROOT,
  startCartd,
  waitFor,
} from "../support/harness.ts";
import { run } from "../support/run.ts";

const EXAMPLES = `${ROOT}examples/archive`;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cartd ARGS` with the binary's permissions on `volume` and exactly `env`. */
async function cartd(
  args: string[],
  env: Record<string, string> = {},
  volume?: string,
): Promise<Result> {
  const dir = volume ?? await Deno.makeTempDir({ prefix: "cartd-cli-" });
  try {
    const out = await cartdCommand(args, dir, env, {
      stdout: "piped",
      signal: AbortSignal.timeout(30_000),
    }).output();
    const d = new TextDecoder();
    return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
  } finally {
    if (volume === undefined) await Deno.remove(dir, { recursive: true });
  }
}

/** Runs `cartd ARGS` with no permissions at all and an empty environment. */
async function bare(args: string[]): Promise<Result> {
  return await run(Deno.execPath(), ["run", "--no-prompt", ENTRY, ...args], {
    env: { NO_COLOR: "1" },
    clearEnv: true,
    signal: AbortSignal.timeout(30_000),
  });
}

/** Asserts the exit code, showing the output when it is wrong. */
function exits(result: Result, code: number, what: string): void {
  assert.equal(
    result.code,
    code,
    `${what} exited ${result.code}:\n${result.stdout}\n${result.stderr}`,
  );
}

/** Holds a TCP port on 127.0.0.1 for the test's length. */
function takePort(): Deno.Listener & { port: number } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return Object.assign(listener, { port: (listener.addr as Deno.NetAddr).port });
}

/** Nothing claimed to have started. */
function startedNothing(stderr: string): void {
  assert.doesNotMatch(stderr, /cartd started|worker started|listening on|serving/, stderr);
}

Deno.test("an unknown command is named, with a pointer to --help, before any env access", async () => {
  const r = await bare(["bogus"]);
  exits(r, 2, "cartd bogus");
  assert.match(r.stderr, /unknown command "bogus"; see 'cartd --help'/);
  assert.doesNotMatch(r.stderr, /Requires|access|NotCapable/);
  const admin = await bare(["admin", "bogus"]);
  exits(admin, 2, "cartd admin bogus");
  assert.match(admin.stderr, /unknown command "bogus"; see 'cartd admin --help'/);
});

Deno.test("an unknown flag, or one the command does not take, is named with its --help", async () => {
  const unknown = await bare(["serve", "--bogus"]);
  exits(unknown, 2, "cartd serve --bogus");
  assert.match(unknown.stderr, /unknown option "--bogus"; see 'cartd serve --help'/);
  const top = await bare(["--bogus"]);
  exits(top, 2, "cartd --bogus");
  assert.match(top.stderr, /unknown option "--bogus"; see 'cartd --help'/);
  const misplaced = await bare(["serve", "--archive-dir", "x"]);
  exits(misplaced, 2, "cartd serve --archive-dir x");
  assert.match(
    misplaced.stderr,
    /cartd serve does not take --archive-dir; see 'cartd serve --help'/,
  );
  const adminFlag = await bare(["admin", "dump", "--older-than", "1d"]);
  exits(adminFlag, 2, "cartd admin dump --older-than 1d");
  assert.match(adminFlag.stderr, /dump does not take --older-than; see 'cartd admin dump --help'/);
  const noValue = await bare(["--port"]);
  exits(noValue, 2, "cartd --port");
  assert.match(noValue.stderr, /--port needs a value; see 'cartd --help'/);
});

Deno.test("each command has its own --help, which needs no permission", async () => {
  const cases: [args: string[], has: RegExp[], hasNot: RegExp[]][] = [
    [["--help"], [/^cartd \d+\.\d+\.\d+: /, /cartd serve \[options\]/, /VOLUME_PATH/], []],
    [["serve", "--help"], [/^cartd serve \[options\]: the HTTP API only/, /--port PORT/], [
      /--archive-dir/,
      /--prefix/,
    ]],
    [["worker", "--help"], [/^cartd worker/, /--archive-dir DIR/, /--example-archive DIR/], [
      /--port/,
    ]],
    [["archive", "--help"], [/^cartd archive --prefix DIR/, /port of the archive/], [
      /--archive-dir/,
    ]],
    [["dbsync", "--help"], [/^cartd dbsync: create or upgrade/], [/--port/]],
    [["dbchk", "--help"], [/^cartd dbchk: exit 0 when the schema is current/], [/--port/]],
    [["admin", "--help"], [/cartd admin dump/, /cartd admin purge/, /cartd admin fixit/], []],
    [["admin", "purge", "--help"], [/cartd admin purge --older-than DUR/], [/cartd admin dump/]],
  ];
  for (const [args, has, hasNot] of cases) {
    const r = await bare(args);
    exits(r, 0, `cartd ${args.join(" ")}`);
    for (const re of has) assert.match(r.stdout, re, `cartd ${args.join(" ")}`);
    for (const re of hasNot) assert.doesNotMatch(r.stdout, re, `cartd ${args.join(" ")}`);
  }
});

Deno.test("a taken API port is named with --port, and nothing is reported started", async () => {
  using taken = takePort();
  for (const role of [[], ["serve"]]) {
    const r = await cartd([...role, "--port", String(taken.port)]);
    exits(r, 1, `cartd ${role.join(" ")} on a taken port`);
    assert.match(
      r.stderr,
      new RegExp(
        `the API cannot listen on 127\\.0\\.0\\.1:${taken.port}: the address is already in use`,
      ),
    );
    assert.match(r.stderr, /choose another with --port PORT \(or --address ADDRESS\)/);
    startedNothing(r.stderr);
  }
});

Deno.test("a taken archive port is named with --archive-port, or --port for cartd archive", async () => {
  using taken = takePort();
  const all = await cartd(
    ["--port", "0", "--example-archive", EXAMPLES, "--archive-port", String(taken.port)],
  );
  exits(all, 1, "cartd --archive-port on a taken port");
  assert.match(
    all.stderr,
    new RegExp(`the archive cannot listen on 127\\.0\\.0\\.1:${taken.port}`),
  );
  assert.match(all.stderr, /choose another with --archive-port PORT/);
  startedNothing(all.stderr);
  const archive = await cartd(["archive", "--prefix", EXAMPLES, "--port", String(taken.port)]);
  exits(archive, 1, "cartd archive on a taken port");
  assert.match(
    archive.stderr,
    new RegExp(`the archive cannot listen on 127\\.0\\.0\\.1:${taken.port}: .*--port PORT`),
  );
  startedNothing(archive.stderr);
});

Deno.test("a missing archive folder, or a file, is refused at start with its path", async () => {
  const file = `${ROOT}deno.json`;
  // Inside what the binary's permissions let it read, so that "does not exist" is the answer.
  const missing = `${ROOT}nonexistent`;
  const cases: [string[], RegExp][] = [
    [
      ["--archive-dir", missing],
      /nonexistent \(--archive-dir .*nonexistent\) does not exist/,
    ],
    [
      ["--example-archive", missing],
      /nonexistent \(--example-archive .*nonexistent\) does not exist/,
    ],
    [["worker", "--archive-dir", missing], /nonexistent \(--archive-dir .*does not exist/],
    [
      ["archive", "--prefix", missing],
      /nonexistent \(--prefix .*nonexistent\) does not exist/,
    ],
    [["--archive-dir", file], /deno\.json \(--archive-dir .*deno\.json\) is not a folder/],
    [["archive", "--prefix", file], /deno\.json \(--prefix .*deno\.json\) is not a folder/],
  ];
  for (const [args, message] of cases) {
    const r = await cartd([...args, ...(args[0] === "archive" ? [] : ["--archive-port", "0"])]);
    exits(r, 2, `cartd ${args.join(" ")}`);
    assert.match(r.stderr, message);
    startedNothing(r.stderr);
  }
  // Outside them, the message says the folder may not be read, and how to grant it.
  const denied = await cartd(["archive", "--prefix", "/nonexistent"]);
  exits(denied, 2, "cartd archive --prefix /nonexistent");
  assert.match(
    denied.stderr,
    /may not read the archive folder \/nonexistent \(--prefix \/nonexistent\)/,
  );
});

Deno.test("ARCHIVE_INTERFACE_URL wins over --example-archive, and the start says so", async () => {
  await using fake = startFakeArchive();
  fake.put("only-in-the-fake", "from the configured archive");
  // Were the example archive started, it could not bind this port, and start-up would fail.
  using taken = takePort();
  const server = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: fake.url },
    args: ["--example-archive", EXAMPLES, "--archive-port", String(taken.port)],
  });
  try {
    assert.ok(
      server.output().includes(
        `archive ${fake.url} (from ARCHIVE_INTERFACE_URL; --example-archive ${EXAMPLES} is not started)`,
      ),
      server.output(),
    );
    assert.equal(
      (await postCart(server.url, "c", { fileids: [{ id: "only-in-the-fake", path: "x" }] }))
        .status,
      201,
    );
    assert.deepEqual(await waitFor(server.url, "c", "ready"), [204, "ready", ""]);
  } finally {
    await server.stop();
    await Deno.remove(server.volume, { recursive: true });
  }
});

Deno.test("without an archive setting, --example-archive serves the folder, and the start says so", async () => {
  const server = await startCartd({
    env: {},
    args: ["--example-archive", EXAMPLES, "--archive-port", "0"],
  });
  try {
    assert.match(
      server.output(),
      new RegExp(
        `archive http://127\\.0\\.0\\.1:\\d+/ \\(the example archive in ${EXAMPLES}, since no archive is configured\\)`,
      ),
    );
    assert.equal(
      (await postCart(server.url, "c", { fileids: [{ id: "foo.txt", path: "f" }] })).status,
      201,
    );
    assert.deepEqual(await waitFor(server.url, "c", "ready"), [204, "ready", ""]);
  } finally {
    await server.stop();
    await Deno.remove(server.volume, { recursive: true });
  }
});

Deno.test("--archive-dir with an archive setting, or a malformed ARCHIVE_INTERFACE_URL, stops start-up", async () => {
  const both = await cartd(["--archive-dir", EXAMPLES, "--port", "0"], {
    ARCHIVE_INTERFACE_URL: "http://archive.example:8080/",
  });
  exits(both, 2, "--archive-dir with ARCHIVE_INTERFACE_URL");
  assert.match(
    both.stderr,
    /--archive-dir .* and ARCHIVE_INTERFACE_URL=http:\/\/archive\.example:8080\/ both name the archive/,
  );
  startedNothing(both.stderr);
  const linked = await cartd(["--archive-dir", EXAMPLES, "--port", "0"], {
    ARCHIVEI_PORT_8080_TCP_ADDR: "10.0.0.9",
  });
  exits(linked, 2, "--archive-dir with ARCHIVEI_PORT_8080_TCP_ADDR");
  assert.match(linked.stderr, /and ARCHIVEI_PORT_8080_TCP_ADDR=10\.0\.0\.9 both name the archive/);
  for (const role of [[], ["worker"]]) {
    const bad = await cartd([...role, "--example-archive", EXAMPLES, "--archive-port", "0"], {
      ARCHIVE_INTERFACE_URL: "archive.example:8080",
    });
    exits(bad, 2, `cartd ${role.join(" ")} with a malformed ARCHIVE_INTERFACE_URL`);
    assert.match(
      bad.stderr,
      /ARCHIVE_INTERFACE_URL="archive\.example:8080" is not valid: expected a URL/,
    );
    startedNothing(bad.stderr);
  }
});

Deno.test("admin dump on a fresh volume reports 0 carts and leaves only the database", async () => {
  const root = await Deno.makeTempDir({ prefix: "cartd-cli-" });
  const volume = `${root}/volume`; // not even created yet
  try {
    const text = await cartd(["admin", "dump"], { VOLUME_PATH: volume }, root);
    exits(text, 0, "admin dump");
    assert.match(text.stdout, /^0 live carts$/m);
    const json = await cartd(["admin", "dump", "--json"], { VOLUME_PATH: volume }, root);
    exits(json, 0, "admin dump --json");
    assert.deepEqual(JSON.parse(json.stdout).carts, []);
    const purge = await cartd(
      ["admin", "purge", "--older-than", "1d"],
      { VOLUME_PATH: volume },
      root,
    );
    exits(purge, 0, "admin purge");
    assert.match(purge.stdout, /Purged 0 carts/);
    assert.deepEqual(await listFiles(root), ["volume/cartd.sqlite3"]);
    const chk = await cartd(["dbchk"], { VOLUME_PATH: volume }, root);
    exits(chk, 0, "dbchk after admin dump");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("deno task cartd runs the command with its arguments", async () => {
  const r = await run("deno", ["task", "--quiet", "cartd", "serve", "--help"], { cwd: ROOT });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^cartd serve \[options\]/);
});

Deno.test("the one-file build runs with the command the build prints, without a GC warning", async () => {
  const root = await Deno.makeTempDir({ prefix: "cartd-cli-" });
  const outdir = `${root}/opt`;
  const volume = `${root}/volume`;
  try {
    assert.deepEqual(await build(outdir), []);
    const command = runCommand(outdir, volume);
    const script = `${command} --port 0 2>log & pid=$!
      for _ in $(seq 150); do grep -q 'listening on' log && break; sleep 0.2; done
      kill $pid; wait $pid; cat log >&2`;
    const r = await run("bash", ["-c", script], { cwd: root });
    assert.match(r.stderr, /cartd listening on http:\/\/127\.0\.0\.1:\d+\//, r.stderr);
    assert.match(r.stderr, new RegExp(`volume=${volume} `));
    assert.doesNotMatch(r.stderr, /expose-gc|WARN/, r.stderr);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
