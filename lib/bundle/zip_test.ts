import assert from "node:assert/strict";
import { crc32 } from "node:zlib";
import {
  dosDateTime,
  encodeZipCentralHeader,
  encodeZipEnd,
  encodeZipLocalHeader,
  zipCentralHeaderLength,
  zipEndLength,
  type ZipEntry,
  zipLocalHeaderLength,
} from "./zip.ts";
import { run } from "../../tests/support/run.ts";

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
const MTIME = Date.UTC(2024, 0, 2, 3, 4, 6) / 1000;

function entry(name: string, size = 3, extra: Partial<ZipEntry> = {}): ZipEntry {
  return { name, type: "file", size, crc32: 0x12345678, mtime: MTIME, ...extra };
}

/** Runs a tool; `out` is its stdout then its stderr, `code` -1 when it is not installed. */
async function tool(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await run(cmd, args, { ifMissing: "code" });
  return { code: r.code, out: r.stdout + r.stderr };
}

Deno.test("zip: DOS date and time in UTC, clamped to the DOS range", () => {
  assert.deepEqual(dosDateTime(MTIME), [0x1883, 0x5822]);
  assert.deepEqual(dosDateTime(0), [0, 0x21]); // before 1980: 1980-01-01 00:00:00
  assert.deepEqual(dosDateTime(Date.UTC(2200, 0, 1) / 1000), [0xbf7d, 0xff9f]);
});

Deno.test("zip: local header fields", () => {
  const h = encodeZipLocalHeader(entry("top/é.txt"));
  const v = view(h);
  const name = new TextEncoder().encode("top/é.txt");
  assert.equal(h.length, 30 + name.length + 9);
  assert.equal(h.length, zipLocalHeaderLength(entry("top/é.txt")));
  assert.equal(v.getUint32(0, true), 0x04034b50);
  assert.equal(v.getUint16(4, true), 10); // version needed 1.0
  assert.equal(v.getUint16(6, true), 0x0800); // UTF-8 names
  assert.equal(v.getUint16(8, true), 0); // stored
  assert.equal(v.getUint16(10, true), 0x1883);
  assert.equal(v.getUint16(12, true), 0x5822);
  assert.equal(v.getUint32(14, true), 0x12345678);
  assert.equal(v.getUint32(18, true), 3);
  assert.equal(v.getUint32(22, true), 3);
  assert.equal(v.getUint16(26, true), name.length);
  assert.equal(v.getUint16(28, true), 9);
  assert.deepEqual(h.subarray(30, 30 + name.length), name);
  const ut = 30 + name.length;
  assert.equal(v.getUint16(ut, true), 0x5455);
  assert.equal(v.getUint32(ut + 5, true), MTIME);
});

Deno.test("zip: a file of 4 GiB or more gets zip64 sizes in local and central headers", () => {
  const size = 2 ** 32 + 7;
  const e = entry("big", size);
  const local = encodeZipLocalHeader(e);
  const lv = view(local);
  assert.equal(local.length, zipLocalHeaderLength(e));
  assert.equal(lv.getUint16(4, true), 45);
  assert.equal(lv.getUint32(18, true), 0xffffffff);
  assert.equal(lv.getUint32(22, true), 0xffffffff);
  assert.equal(lv.getUint16(33, true), 0x0001);
  assert.equal(lv.getUint16(35, true), 16);
  assert.equal(lv.getBigUint64(37, true), BigInt(size));
  assert.equal(lv.getBigUint64(45, true), BigInt(size));

  const central = encodeZipCentralHeader(e, 0);
  const cv = view(central);
  assert.equal(central.length, zipCentralHeaderLength(e, 0));
  assert.equal(cv.getUint16(6, true), 45);
  assert.equal(cv.getUint32(20, true), 0xffffffff);
  assert.equal(cv.getUint32(42, true), 0); // offset fits: not in the extra
  assert.equal(cv.getUint16(49, true), 0x0001);
  assert.equal(cv.getUint16(51, true), 16);
  assert.equal(cv.getBigUint64(53, true), BigInt(size));
});

Deno.test("zip: an offset of 4 GiB or more goes into the central zip64 extra only", () => {
  const offset = 2 ** 32 + 99;
  const e = entry("late");
  assert.equal(zipLocalHeaderLength(e), 30 + 4 + 9);
  const central = encodeZipCentralHeader(e, offset);
  const v = view(central);
  assert.equal(central.length, zipCentralHeaderLength(e, offset));
  assert.equal(v.getUint32(20, true), 3); // sizes fit
  assert.equal(v.getUint32(42, true), 0xffffffff);
  assert.equal(v.getUint16(50, true), 0x0001);
  assert.equal(v.getUint16(52, true), 8);
  assert.equal(v.getBigUint64(54, true), BigInt(offset));
  // 0xFFFFFFFF itself is the "see zip64" marker, so it needs zip64 too.
  assert.equal(zipCentralHeaderLength(e, 0xffffffff), 46 + 4 + 12 + 9);
  assert.equal(zipCentralHeaderLength(e, 0xfffffffe), 46 + 4 + 9);
});

