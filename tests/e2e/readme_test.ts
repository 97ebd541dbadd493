/**
 * The README and docs/ are part of the product: the settings table lists every setting the code
 * reads, and the shell commands they show work as written.
 *
 * The convention for shell blocks (```` ```sh ```` fences in README.md and docs/*.md):
 *
 * - ```` ```sh test=NAME ```` : this test runs the block; NAME says how (see {@linkcode RUNS}).
 * - ```` ```sh skip-test ```` : the block is not run; {@linkcode BLOCKS} says why.
 *
 * Every shell block carries one of the two tags, and {@linkcode BLOCKS} lists every block (by
 * file and first line) with the same decision, so a new block cannot be added without saying
 * whether and how it is tested. Blocks of other languages (`json`, `text`) are not commands.
 */
import assert from "node:assert/strict";
import { SETTING_TABLE, settingsMarkdown } from "../../lib/config/settings.ts";
import { postCart, ROOT, startCartd, withCartd } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";
import { startReceiver } from "../support/webhook_receiver.ts";

/** One shell block of a document. */
interface Block {
  file: string;
  tag: string;
  script: string;
  /** The block's first line: with `file`, what names it in {@linkcode BLOCKS}. */
  first: string;
}

const DOCS = [
  "README.md",
  ...[...Deno.readDirSync(`${ROOT}docs`)].filter((e) => e.name.endsWith(".md"))
    .map((e) => `docs/${e.name}`).sort(),
];

function shellBlocks(file: string): Block[] {
  const text = Deno.readTextFileSync(`${ROOT}${file}`);
  const blocks: Block[] = [];
  for (const m of text.matchAll(/^```(\w*)([^\n]*)\n([\s\S]*?)^```$/gm)) {
    if (!["sh", "bash", "shell", "console"].includes(m[1])) continue;
    blocks.push({ file, tag: m[2].trim(), script: m[3], first: m[3].split("\n")[0] });
  }
  return blocks;
}

const ALL = DOCS.flatMap(shellBlocks);

/**
 * Every shell block, by `file: first line`, and what becomes of it: `run` names its entry in
 * {@linkcode RUNS}; `skip` says why it is not run.
 */
const BLOCKS: Record<string, { run: string } | { skip: string }> = {
  "README.md: npm install -g deno@2.9.6     # Deno itself, at the version the project is tested with":
    { skip: "installs Deno and the npm packages on the machine; .ci/run does exactly this" },
  "README.md: deno task start": {
    skip: "a service that runs until stopped; the walk-through runs against the same command line",
  },
  "README.md: deno task test": { skip: "the test suite itself, this test included" },
  "README.md: curl -sS -X POST --upload-file examples/foo.json http://127.0.0.1:8081/mycart; echo":
    {
      run: "walkthrough",
    },
  "docs/benchmarks.md: deno task bench                      # every scenario": {
    skip: "takes minutes and the whole machine; it measures and asserts nothing",
  },
  "docs/benchmarks.md: deno task bench tape            # the tape cases (a few minutes: two of them wait on purpose)":
    { skip: "takes minutes; it measures and asserts nothing" },
  "docs/benchmarks.md: deno task bench access   # access off beside access on: HEAD and a 1 GiB GET (about 2 minutes)":
    { skip: "takes minutes; it measures and asserts nothing" },
  "docs/api.md: curl -N http://127.0.0.1:8081/mycart/events": {
    skip: "a stream that lasts until the cart is ready; tests/e2e/events_test.ts reads the same",
  },
  "docs/operations.md: OTEL_DENO=true OTEL_SERVICE_NAME=cartd-worker \\": {
    skip: "needs a collector; tests/e2e/otel_test.ts runs cartd with these settings against one",
  },
  "docs/configuration.md: deno task cartd --help": { run: "help" },
  'docs/api.md: expected="sha256=$({ printf \'%s.\' "$TIMESTAMP"; cat body.json; } |': {
    run: "webhook-signature",
  },
  "docs/deploy.md: docker compose up -d                              # everything but the archive interface":
    {
      skip:
        "needs a Docker engine and Docker Compose v2; .ci/run validates compose.yaml with docker-compose",
    },
  "docs/deploy.md: sudo install -m 755 cartd /usr/local/bin/cartd": {
    skip: "needs root and a compiled binary; tests/e2e/artifact_test.ts runs a compiled binary",
  },
  "docs/deploy.md: deno install                    # the npm dependencies, once": {
    skip:
      "deno compile downloads Deno's runtime, which the test machines cannot reach; tests/e2e/artifact_test.ts compiles where it can",
  },
  "docs/deploy.md: deno task build": {
    skip:
      "needs root to write /opt and /srv; tests/e2e/artifact_test.ts builds the same files and starts them with the same flags in a temporary folder",
  },
  "docs/deploy.md: docker build -t cartd .": { skip: "needs a Docker engine" },
  "docs/operations.md: cartd admin dump [--json]            # live carts, their files, and where space stands":
    {
      skip:
        "a synopsis of the admin commands (placeholders such as UID), not a script; tests/e2e/admin_test.ts runs each",
    },
};

