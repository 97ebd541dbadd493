/**
 * The README is part of the product: its settings table lists every setting the code reads,
 * and its curl walk-through works word for word against the quick start.
 */
import assert from "node:assert/strict";
import { SETTINGS } from "../lib/config.ts";
import { ROOT, run, startCartd } from "./harness.ts";

const readme = await Deno.readTextFile(`${ROOT}README.md`);

Deno.test("the README's configuration table lists every setting", () => {
  for (const [name] of SETTINGS) {
    assert.match(
      readme,
      new RegExp(`^\\| \`${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\` +\\|`, "m"),
    );
  }
});

Deno.test("the README's curl walk-through works against the quick start", async () => {
  const section = readme.slice(readme.indexOf("### A cart, step by step"));
  const script = /```sh\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(script, "the walk-through has a sh block");
  // The quick start serves examples/archive as the archive, like `deno task start`.
  const cartd = await startCartd({
    env: {},
    args: ["--archive-dir", `${ROOT}examples/archive`, "--archive-port", "0"],
  });
  const dir = await Deno.makeTempDir();
  try {
    const port = new URL(cartd.url).port;
    const adapted = script.replaceAll("127.0.0.1:8081", `127.0.0.1:${port}`);
    const r = await run("bash", ["-euo", "pipefail", "-c", adapted], { cwd: dir });
    assert.equal(r.code, 0, r.stdout + r.stderr + cartd.output());
    assert.match(r.stdout, /Cart Processing has begun/);
    assert.match(r.stdout, /Cart Deleted Successfully/);
    assert.equal(
      await Deno.readTextFile(`${dir}/my_cart/1/2/3/foo.txt`),
      await Deno.readTextFile(`${ROOT}examples/archive/foo.txt`),
    );
  } finally {
    await cartd.stop();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cartd.volume, { recursive: true });
  }
});
