/**
 * The database gone, full or read-only (issue 18, items 4 and 5):
 *
 * - a lost SQLite file must not make the sweep delete every cart folder: it keeps them and
 *   says why and how to recover;
 * - a database that is full answers writes with 503 naming the cause, while HEAD and GET of a
 *   ready cart still answer (their record of the use is skipped, and logged);
 * - a database file, or its `-wal`/`-shm`, that cannot be written stops start-up with a
 *   message naming the file (an immutable `-shm` killed the process with SIGBUS before).
 *
 * The full database lives on a small tmpfs made by the test, and the read-only files are made
 * with `chattr +i`: both need root; where the machine refuses, those tests are skipped with a
 * message saying so.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startFakeArchive } from "../support/fake_archive.ts";
import { cartStatus, postCart, startCartd, waitFor } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";

const KiB = 1024;
const SQLITE = "cartd.sqlite3";

/** Runs a command; ok and its output. */
async function sh(cmd: string, ...args: string[]): Promise<{ ok: boolean; text: string }> {
  try {
    const r = await run(cmd, args);
    return { ok: r.code === 0, text: (r.stdout + r.stderr).trim() };
  } catch (e) {
    return { ok: false, text: e instanceof Error ? e.message : String(e) };
  }
}

/** Why this machine will not let a test mount a tmpfs or set the immutable flag, or null. */
const REFUSED: string | null = await (async () => {
  const probe = await Deno.makeTempDir({ prefix: "cartd-dbfaults-probe-" });
  try {
    const mounted = await sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe);
    if (!mounted.ok) return `mount: ${mounted.text}`;
    await Deno.writeTextFile(join(probe, "f"), "x");
    const immutable = await sh("chattr", "+i", join(probe, "f"));
    await sh("chattr", "-i", join(probe, "f"));
    await sh("umount", probe);
    return immutable.ok ? null : `chattr: ${immutable.text}`;
  } finally {
    await Deno.remove(probe, { recursive: true }).catch(() => {});
  }
})();
if (REFUSED !== null) {
  console.warn(`database_faults_test: some tests skipped, the machine refuses: ${REFUSED}`);
}
const privileged = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: REFUSED !== null, fn });

/** The cart folders on a volume. */
async function cartFolders(volume: string): Promise<string[]> {
  const found: string[] = [];
  for await (const e of Deno.readDir(join(volume, "carts"))) if (e.isDirectory) found.push(e.name);
  return found.sort();
}

/** Removes the SQLite file and its `-wal`/`-shm` (a lost database). */
async function loseDatabase(file: string): Promise<void> {
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    await Deno.remove(f).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }
}

/** Posts `uids` (one small file each) and waits until each is ready. */
async function readyCarts(url: string, uids: string[]): Promise<void> {
  for (const uid of uids) {
    assert.equal(
      (await postCart(url, uid, { fileids: [{ id: "f", path: `${uid}.txt` }] })).status,
      201,
    );
  }
  for (const uid of uids) assert.deepEqual(await waitFor(url, uid, "ready"), [204, "ready", ""]);
}

Deno.test("database faults: after the SQLite file is lost, the sweep keeps every cart folder and says why", async () => {
  await using fake = startFakeArchive();
  fake.put("f", { size: 4 * KiB });
  const volume = await Deno.makeTempDir({ prefix: "cartd-dbfaults-lost-" });
  try {
    // CARTD_CLAIM_TTL=2 (the harness's): a sweep every second.
    const env = { ARCHIVE_INTERFACE_URL: fake.url, CARTD_SWEEP_MAX_REMOVE: "2" };
    const first = await startCartd({ env, volume });
    await readyCarts(first.url, ["a", "b", "c"]);
    await first.stop();
    const before = await cartFolders(volume);
    assert.equal(before.length, 3);
    await loseDatabase(join(volume, SQLITE));

    await using second = await startCartd({ env, volume });
    // An empty database: no folder goes, whatever the limit.
    await eventually(
      "the sweep warns that the database has no carts",
      () => /keeps 3 cart folders .*no cart rows at all/.test(second.output()),
    );
    assert.deepEqual(await cartFolders(volume), before);
    // A cart posted since: the database has rows now, but three folders at once are above
    // CARTD_SWEEP_MAX_REMOVE=2.
    await readyCarts(second.url, ["d"]);
    await eventually(
      "the sweep warns about the limit",
      () => /keeps 3 cart folders .*CARTD_SWEEP_MAX_REMOVE \(2\)/.test(second.output()),
    );
    await new Promise((r) => setTimeout(r, 2_500)); // two more sweeps
    const after = await cartFolders(volume);
    for (const id of before) assert.ok(after.includes(id), `folder ${id} was removed`);
    assert.equal(after.length, 4);
    assert.match(second.output(), /restore it/, "the warning says how to recover");
    assert.match(second.output(), /by hand/);
    // The old carts are unknown to the new database: 404, not an error.
    assert.equal((await cartStatus(second.url, "a"))[0], 404);
  } finally {
    await Deno.remove(volume, { recursive: true });
  }
});

