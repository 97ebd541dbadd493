/**
 * Disk full anyway (issue 4, point 3): a write that hits ENOSPC fails that cart with
 * `No Space Available`, its temporary files are removed, and the service keeps serving every
 * other cart. Proven on a real, tiny tmpfs (`mount -t tmpfs -o size=1m`): at the file-writing
 * layer (lib/staging/stage_file.ts, and the thread pool the worker uses for staging and bundling), and
 * end to end. A volume 100 % full, the database included (issue 17): every route answers 503
 * with `Retry-After` naming the cause, and ready carts still answer HEAD and GET. Needs the
 * right to mount (root); where the machine refuses, the tests are skipped with a message
 * saying so.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { join } from "node:path";
import { DEFAULT_STAGE_SETTINGS, StageError, stageFile } from "../../lib/staging/stage_file.ts";
import { TaskError, ThreadPool } from "../../threads/pool.ts";
import { startFakeArchive } from "../support/fake_archive.ts";
import { cartStatus, listFiles, postCart, startCartd, waitFor } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

async function sh(cmd: string, ...args: string[]): Promise<{ ok: boolean; text: string }> {
  const r = await run(cmd, args);
  return { ok: r.code === 0, text: (r.stdout + r.stderr).trim() };
}

/** Mounts a tmpfs of `size` at `dir` (created); null when the machine refuses. */
async function mountTmpfs(dir: string, size = "1m"): Promise<string | null> {
  await Deno.mkdir(dir, { recursive: true });
  try {
    const r = await sh("mount", "-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir);
    return r.ok ? null : r.text || "mount failed";
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

async function umount(dir: string): Promise<void> {
  const r = await sh("umount", dir);
  if (!r.ok) throw new Error(`umount ${dir}: ${r.text}`);
}

/** Whether this machine lets the tests mount a tmpfs (probed once). */
const MOUNT_REFUSED: string | null = await (async () => {
  const probe = await Deno.makeTempDir({ prefix: "cartd-enospc-probe-" });
  const why = await mountTmpfs(probe);
  if (why === null) await umount(probe);
  await Deno.remove(probe, { recursive: true });
  return why;
})();
if (MOUNT_REFUSED !== null) {
  console.warn(`enospc_test: skipped, this machine refuses to mount a tmpfs: ${MOUNT_REFUSED}`);
}

/** A 1 MiB tmpfs at a fresh folder, unmounted and removed on dispose. */
async function tinyDisk(): Promise<{ dir: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "cartd-enospc-" });
  const why = await mountTmpfs(dir);
  if (why !== null) throw new Error(`could not mount a tmpfs: ${why}`);
  return {
    dir,
    async [Symbol.asyncDispose]() {
      await umount(dir);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Writes zeros into `path` until the file system is full; returns the bytes written. */
async function fill(path: string): Promise<number> {
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(4 * KiB);
  let written = 0;
  try {
    for (;;) written += await file.write(chunk);
  } catch (e) {
    assert.match(String(e), /No space left|os error 28/, "filling must stop at ENOSPC");
  } finally {
    file.close();
  }
  return written;
}

const test = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: MOUNT_REFUSED !== null, fn });

test("enospc: stageFile on a full tmpfs fails with nospace and leaves no .part", async () => {
  await using disk = await tinyDisk();
  await using fake = startFakeArchive();
  fake.put("big", { size: 2 * MiB });
  const dest = join(disk.dir, "files", "0");
  await assert.rejects(
    stageFile({
      archiveUrl: fake.url,
      archiveId: "big",
      dest,
      label: "fileids[0] (id big)",
    }, { ...DEFAULT_STAGE_SETTINGS, retryDelayMs: 10 }),
    (e: unknown) => {
      assert.ok(e instanceof StageError, String(e));
      assert.equal((e as StageError).code, "nospace");
      assert.equal((e as StageError).message, "No Space Available");
      return true;
    },
  );
  assert.deepEqual(await listFiles(disk.dir), [], "neither the file nor its .part stays");
  assert.equal(fake.counts("big").get, 1, "a full disk is not retried");
});

test("enospc: the thread pool reports nospace for staging and for writing a bundle", async () => {
  await using disk = await tinyDisk();
  await using fake = startFakeArchive();
  fake.put("big", { size: 2 * MiB });
  const pool = new ThreadPool(1, 4);
  const src = await Deno.makeTempDir({ prefix: "cartd-enospc-src-" });
  try {
    await assert.rejects(
      pool.stage({
        archiveUrl: fake.url,
        archiveId: "big",
        dest: join(disk.dir, "0"),
        label: "fileids[0] (id big)",
      }, DEFAULT_STAGE_SETTINGS),
      (e: unknown) => {
        assert.ok(e instanceof TaskError, String(e));
        assert.equal((e as TaskError).code, "nospace");
        return true;
      },
    );
    // A bundle whose tar does not fit: the source is elsewhere, the tar goes to the tmpfs.
    const bytes = new Uint8Array(2 * MiB).fill(7);
    await Deno.writeFile(join(src, "a"), bytes);
    await assert.rejects(
      pool.bundle({
        files: [{
          path: "a",
          size: bytes.length,
          mtime: 0,
          source: join(src, "a"),
          sha256: createHash("sha256").update(bytes).digest("hex"),
          crc32: crc32(bytes) >>> 0,
        }],
        cart: { uid: "data", bundle: true, manifest: false, readyAt: 0, createdAt: 0 },
        dest: join(disk.dir, "bundle.tar"),
      }),
      (e: unknown) => {
        assert.ok(e instanceof TaskError, String(e));
        assert.equal((e as TaskError).code, "nospace");
        return true;
      },
    );
    assert.deepEqual(await listFiles(disk.dir), [], "no .part of the file or the tar stays");
  } finally {
    pool.close();
    await Deno.remove(src, { recursive: true });
  }
});

test("e2e enospc: a cart whose write hits a full disk fails with No Space Available; others are served", async () => {
  await using fake = startFakeArchive();
  fake.put("small", { size: 64 * KiB });
  fake.put("late", { size: 256 * KiB }, { tapeMs: Infinity });
  fake.put("after", { size: 64 * KiB });
  const volume = await Deno.makeTempDir({ prefix: "cartd-enospc-e2e-" });
  // The cart files go to a 1 MiB tmpfs; the SQLite database stays beside it, on the real disk.
  const carts = join(volume, "carts");
  const why = await mountTmpfs(carts);
  if (why !== null) throw new Error(`could not mount a tmpfs: ${why}`);
  try {
    await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: fake.url }, volume });
    const { url } = cartd;
    assert.equal(
      (await postCart(url, "small", { fileids: [{ id: "small", path: "s" }] })).status,
      201,
    );
    assert.deepEqual(await waitFor(url, "small", "ready"), [204, "ready", ""]);
    // "late" fits when it reserves, then waits for its tape...
    assert.equal(
      (await postCart(url, "late", { fileids: [{ id: "late", path: "l" }] })).status,
      201,
    );
    await eventually("late is waiting for its tape", () => fake.counts("late").post > 0);
    assert.equal((await cartStatus(url, "late"))[1], "staging");
    // ...while another program fills the disk.
    const filler = join(carts, "filler.bin");
    assert.ok((await fill(filler)) > 0);
    fake.put("late", { size: 256 * KiB }); // the tape recall completes
    assert.deepEqual(await waitFor(url, "late", "error"), [500, "error", "No Space Available"]);
    assert.equal(fake.counts("late").get, 1, "a full disk is not retried");
    // Nothing of "late" stays: only the folder of "small" and the filler.
    const left = await listFiles(carts);
    assert.ok(left.includes("filler.bin"), left.join(", "));
    assert.deepEqual(
      left.filter((f) => f !== "filler.bin").map((f) => f.split("/").slice(1).join("/")),
      [
        "files/0",
      ],
    );
    // The service keeps serving: the ready cart downloads, and once there is room, a new cart
    // is staged.
    const res = await fetch(url + "small");
    assert.equal(res.status, 200);
    assert.ok((await res.arrayBuffer()).byteLength > 64 * KiB);
    await Deno.remove(filler);
    assert.equal(
      (await postCart(url, "after", { fileids: [{ id: "after", path: "a" }] })).status,
      201,
    );
    assert.deepEqual(await waitFor(url, "after", "ready"), [204, "ready", ""]);
    await cartd.stop();
  } finally {
    await umount(carts);
    await Deno.remove(volume, { recursive: true });
  }
});

