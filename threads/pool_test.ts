import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_STAGE_SETTINGS } from "../lib/staging/stage_file.ts";
import { classify } from "../worker/errors.ts";
import { startFakeArchive } from "../tests/support/fake_archive.ts";
import { TaskError, ThreadPool } from "./pool.ts";

Deno.test("a cancelled task waiting for a place never keeps another task waiting", async () => {
  const dir = await Deno.makeTempDir();
  const big = `${dir}/big.bin`;
  await Deno.writeFile(big, new Uint8Array(64 * 1024 * 1024));
  const pool = new ThreadPool(1, 2);
  try {
    await pool.ready();
    // Two tasks fill the pool; cart A's two tasks wait, then cart B's.
    const tick = () => new Promise((resolve) => setTimeout(resolve, 0));
    const running = [pool.hash(big), pool.hash(big)];
    await tick();
    const cartA = new AbortController();
    const a = [pool.hash(big, undefined, cartA.signal), pool.hash(big, undefined, cartA.signal)];
    await tick();
    const b = pool.hash(big);
    await tick();
    cartA.abort(new Error("cart A was deleted"));
    for (const task of a) await assert.rejects(task, /cart A was deleted/);
    await Promise.all(running);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      b.then(() => "done"),
      new Promise((resolve) => timer = setTimeout(() => resolve("still waiting"), 10_000)),
    ]);
    clearTimeout(timer);
    assert.equal(outcome, "done");
  } finally {
    pool.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an archive's 500 page about its own full disk stays a stage error, not nospace", async () => {
  // The archive's disk is full, not ours: HEAD finds the file, GET answers Pacifica's JSON
  // error page (as the real archive does) with the system's words in its message.
  const page = JSON.stringify({
    status: "500 Internal Server Error",
    message: "[Errno 28] No space left on device",
    traceback: "",
    version: "0.0.0",
  });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    if (req.method === "HEAD") {
      return new Response(null, {
        status: 204,
        headers: {
          "X-Content-Length": "5",
          "Last-Modified": "1795991303.87",
          "X-Pacifica-File-Storage-Media": "disk",
          "X-Pacifica-Messsage": "File was found",
        },
      });
    }
    return new Response(page, { status: 500, headers: { "Content-Type": "application/json" } });
  });
  const dir = await Deno.makeTempDir();
  const pool = new ThreadPool(1, 2);
  try {
    await pool.ready();
    const settings = {
      ...DEFAULT_STAGE_SETTINGS,
      retryDelayMs: 1,
      fetchAttempts: 1,
      missingAfterMs: 0,
    };
    const failure = await pool.stage({
      archiveUrl: `http://127.0.0.1:${server.addr.port}/`,
      archiveId: "full",
      dest: join(dir, "0"),
      label: "fileids[0] (id full)",
    }, settings).then(() => assert.fail("the stage succeeded"), (e: unknown) => e);
    assert.ok(failure instanceof TaskError, String(failure));
    assert.equal(failure.name, "StageError");
    assert.notEqual(failure.code, "nospace", "the thread keeps the stage error's own code");
    assert.match(failure.message, /No space left on device/, "the archive's words are kept");
    // So the cart fails with the archive's words (its folder kept), not "No Space Available".
    const classified = classify(failure);
    assert.equal(classified.code, "stage");
    assert.match(classified.message, /No space left on device/);
  } finally {
    pool.close();
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test('a file on tape staged with onTape "return" fails at once with the code "ontape", across the thread', async () => {
  await using archive = startFakeArchive();
  archive.put("on-tape", "still on tape\n", { tapeMs: Infinity });
  const dir = await Deno.makeTempDir();
  const pool = new ThreadPool(1, 2);
  try {
    await pool.ready();
    const failure = await pool.stage({
      archiveUrl: archive.url,
      archiveId: "on-tape",
      dest: join(dir, "0"),
      label: "fileids[0] (id on-tape)",
      onTape: "return",
    }, DEFAULT_STAGE_SETTINGS).then(() => null, (e) => e);
    assert.ok(failure instanceof TaskError, String(failure));
    assert.equal(failure.code, "ontape");
    assert.match(failure.message, /^fileids\[0\] \(id on-tape\): the file is on tape/);
    assert.equal(archive.counts("on-tape").post, 0, "the thread asked for no recall");
  } finally {
    pool.close();
    await Deno.remove(dir, { recursive: true });
  }
});