privileged(
  "database faults: a full database answers writes 503 naming the cause; HEAD and GET of a ready cart still answer",
  async () => {
    await using fake = startFakeArchive();
    fake.put("f", { size: 4 * KiB });
    fake.put("g", { size: 4 * KiB });
    const volume = await Deno.makeTempDir({ prefix: "cartd-dbfaults-full-" });
    // The database on a 1 MiB tmpfs of its own; the cart files on the real disk.
    const dbDir = join(volume, "db");
    await Deno.mkdir(dbDir);
    const mounted = await sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dbDir);
    assert.ok(mounted.ok, mounted.text);
    try {
      await using cartd = await startCartd({
        env: { ARCHIVE_INTERFACE_URL: fake.url, CARTD_SQLITE_PATH: join(dbDir, SQLITE) },
        volume,
      });
      const { url } = cartd;
      await readyCarts(url, ["ready"]);
      // Fill the database's file system.
      const filler = await Deno.open(join(dbDir, "filler"), { write: true, create: true });
      try {
        for (;;) await filler.write(new Uint8Array(4 * KiB));
      } catch (e) {
        assert.match(String(e), /No space left|os error 28/);
      } finally {
        filler.close();
      }

      const post = await postCart(url, "new", { fileids: [{ id: "g", path: "g.txt" }] });
      assert.equal(post.status, 503, await post.clone().text());
      assert.ok(Number(post.headers.get("retry-after")) > 0, "Retry-After is set");
      const { message } = await post.json();
      assert.match(message, /^The database cannot be written: database or disk is full/);
      // A DELETE cannot make room here (the cart's folder is on another file system): 503
      // naming the cause, and the cart is left whole.
      const folders = await cartFolders(volume);
      const deleted = await fetch(url + "ready", { method: "DELETE" });
      assert.equal(deleted.status, 503);
      assert.match((await deleted.json()).message, /database or disk is full/);
      assert.deepEqual(await cartFolders(volume), folders, "no folder removed");

      // Reads that record a use still answer; the use is skipped.
      assert.deepEqual(await cartStatus(url, "ready"), [204, "ready", ""]);
      const got = await fetch(url + "ready");
      assert.equal(got.status, 200);
      assert.ok((await got.arrayBuffer()).byteLength > 4 * KiB);
      assert.deepEqual(await cartStatus(url, "ready"), [204, "ready", ""]);

      const log = cartd.output();
      assert.match(log, /database or disk is full/, "the log names the real cause");
      assert.doesNotMatch(log, /cannot rollback/, "no rollback error masks it");
      const skipped = log.match(/a cart's use was not recorded/g) ?? [];
      assert.equal(skipped.length, 1, "a skipped use is logged once (then once a minute)");

      // Room again: writes work again.
      await Deno.remove(join(dbDir, "filler"));
      assert.equal(
        (await postCart(url, "new", { fileids: [{ id: "g", path: "g.txt" }] })).status,
        201,
      );
      assert.deepEqual(await waitFor(url, "new", "ready"), [204, "ready", ""]);
      await cartd.stop();
    } finally {
      await sh("umount", dbDir);
      await Deno.remove(volume, { recursive: true });
    }
  },
);

/** Sets or clears the immutable flag of `files`. */
async function immutable(on: boolean, ...files: string[]): Promise<void> {
  const r = await sh("chattr", on ? "+i" : "-i", ...files);
  assert.ok(r.ok, r.text);
}

