/**
 * Archive outages (issue 18, item 3): a real cartd reaches the fake archive through a TCP
 * proxy that the test cuts (connections closed, new ones refused) and restores. A cart in
 * flight (files downloading, files recalling) waits through a short outage and becomes ready,
 * its recalls asked for again soon after the archive is back; an outage longer than
 * `CARTD_ARCHIVE_OUTAGE_MAX` fails the cart with a message that names a file and the outage.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type FakeArchive, patternBytes, startFakeArchive } from "../support/fake_archive.ts";
import { type Cartd, postCart, startCartd, waitFor } from "../support/harness.ts";
import { startProxy, type TcpProxy } from "../support/tcp_proxy.ts";

const SLOW = { chunkSize: 64 * 1024, chunkDelayMs: 40 };
const DISK = ["d0", "d1", "d2", "d3"];
const TAPE = ["t0", "t1"];

/** The fake archive with slow disk files and tape files, behind a proxy. */
async function setUp(): Promise<{ archive: FakeArchive; proxy: TcpProxy }> {
  const archive = startFakeArchive();
  for (const id of DISK) archive.put(id, patternBytes(4 << 20, id.charCodeAt(1)), SLOW);
  for (const id of TAPE) archive.put(id, `bytes of ${id}\n`, { tapeMs: 1500 });
  const proxy = await startProxy("127.0.0.1", archive.port);
  return { archive, proxy };
}

/** A cart of every file, posted; resolves once downloads and recalls are both under way. */
async function cartInFlight(cartd: Cartd, archive: FakeArchive, uid: string): Promise<void> {
  const ids = [...DISK, ...TAPE];
  const res = await postCart(cartd.url, uid, {
    fileids: ids.map((id) => ({ id, path: `data/${id}` })),
  });
  assert.equal(res.status, 201, await res.text());
  const deadline = Date.now() + 10_000;
  while (
    !(DISK.some((id) => archive.counts(id).get > 0) && TAPE.every((id) => archive.counts(id).post))
  ) {
    assert.ok(Date.now() < deadline, "the cart's downloads and recalls did not start");
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 200));
}

Deno.test("a cart in flight waits through a 4 s archive outage, its recalls re-posted when the archive is back", async () => {
  const { archive, proxy } = await setUp();
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: `http://127.0.0.1:${proxy.port}/`, CARTD_FETCH_ATTEMPTS: "2" },
  });
  try {
    await cartInFlight(cartd, archive, "outage-short");
    await proxy.cut();
    await new Promise((r) => setTimeout(r, 2000));
    // The archive restarts and forgets its recall queue: the tape files need a new POST.
    for (const id of TAPE) archive.put(id, `bytes of ${id}\n`, { tapeMs: 1500 });
    await new Promise((r) => setTimeout(r, 2000));
    await proxy.restore();
    const restoredAt = performance.now();
    const status = await waitFor(cartd.url, "outage-short", "ready", 40_000);
    assert.equal(status[1], "ready", status.join(" "));
    for (const id of TAPE) {
      const post = archive.log(id).find((r) => r.method === "POST" && r.at >= restoredAt);
      assert.ok(post, `${id}: no stage POST after the archive came back`);
      const after = post.at - restoredAt;
      assert.ok(after < 5000, `${id}: re-posted ${after.toFixed(0)} ms after the archive's return`);
    }
  } catch (e) {
    console.error(cartd.output());
    throw e;
  } finally {
    await proxy.close();
    await archive.close();
  }
});

Deno.test("an outage longer than CARTD_ARCHIVE_OUTAGE_MAX fails the cart, naming a file and the outage", async () => {
  const { archive, proxy } = await setUp();
  await using cartd = await startCartd({
    env: {
      ARCHIVE_INTERFACE_URL: `http://127.0.0.1:${proxy.port}/`,
      CARTD_ARCHIVE_OUTAGE_MAX: "2",
    },
  });
  try {
    await cartInFlight(cartd, archive, "outage-long");
    await proxy.cut();
    const status = await waitFor(cartd.url, "outage-long", "error", 20_000);
    assert.equal(status[1], "error", status.join(" "));
    assert.match(status[2], /^fileids\[\d\] \(id [dt]\d\): /);
    assert.match(status[2], /unreachable for \d+(\.\d)? s, longer than CARTD_ARCHIVE_OUTAGE_MAX/);
  } catch (e) {
    console.error(cartd.output());
    throw e;
  } finally {
    await proxy.close();
    await archive.close();
  }
});