test("e2e enospc: a volume 100 % full, database included, answers 503 naming the cause; ready carts still answer HEAD and GET; DELETE frees", async () => {
  await using fake = startFakeArchive();
  fake.put("small", { size: 64 * KiB });
  fake.put("next", { size: 64 * KiB });
  // The whole VOLUME_PATH, the SQLite file included, on a 4 MiB tmpfs.
  const volume = await Deno.makeTempDir({ prefix: "cartd-enospc-full-" });
  const why = await mountTmpfs(volume, "4m");
  if (why !== null) throw new Error(`could not mount a tmpfs: ${why}`);
  try {
    await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: fake.url }, volume });
    const { url } = cartd;
    const doc = (id: string) => ({ fileids: [{ id, path: `${id}.bin` }] });
    assert.equal((await postCart(url, "small", doc("small"))).status, 201);
    assert.deepEqual(await waitFor(url, "small", "ready"), [204, "ready", ""]);
    const filler = join(volume, "filler.bin");
    assert.ok((await fill(filler)) > 0);

    /** A 503 with Retry-After whose message says the volume (or the database's disk) is full. */
    const full = async (res: Response, what: string) => {
      const text = await res.text();
      assert.equal(res.status, 503, `${what}: ${text}`);
      assert.ok(Number(res.headers.get("retry-after")) > 0, `${what}: Retry-After`);
      assert.match(JSON.parse(text).message, /disk is full.*no space left/, what);
    };
    await full(await postCart(url, "next", doc("next")), "POST");
    assert.deepEqual(await cartStatus(url, "small"), [204, "ready", ""], "HEAD of a ready cart");
    const got = await fetch(url + "small");
    assert.equal(got.status, 200, "GET of a ready cart");
    assert.ok((await got.arrayBuffer()).byteLength > 64 * KiB);
    assert.equal((await cartStatus(url, "next"))[0], 404, "the refused cart was not stored");
    // A DELETE frees space: with the database on the full volume, the cart's folder goes
    // first, then its rows (issue 18 item 5), so it succeeds where a write alone could not.
    const deleted = await fetch(url + "small", { method: "DELETE" });
    assert.equal(deleted.status, 200, `DELETE: ${await deleted.text()}`);
    assert.equal((await cartStatus(url, "small"))[0], 404, "the deleted cart is gone");
    assert.doesNotMatch(cartd.output(), /Internal error|request failed|cannot rollback/);

    // Room again: every route works.
    await Deno.remove(filler);
    assert.equal((await postCart(url, "next", doc("next"))).status, 201);
    assert.deepEqual(await waitFor(url, "next", "ready"), [204, "ready", ""]);
    await cartd.stop();
  } finally {
    await umount(volume);
    await Deno.remove(volume, { recursive: true });
  }
});
