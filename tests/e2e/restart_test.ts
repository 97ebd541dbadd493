/**
 * The restart fault of issue 14: cartd killed (SIGKILL) with recalls outstanding. After the
 * restart every recall resumes (the stage request is sent again where cartd cannot know that
 * the archive has it), none is lost, and no file is fetched twice. `deno task bench tape-big`
 * runs the same with 10,000 recalls outstanding; this test uses 1,000.
 *
 * @module
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import { eventually } from "../support/eventually.ts";
import { postCart, startCartd, waitFor } from "../support/harness.ts";

Deno.test("killed with 1,000 recalls outstanding: after the restart each resumes, none lost, none fetched twice", async () => {
  await using archive = startFakeArchive();
  const n = 1000;
  const ids = Array.from({ length: n }, (_, i) => `r${i}`);
  for (const id of ids) archive.put(id, `bytes of ${id}\n`, { tapeMs: 10_000 });
  const volume = await Deno.makeTempDir({ prefix: "cartd-test-" });
  // A cap under the cart's size: some recalls are outstanding, the rest wait for the cap.
  const env = { ARCHIVE_INTERFACE_URL: archive.url, CARTD_RECALLS_MAX: "800" };
  try {
    const first = await startCartd({ env, volume });
    const doc = { fileids: ids.map((id) => ({ id, path: `d/${id}` })) };
    const res = await postCart(first.url, "many", doc);
    assert.equal(res.status, 201, await res.text());
    await eventually("800 recalls outstanding", () => archive.totals().post >= 800, 30_000);
    assert.equal(archive.totals().get, 0, "nothing fetched yet: all on tape");
    await first.kill();
    const postedBefore = ids.filter((id) => archive.counts(id).post > 0).length;
    assert.ok(postedBefore < n, "some recalls were still waiting for the cap");

    await using second = await startCartd({ env, volume });
    const status = await waitFor(second.url, "many", "ready", 120_000);
    assert.equal(status[1], "ready", `${status.join(" ")}\n${second.output()}`);
    for (const id of ids) {
      const c = archive.counts(id);
      assert.equal(c.get, 1, `${id} fetched once (${c.get})`);
      assert.ok(c.post >= 1, `${id} had its stage request`);
    }
    const tar = await fetch(second.url + "many");
    assert.equal(tar.status, 200);
    const body = new TextDecoder().decode(await tar.arrayBuffer());
    for (const id of ids) assert.ok(body.includes(`bytes of ${id}\n`), `${id} in the tar`);
  } finally {
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
});