Deno.test("every shell block of the README and docs/ is tagged, and listed with its decision", () => {
  const seen = new Set<string>();
  for (const block of ALL) {
    const key = `${block.file}: ${block.first}`;
    seen.add(key);
    const decision = BLOCKS[key];
    assert.ok(decision, `${key}: not in BLOCKS of tests/e2e/readme_test.ts (say whether it runs)`);
    if ("run" in decision) {
      assert.equal(block.tag, `test=${decision.run}`, `${key}: tag it test=${decision.run}`);
      assert.ok(decision.run in RUNS, `${key}: no run named ${decision.run}`);
    } else {
      assert.equal(block.tag, "skip-test", `${key}: tag it skip-test`);
      assert.ok(decision.skip.length > 10, `${key}: say why it is not run`);
    }
  }
  for (const key of Object.keys(BLOCKS)) assert.ok(seen.has(key), `${key}: no such block any more`);
});

Deno.test("the README's first commands are the setup, the start and the tests", () => {
  const firsts = shellBlocks("README.md").slice(0, 3).map((b) => b.script.trim());
  assert.match(firsts[0], /^npm install -g deno@2\.9\.6 .*\ndeno install /);
  assert.equal(firsts[1], "deno task start");
  assert.equal(firsts[2], "deno task test");
});

/** The cells of a Markdown table's body rows (the header and the `---` line left out). */
function tableRows(markdown: string): string[][] {
  return markdown.split("\n").filter((line) => line.startsWith("| ")).slice(2)
    .map((line) => line.slice(2, -2).split(" | ").map((cell) => cell.trim()));
}

Deno.test("docs/configuration.md's table is the settings table: names, meanings, defaults", async () => {
  const doc = await Deno.readTextFile(`${ROOT}docs/configuration.md`);
  const section = /^## Every setting\n\n([\s\S]*?)\n(?=## )/m.exec(doc);
  assert.ok(section, 'docs/configuration.md lacks its "## Every setting" section');
  const table = settingsMarkdown();
  // Row by row first, so that a difference is named; then the text, padding included.
  assert.deepEqual(
    tableRows(section[1]),
    tableRows(table),
    "docs/configuration.md's table differs from lib/config/settings.ts: paste settingsMarkdown()",
  );
  assert.equal(tableRows(table).length, Object.keys(SETTING_TABLE).length);
  assert.ok(section[1].includes(table), "docs/configuration.md's table: run deno fmt on it");
});

/** Runs `script` with bash -euo pipefail in `cwd`; fails the test after `ms`. */
async function bash(script: string, cwd: string, ms = 60_000) {
  return await run("bash", ["-euo", "pipefail", "-c", script], {
    cwd,
    signal: AbortSignal.timeout(ms),
  });
}

function blockRun(name: string): Block {
  const block = ALL.find((b) => b.tag === `test=${name}`);
  assert.ok(block, `no block tagged test=${name}`);
  return block;
}

/**
 * The blocks this test runs, by name. Each runs the block's text as it stands; the only change
 * is the API's port, since the test's cartd listens on a free port instead of 8081.
 */
