/**
 * {@linkcode StagedFiles} over a real SQLite store and real files: the sums that staging left
 * unmeasured (a big file piped to disk has no CRC-32, a cart without a manifest no SHA-256)
 * are measured from the staged bytes, recorded, and not read again.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { join } from "node:path";
import { openSqlite } from "../db/sqlite.ts";
import { syncSchema } from "../store/schema.ts";
import { CartStore } from "../store/store.ts";
import { Volume } from "../volume/volume.ts";
import { planBundle } from "./plan.ts";
import { StagedFiles } from "./staged_files.ts";
import { assertZipIntact } from "../../tests/support/zip_check.ts";

const MTIME = 1_700_000_000;

/** A cart of three staged files on a fresh volume: the first two without sums, the last with. */
async function setup() {
  const dir = await Deno.makeTempDir({ prefix: "cartd-staged-files-" });
  const db = openSqlite(join(dir, "cartd.sqlite3"));
  await syncSchema(db);
  const store = new CartStore(db);
  const volume = new Volume(join(dir, "volume"));
  const { cart } = await store.createCart("sums", {
    files: [0, 1, 2].map((i) => ({ id: `f${i}`, path: `d/${i}.bin` })),
    bundle: false,
    manifest: false,
  }, "hash");
  await volume.prepare(cart.id);
  const bytes = [0, 1, 2].map((i) => new Uint8Array(3000 + i).fill(7 + i));
  for (const [idx, b] of bytes.entries()) await Deno.writeFile(volume.filePath(cart.id, idx), b);
  const facts = (b: Uint8Array, measured: boolean) => ({
    size: b.length,
    mtime: MTIME,
    sha256: measured ? createHash("sha256").update(b).digest("hex") : null,
    crc32: measured ? crc32(b) >>> 0 : null,
  });
  await store.filesStaged(cart.id, [
    { idx: 0, facts: facts(bytes[0], false) },
    { idx: 1, facts: facts(bytes[1], false) },
    { idx: 2, facts: facts(bytes[2], true) },
  ]);
  return {
    store,
    volume,
    cart,
    bytes,
    async [Symbol.asyncDispose]() {
      await db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const options = (format: "tar" | "zip") => ({ top: "t", format, manifest: false, mtime: MTIME });

Deno.test("StagedFiles: a tar needs no CRC-32; a zip is refused until measure() has measured them", async () => {
  await using t = await setup();
  const files = await StagedFiles.load(t.store, t.cart, t.volume);
  assert.equal(files.length, 3);
  assert.equal(files.unmeasuredCrc32, 2);
  assert.equal(files.unmeasured, 2);
  const tar = planBundle(files, options("tar"));
  assert.throws(() => planBundle(files, options("zip")), /CRC-32 was not measured/);

  await files.measure(t.store, { crc32: true });
  assert.equal(files.unmeasuredCrc32, 0);
  assert.equal(files.unmeasured, 2, "only the CRC-32s were asked for");
  // Recorded: a fresh load has them, equal to the bytes' own.
  const again = await StagedFiles.load(t.store, t.cart, t.volume);
  assert.equal(again.unmeasuredCrc32, 0);
  for (const [i, b] of t.bytes.entries()) assert.equal(again.at(i)!.crc32, crc32(b) >>> 0);
  // The tar is the same bundle as before (its ETag does not name the CRC-32s)…
  assert.equal(planBundle(again, options("tar")).etag, tar.etag);
  // …and the zip carries them: Python's zipfile checks every member's CRC-32.
  const zip = planBundle(again, options("zip"));
  await assertZipIntact(zip.stream());
});

Deno.test("StagedFiles.measure reads only the files that lack what is asked, each once", async () => {
  await using t = await setup();
  const files = await StagedFiles.load(t.store, t.cart, t.volume);
  // The measured file is replaced by other bytes: were it read, its sums would change.
  await Deno.writeFile(t.volume.filePath(t.cart.id, 2), new Uint8Array(3002));
  await files.measure(t.store, { sha256: true, crc32: true });
  const again = await StagedFiles.load(t.store, t.cart, t.volume);
  for (const [i, b] of t.bytes.entries()) {
    assert.equal(again.at(i)!.crc32, crc32(b) >>> 0, `file ${i}`);
    assert.equal(again.at(i)!.sha256, createHash("sha256").update(b).digest("hex"), `file ${i}`);
  }
  // Nothing is left, so nothing is read: a file gone from disk does not matter now.
  await Deno.remove(t.volume.filePath(t.cart.id, 0));
  await again.measure(t.store, { sha256: true, crc32: true });
});

Deno.test("StagedFiles.measure: a second call for the cart while one runs waits for it and reads nothing again", async () => {
  await using t = await setup();
  const first = await StagedFiles.load(t.store, t.cart, t.volume);
  const second = await StagedFiles.load(t.store, t.cart, t.volume);
  const opened: string[] = [];
  const open = Deno.open;
  Deno.open = (path, options) => (opened.push(String(path)), open(path, options));
  try {
    await Promise.all([
      first.measure(t.store, { crc32: true }),
      second.measure(t.store, { crc32: true }),
    ]);
  } finally {
    Deno.open = open;
  }
  // The two files without a CRC-32, each read once.
  assert.deepEqual(opened.sort(), [0, 1].map((idx) => t.volume.filePath(t.cart.id, idx)));
  for (const files of [first, second]) {
    assert.equal(files.unmeasuredCrc32, 0);
    for (const [i, b] of t.bytes.entries()) assert.equal(files.at(i)!.crc32, crc32(b) >>> 0);
  }
});
