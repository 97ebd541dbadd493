import assert from "node:assert/strict";
import { ThreadPool } from "./pool.ts";

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