const RUNS: Record<string, () => Promise<void>> = {
  /**
   * The walk-through, in a folder laid out like the repository root (its `examples/`), against
   * cartd started with the arguments of `deno task start` and the environment of a fresh shell
   * (no archive configured, so the example archive is used).
   */
  async walkthrough() {
    const block = blockRun("walkthrough");
    const cartd = await startCartd({ env: {}, args: [...startTaskArgs(), "--archive-port", "0"] });
    const dir = await Deno.makeTempDir({ prefix: "cartd-test-readme-" });
    try {
      await Deno.symlink(`${ROOT}examples`, `${dir}/examples`);
      const port = new URL(cartd.url).port;
      const script = block.script.replaceAll("127.0.0.1:8081", `127.0.0.1:${port}`);
      for (const round of ["first", "second"]) {
        const r = await bash(script, dir);
        const all = `${round} run:\n${r.stdout}${r.stderr}\n${cartd.output()}`;
        assert.equal(r.code, 0, all);
        assert.match(r.stdout, /Cart Processing has begun/, all);
        assert.match(r.stdout, /Cart Deleted Successfully/, all);
        assert.equal(
          await Deno.readTextFile(`${dir}/my_cart/1/2/3/foo.txt`),
          await Deno.readTextFile(`${ROOT}examples/archive/foo.txt`),
        );
        for (const [path, id] of [["1/2/3/bar.csv", "bar.csv"], ["2/3/4/baz.ini", "baz.ini"]]) {
          assert.equal(
            await Deno.readTextFile(`${dir}/my_cart/${path}`),
            await Deno.readTextFile(`${ROOT}examples/archive/${id}`),
          );
        }
      }
      // A cart that fails (here: a wrong hash) ends the loop with its message, not for ever.
      const wrongHash = `{"id": "foo.txt", "path": "x", "hashtype": "md5", "hashsum": "${
        "0".repeat(32)
      }"}`;
      const failing = script.replace(
        "--upload-file examples/foo.json",
        `-d '{"fileids": [${wrongHash}]}'`,
      );
      assert.notEqual(failing, script);
      const r = await bash(failing, dir, 120_000);
      assert.notEqual(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stderr, /x-pacifica-message: File hash does not match/i, r.stdout + r.stderr);
    } finally {
      await cartd.stop();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(cartd.volume, { recursive: true });
    }
  },

  /**
   * The webhook signature check of docs/api.md, on an event a real cartd delivered to a
   * receiver on 127.0.0.1: it accepts the event as received, and refuses it with one byte
   * of the body changed.
   */
  async "webhook-signature"() {
    const block = blockRun("webhook-signature");
    const secret = "readme-secret-0123456789";
    await using receiver = startReceiver(secret);
    const env = { CARTD_WEBHOOK_SECRET: secret, CARTD_WEBHOOK_ALLOW: "127.0.0.1" };
    await withCartd({ env }, async (c, archive) => {
      archive.put("a", "alpha");
      const doc = { fileids: [{ id: "a", path: "a.txt" }], webhook: receiver.url };
      assert.equal((await postCart(c.url, "signed", doc)).status, 201);
      await eventually("the event arrives", () => receiver.received.length === 1);
    });
    const [got] = receiver.received;
    const dir = await Deno.makeTempDir({ prefix: "cartd-test-readme-" });
    try {
      const check = async (body: string) => {
        await Deno.writeTextFile(`${dir}/body.json`, body);
        const vars = {
          TIMESTAMP: got.headers.get("x-cartd-timestamp")!,
          SIGNATURE: got.headers.get("x-cartd-signature")!,
          CARTD_WEBHOOK_SECRET: secret,
        };
        const exports = Object.entries(vars).map(([k, v]) => `export ${k}='${v}'\n`).join("");
        return await bash(exports + block.script, dir);
      };
      const ok = await check(got.body);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.equal(ok.stdout.trim(), "signature ok");
      const forged = await check(got.body.replace('"signed"', '"signee"'));
      assert.notEqual(forged.code, 0, forged.stdout + forged.stderr);
      assert.match(forged.stderr, /forged/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },

  /** `deno task cartd --help` and each command's own `--help`, in the repository root. */
  async help() {
    const block = blockRun("help");
    const r = await bash(block.script, ROOT);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /cartd/);
  },
};

/** The arguments `deno task start` gives main.ts, with its example folders made absolute. */
function startTaskArgs(): string[] {
  const tasks = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)).tasks;
  const words: string[] = tasks.start.split(/\s+/);
  const at = words.indexOf("main.ts");
  assert.ok(at > 0, "deno task start runs main.ts");
  return words.slice(at + 1).map((w) => w.startsWith("examples/") ? `${ROOT}${w}` : w);
}

for (const [name, body] of Object.entries(RUNS)) {
  Deno.test(`the docs' shell block tagged test=${name} works as written`, body);
}