Deno.test("zip: directory entries have a trailing slash, no CRC and the directory bits", () => {
  const e: ZipEntry = { name: "top/a", type: "dir", size: 0, crc32: 9, mtime: MTIME };
  const c = encodeZipCentralHeader(e, 10);
  const v = view(c);
  assert.equal(new TextDecoder().decode(c.subarray(46, 46 + 6)), "top/a/");
  assert.equal(v.getUint32(16, true), 0);
  assert.equal(v.getUint32(38, true), ((0o40755 << 16) | 0x10) >>> 0);
});

Deno.test("zip: end record, with zip64 record and locator only when needed", () => {
  const small = encodeZipEnd({ entries: 3, centralOffset: 100, centralSize: 200 });
  assert.equal(small.length, 22);
  assert.equal(zipEndLength({ entries: 3, centralOffset: 100, centralSize: 200 }), 22);
  const sv = view(small);
  assert.equal(sv.getUint32(0, true), 0x06054b50);
  assert.equal(sv.getUint16(10, true), 3);
  assert.equal(sv.getUint32(12, true), 200);
  assert.equal(sv.getUint32(16, true), 100);

  const end = { entries: 0x10000, centralOffset: 2 ** 33, centralSize: 500 };
  const big = encodeZipEnd(end);
  assert.equal(big.length, zipEndLength(end));
  assert.equal(big.length, 98);
  const v = view(big);
  assert.equal(v.getUint32(0, true), 0x06064b50);
  assert.equal(v.getBigUint64(4, true), 44n);
  assert.equal(v.getBigUint64(32, true), 0x10000n);
  assert.equal(v.getBigUint64(40, true), 500n);
  assert.equal(v.getBigUint64(48, true), BigInt(2 ** 33));
  assert.equal(v.getUint32(56, true), 0x07064b50);
  assert.equal(v.getBigUint64(64, true), BigInt(2 ** 33 + 500));
  assert.equal(v.getUint32(72, true), 1);
  assert.equal(v.getUint32(76, true), 0x06054b50);
  assert.equal(v.getUint16(86, true), 0xffff);
  assert.equal(v.getUint32(88, true), 500);
  assert.equal(v.getUint32(92, true), 0xffffffff);
  assert.equal(zipEndLength({ entries: 0xfffe, centralOffset: 0, centralSize: 0 }), 22);
  assert.equal(zipEndLength({ entries: 0xffff, centralOffset: 0, centralSize: 0 }), 98);
});

Deno.test("zip: invalid input is refused with a message naming it", () => {
  assert.throws(() => encodeZipLocalHeader(entry("")), /name is empty/);
  assert.throws(() => encodeZipLocalHeader(entry("a", -1)), /Zip entry "a" has size -1/);
  assert.throws(() => encodeZipCentralHeader(entry("a"), -2), /offset -2/);
  assert.throws(() => encodeZipEnd({ entries: 1.5, centralOffset: 0, centralSize: 0 }), /entries/);
});

/** Builds a whole archive in memory from the pure functions. */
function buildZip(files: { name: string; data: Uint8Array }[]): Uint8Array {
  const parts: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let at = 0;
  for (const f of files) {
    const e = entry(f.name, f.data.length, { crc32: crc32(f.data) >>> 0 });
    const local = encodeZipLocalHeader(e);
    centrals.push(encodeZipCentralHeader(e, at));
    parts.push(local, f.data);
    at += local.length + f.data.length;
  }
  const centralSize = centrals.reduce((n, c) => n + c.length, 0);
  parts.push(...centrals, encodeZipEnd({ entries: files.length, centralOffset: at, centralSize }));
  const out = new Uint8Array(at + centralSize + parts[parts.length - 1].length);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const PY_CHECK = `
import sys, zipfile, warnings
warnings.simplefilter("error")
with zipfile.ZipFile(sys.argv[1]) as z:
    bad = z.testzip()
    assert bad is None, bad
    infos = z.infolist()
    print(len(infos))
    print(infos[-1].filename, z.read(infos[-1]).decode())
`;

Deno.test("zip: an archive of 65,537 entries (zip64 end) passes python, unzip and bsdtar", async () => {
  const files = Array.from({ length: 0x10001 }, (_, i) => ({
    name: `top/${i % 100}/f${i}.txt`,
    data: new TextEncoder().encode(`file ${i}\n`),
  }));
  files[0].name = "top/ü.txt"; // one UTF-8 name
  const zip = buildZip(files);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/many.zip`;
    await Deno.writeFile(path, zip);
    const py = await tool("python3", ["-c", PY_CHECK, path]);
    assert.equal(py.code, 0, py.out);
    assert.equal(py.out, `65537\ntop/36/f65536.txt file 65536\n\n`);
    const unzip = await tool("unzip", ["-tq", path]);
    if (unzip.code === -1) console.warn("skipping unzip check: unzip is not installed");
    else assert.match(unzip.out, /No errors detected/, unzip.out);
    const bsd = await tool("bsdtar", ["-tf", path]);
    if (bsd.code === -1) console.warn("skipping bsdtar check: bsdtar is not installed");
    else {
      assert.equal(bsd.code, 0, bsd.out.slice(0, 500));
      const names = bsd.out.trimEnd().split("\n");
      assert.equal(names.length, 0x10001);
      assert.equal(names[0], "top/ü.txt");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