privileged(
  "database faults: a database file that cannot be written stops start-up, naming the file",
  async () => {
    await using fake = startFakeArchive();
    fake.put("f", { size: 4 * KiB });
    const volume = await Deno.makeTempDir({ prefix: "cartd-dbfaults-ro-" });
    const file = join(volume, SQLITE);
    try {
      const env = { ARCHIVE_INTERFACE_URL: fake.url };
      const first = await startCartd({ env, volume });
      await readyCarts(first.url, ["a"]);
      await first.stop();

      await immutable(true, file);
      try {
        await assert.rejects(startCartd({ env, volume }), (e: Error) => {
          assert.match(e.message, /exited before it was ready/);
          assert.ok(
            e.message.includes(`The SQLite file ${file} cannot be opened for writing`),
            e.message,
          );
          return true;
        });
      } finally {
        await immutable(false, file);
      }
      // Writable again: it starts and serves the cart.
      await using again = await startCartd({ env, volume });
      assert.deepEqual(await cartStatus(again.url, "a"), [204, "ready", ""]);
    } finally {
      await Deno.remove(volume, { recursive: true });
    }
  },
);

privileged(
  "database faults: an immutable -wal or -shm stops start-up with a message naming it, not SIGBUS",
  async () => {
    await using fake = startFakeArchive();
    fake.put("f", { size: 4 * KiB });
    const volume = await Deno.makeTempDir({ prefix: "cartd-dbfaults-shm-" });
    const file = join(volume, SQLITE);
    try {
      const env = { ARCHIVE_INTERFACE_URL: fake.url };
      const first = await startCartd({ env, volume });
      await readyCarts(first.url, ["a"]);
      await first.kill(); // a crash leaves the -wal and -shm behind
      for (const side of [`${file}-shm`, `${file}-wal`]) {
        assert.ok((await Deno.stat(side)).isFile, `${side} is left by the crash`);
        await immutable(true, side);
        try {
          await assert.rejects(startCartd({ env, volume }), (e: Error) => {
            assert.ok(
              e.message.includes(`The SQLite file ${side} cannot be opened for writing`),
              e.message,
            );
            assert.match(e.message, /chattr -i/, "the message says what to do");
            return true;
          });
        } finally {
          await immutable(false, side);
        }
      }
      await using again = await startCartd({ env, volume });
      assert.deepEqual(await cartStatus(again.url, "a"), [204, "ready", ""]);
    } finally {
      await Deno.remove(volume, { recursive: true });
    }
  },
);

/** Fills the file system of `dir` to its last byte with a file `name`; returns its path. */
async function fill(dir: string, name = "filler"): Promise<string> {
  const path = join(dir, name);
  const filler = await Deno.open(path, { write: true, create: true });
  try {
    for (let block = 64 * KiB; block >= 1;) {
      try {
        await filler.write(new Uint8Array(block));
      } catch (e) {
        assert.match(String(e), /No space left|os error 28/);
        block >>= 1; // the last bytes, in smaller writes
      }
    }
  } finally {
    filler.close();
  }
  return path;
}

privileged(
  "database faults: DELETE on a 100 % full volume frees the cart's folder first and answers 200",
  async () => {
    await using fake = startFakeArchive();
    fake.put("big", { size: 512 * KiB });
    fake.put("f", { size: 4 * KiB });
    // The volume, the database and the cart folders on one 4 MiB tmpfs: cartd's default layout.
    const volume = await Deno.makeTempDir({ prefix: "cartd-dbfaults-delete-" });
    const mounted = await sh("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", volume);
    assert.ok(mounted.ok, mounted.text);
    try {
      await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: fake.url }, volume });
      const { url } = cartd;
      assert.equal(
        (await postCart(url, "big", { fileids: [{ id: "big", path: "b" }] })).status,
        201,
      );
      assert.deepEqual(await waitFor(url, "big", "ready"), [204, "ready", ""]);
      await readyCarts(url, ["small"]);
      await fill(volume);
      const post = await postCart(url, "new", { fileids: [{ id: "f", path: "f" }] });
      assert.equal(post.status, 503, "the volume is full: writes fail");
      await post.body?.cancel();

      const deleted = await fetch(url + "big", { method: "DELETE" });
      const text = await deleted.text();
      assert.equal(deleted.status, 200, text);
      assert.equal((await cartStatus(url, "big"))[0], 404, "the cart is gone");
      assert.equal((await cartFolders(volume)).length, 1, "its folder is gone");
      assert.deepEqual(await cartStatus(url, "small"), [204, "ready", ""], "the other stays");
      assert.match(cartd.output(), /cart removed .*uid=big/);
    } finally {
      await sh("umount", volume);
      await Deno.remove(volume, { recursive: true });
    }
  },
);
