import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import {
  type Bundle,
  type BundleFile,
  bundleFromFile,
  type BundleOptions,
  CHUNK_SIZE,
  FIRST_CHUNK_SIZE,
  planBundle,
  RAMP_BYTES,
} from "./plan.ts";
import { cartBundleOptions, planCartBundle, uidFolder } from "./cart_bundle.ts";
import { type StagedColumns, StagedFiles } from "./staged_files.ts";
import type { Cart } from "../store/store.ts";
import { Volume } from "../volume/volume.ts";
import { startFakeArchive } from "../../tests/support/fake_archive.ts";
import { listFiles, postCart, startCartd, waitFor } from "../../tests/support/harness.ts";
import { run } from "../../tests/support/run.ts";

const MTIME = 1700000000; // 2023-11-14
const decoder = new TextDecoder();

/** Runs a tool that must succeed with an empty stderr; false when it is not installed. */
async function clean(cmd: string, args: string[], cwd?: string): Promise<string | null> {
  const r = await run(cmd, args, { cwd, ifMissing: "code" });
  if (r.code === -1) {
    console.warn(`skipping ${cmd} check: ${cmd} is not installed`);
    return null;
  }
  assert.equal(r.code, 0, `${cmd} ${args.join(" ")} failed:\n${r.stderr}`);
  assert.equal(r.stderr, "", `${cmd} ${args.join(" ")} printed to stderr`);
  return r.stdout;
}

async function bytesOf(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

const LONG_PATH = "deep/" + "directory-level/".repeat(18) + "file-at-the-bottom.txt"; // 315 bytes

/** Staged test files: path → size. */
const CASES: [string, number][] = [
  ["1/2/3/foo.txt", 6],
  ["1/2/3/bar.bin", 512],
  ["1/2/baz.bin", CHUNK_SIZE * 2 + 77], // spans chunks
  ["é/ü 日本.txt", 1000],
  [LONG_PATH, 513],
  ["empty", 0],
  ["back\\slash %41.txt", 33],
];

async function stage(dir: string, cases = CASES): Promise<BundleFile[]> {
  const files: BundleFile[] = [];
  for (const [i, [path, size]] of cases.entries()) {
    const data = pattern(size, i + 1);
    const source = `${dir}/staged-${i}`;
    await Deno.writeFile(source, data);
    files.push({
      path,
      size,
      mtime: MTIME + i * 100 + 0.75,
      source,
      sha256: createHash("sha256").update(data).digest("hex"),
      crc32: crc32(data) >>> 0,
    });
  }
  return files;
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "bundle_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function writeBundle(bundle: Bundle, path: string): Promise<Uint8Array> {
  const bytes = await bytesOf(bundle.stream());
  assert.equal(bytes.length, bundle.size, "stream length equals the planned size");
  await Deno.writeFile(path, bytes);
  return bytes;
}

/** Checks that `root/<prefix><path>` holds each file's bytes (and, if asked, its mtime). */
async function compareTree(root: string, files: BundleFile[], prefix: string, mtime: boolean) {
  for (const f of files) {
    const got = await Deno.readFile(`${root}/${prefix}${f.path}`);
    assert.deepEqual(got, await Deno.readFile(f.source), `content of ${f.path}`);
    if (mtime) {
      const stat = await Deno.stat(`${root}/${prefix}${f.path}`);
      assert.equal(stat.mtime!.getTime(), Math.floor(f.mtime) * 1000, `mtime of ${f.path}`);
    }
  }
}

const options = (over: Partial<BundleOptions> = {}): BundleOptions => ({
  top: "data_2023",
  format: "tar",
  manifest: false,
  mtime: MTIME + 5000,
  ...over,
});

const PY_TAR = `
import sys, tarfile, warnings
warnings.simplefilter("error")
with tarfile.open(sys.argv[1]) as t:
    members = t.getmembers()
    t.extractall(sys.argv[2], filter="data")
for m in members:
    print(m.type.decode(), oct(m.mode), m.size, m.mtime, m.name, sep="\\t")
`;

Deno.test("bundle: tar read by GNU tar, Python tarfile and bsdtar without warnings", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir);
    const bundle = planBundle(files, options());
    const tarPath = `${dir}/out.tar`;
    const bytes = await writeBundle(bundle, tarPath);
    assert.deepEqual(bytes.subarray(bytes.length - 1024), new Uint8Array(1024));

    const listing = await clean("tar", ["-tf", tarPath]);
    assert.ok(listing !== null, "GNU tar is required");
    assert.deepEqual(listing.trimEnd().split("\n"), [
      "data_2023/",
      "data_2023/1/",
      "data_2023/1/2/",
      "data_2023/1/2/3/",
      "data_2023/1/2/3/foo.txt",
      "data_2023/1/2/3/bar.bin",
      "data_2023/1/2/baz.bin",
      "data_2023/é/",
      "data_2023/é/ü 日本.txt",
      ...LONG_PATH.split("/").slice(0, -1).map((_, i, a) =>
        `data_2023/${a.slice(0, i + 1).join("/")}/`
      ),
      `data_2023/${LONG_PATH}`,
      "data_2023/empty",
      "data_2023/back\\\\slash %41.txt", // GNU tar escapes the backslash when listing
    ]);
    const verbose = await clean("tar", ["-tvf", tarPath]);
    assert.match(verbose!, /^drwxr-xr-x 0\/0 +0 2023-11-1\d \d\d:\d\d data_2023\/$/m);
    assert.match(verbose!, /^-rw-r--r-- 0\/0 +2097229 .* data_2023\/1\/2\/baz\.bin$/m);

    await Deno.mkdir(`${dir}/gnu`);
    await clean("tar", ["-xf", tarPath, "-C", `${dir}/gnu`]);
    await compareTree(`${dir}/gnu`, files, "data_2023/", true);

    const py = await clean("python3", ["-c", PY_TAR, tarPath, `${dir}/py`]);
    if (py !== null) {
      const rows = py.trimEnd().split("\n").map((l) => l.split("\t"));
      assert.deepEqual(rows[0], ["5", "0o755", "0", String(MTIME + 5000), "data_2023"]);
      const foo = rows.find((r) => r[4] === "data_2023/1/2/3/foo.txt");
      assert.deepEqual(foo, ["0", "0o644", "6", String(MTIME), "data_2023/1/2/3/foo.txt"]);
      await compareTree(`${dir}/py`, files, "data_2023/", true);
    }

    await Deno.mkdir(`${dir}/bsd`);
    if (await clean("bsdtar", ["-xf", tarPath, "-C", `${dir}/bsd`]) !== null) {
      await compareTree(`${dir}/bsd`, files, "data_2023/", true);
    }
  });
});

const PY_ZIP = `
import sys, zipfile, warnings
warnings.simplefilter("error")
with zipfile.ZipFile(sys.argv[1]) as z:
    assert z.testzip() is None
    z.extractall(sys.argv[2])
    for i in z.infolist():
        print(i.filename, i.file_size, i.date_time, sep="\\t")
`;

Deno.test("bundle: zip read by Python zipfile, unzip and bsdtar", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir);
    const bundle = planBundle(files, options({ format: "zip", top: "z" }));
    const zipPath = `${dir}/out.zip`;
    await writeBundle(bundle, zipPath);

    const zt = await clean("python3", ["-m", "zipfile", "-t", zipPath]);
    if (zt !== null) assert.match(zt, /Done testing/);
    const py = await clean("python3", ["-c", PY_ZIP, zipPath, `${dir}/py`]);
    if (py !== null) {
      const names = py.trimEnd().split("\n").map((l) => l.split("\t")[0]);
      assert.equal(names[0], "z/");
      assert.ok(names.includes("z/é/ü 日本.txt"));
      assert.ok(names.includes(`z/${LONG_PATH}`));
      await compareTree(`${dir}/py`, files, "z/", false);
    }
    const unzip = await run("unzip", ["-t", zipPath], { ifMissing: "code" });
    if (unzip.code === -1) console.warn("skipping unzip check: unzip is not installed");
    else {
      assert.equal(unzip.code, 0, unzip.stdout + unzip.stderr);
      assert.match(unzip.stdout, /No errors detected/);
    }
    await Deno.mkdir(`${dir}/bsd`);
    if (await clean("bsdtar", ["-xf", zipPath, "-C", `${dir}/bsd`]) !== null) {
      await compareTree(`${dir}/bsd`, files, "z/", true); // bsdtar reads the UT mtime
    }
  });
});

Deno.test("bundle: manifest bags validate with sha256sum -c (tar and zip)", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir);
    for (const format of ["tar", "zip"] as const) {
      const bundle = planBundle(files, options({ format, manifest: true, top: "bag" }));
      const path = `${dir}/bag.${format}`;
      await writeBundle(bundle, path);
      const out = `${dir}/x-${format}`;
      await Deno.mkdir(out);
      if (format === "tar") await clean("tar", ["-xf", path, "-C", out]);
      else if (await clean("bsdtar", ["-xf", path, "-C", out]) === null) continue;
      await compareTree(out, files, "bag/data/", false);
      const check = await clean("sha256sum", ["-c", "manifest-sha256.txt"], `${out}/bag`);
      assert.equal(check!.trimEnd().split("\n").length, files.length);
      assert.equal(
        await Deno.readTextFile(`${out}/bag/bagit.txt`),
        "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
      );
      const total = files.reduce((n, f) => n + f.size, 0);
      assert.match(
        await Deno.readTextFile(`${out}/bag/bag-info.txt`),
        new RegExp(`^Bagging-Date: 2023-11-14\nPayload-Oxum: ${total}\\.${files.length}\n`),
      );
    }
    // A tampered file makes sha256sum -c fail: the check above can fail.
    const out = `${dir}/x-tar`;
    await Deno.writeTextFile(`${out}/bag/data/1/2/3/foo.txt`, "tampered");
    const bad = await run("sha256sum", ["-c", "manifest-sha256.txt"], {
      cwd: `${out}/bag`,
      ifMissing: "code",
    });
    assert.notEqual(bad.code, 0);
  });
});

Deno.test("bundle: random ranges equal the same slice of the whole body", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir);
    for (const format of ["tar", "zip"] as const) {
      for (const manifest of [false, true]) {
        const bundle = planBundle(files, options({ format, manifest }));
        const whole = await bytesOf(bundle.stream());
        let seed = 7;
        const rand = (n: number) => {
          seed = (seed * 1103515245 + 12345) % 2147483648;
          return seed % n;
        };
        const ranges: [number, number][] = [[0, 0], [0, whole.length - 1], [
          whole.length - 1,
          whole.length - 1,
        ]];
        for (let i = 0; i < 40; i++) {
          const start = rand(whole.length);
          const length = i % 2 ? rand(600) : rand(CHUNK_SIZE * 3);
          ranges.push([start, Math.min(whole.length - 1, start + length)]);
        }
        for (const [start, end] of ranges) {
          const part = await bytesOf(bundle.stream(start, end));
          assert.equal(part.length, end - start + 1, `${format} ${start}-${end} length`);
          assert.ok(
            part.every((b, i) => b === whole[start + i]),
            `${format} manifest=${manifest} bytes ${start}-${end} differ`,
          );
        }
      }
    }
  });
});

Deno.test("bundle: bundleFromFile serves a written tar, ranges included", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir);
    const planned = planBundle(files, options());
    const path = `${dir}/cart.tar`;
    const file = await Deno.create(path);
    await planned.stream().pipeTo(file.writable);
    const fromFile = bundleFromFile(path, planned.size, planned.etag);
    assert.equal(fromFile.size, planned.size);
    assert.equal(fromFile.etag, planned.etag);
    const whole = await bytesOf(planned.stream());
    assert.deepEqual(await bytesOf(fromFile.stream()), whole);
    for (
      const [start, end] of [[0, 511], [1000, CHUNK_SIZE + 5000], [
        whole.length - 3,
        whole.length - 1,
      ]]
    ) {
      assert.deepEqual(await bytesOf(fromFile.stream(start, end)), whole.subarray(start, end + 1));
    }
    // A tar on disk of the wrong length is an error that names it.
    const wrong = bundleFromFile(path, planned.size + 512, planned.etag);
    await assert.rejects(
      bytesOf(wrong.stream()),
      /the bundle.*has \d+ bytes but \d+ were recorded/,
    );
  });
});

Deno.test("bundle: chunks are 64 KiB for the first 8 MiB, then 1 MiB; only the needed file regions are read", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir, [...CASES, ["big.bin", RAMP_BYTES + CHUNK_SIZE * 2 + 5]]);
    const bundle = planBundle(files, options());
    const sizes: number[] = [];
    const reader = bundle.stream().getReader();
    for (let r = await reader.read(); !r.done; r = await reader.read()) sizes.push(r.value.length);
    let offset = 0;
    for (const [i, n] of sizes.slice(0, -1).entries()) {
      const want = offset < RAMP_BYTES ? FIRST_CHUNK_SIZE : CHUNK_SIZE;
      assert.equal(n, want, `chunk ${i} at byte ${offset}: sizes ${sizes}`);
      offset += n;
    }
    assert.ok(bundle.size > RAMP_BYTES, "the bundle reaches the 1 MiB chunks");

    // Remove every source but baz.bin: a range inside baz.bin's data must still stream.
    const whole = await bytesOf(bundle.stream());
    const baz = files[2];
    const bazData = await Deno.readFile(baz.source);
    const at = indexOf(whole, bazData.subarray(0, 64));
    assert.ok(at > 0);
    for (const f of files) if (f !== baz) await Deno.remove(f.source);
    const part = await bytesOf(bundle.stream(at + 10, at + baz.size - 1));
    assert.deepEqual(part, bazData.subarray(10));
    // … while the whole body now fails, naming a missing file (small files are read in
    // parallel, so which one is reported first may vary).
    await assert.rejects(
      bytesOf(bundle.stream()),
      /Cannot read "data_2023\/[^"]+" from .*staged-[013456]: the file is missing/,
    );
  });
});

Deno.test("bundle: lent chunks are the given bytes, in four buffers, two chunks in a row never one", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir, [...CASES, ["big.bin", RAMP_BYTES + CHUNK_SIZE * 3 + 5]]);
    for (const format of ["tar", "zip"] as const) {
      const bundle = planBundle(files, options({ format, manifest: true }));
      for (const [start, end] of [[0, bundle.size - 1], [700, bundle.size - 2]]) {
        const given = await bytesOf(bundle.stream(start, end));
        const reader = bundle.stream(start, end, undefined, { lend: true }).getReader();
        const copies: Uint8Array<ArrayBuffer>[] = [];
        const buffers = new Set<ArrayBufferLike>();
        let last: ArrayBufferLike | null = null;
        for (let r = await reader.read(); !r.done; r = await reader.read()) {
          // The consumer is done with a lent chunk before it reads the next one.
          copies.push(new Uint8Array(r.value));
          assert.notEqual(r.value.buffer, last, "two chunks in a row share a buffer");
          last = r.value.buffer;
          buffers.add(r.value.buffer);
        }
        assert.deepEqual(new Uint8Array(await new Blob(copies).arrayBuffer()), given);
        assert.ok(buffers.size <= 4, `${buffers.size} buffers for ${copies.length} chunks`);
      }
    }
  });
});

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

Deno.test("bundle: a short or changed source file errors naming the file", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir);
    await Deno.truncate(files[1].source, 100);
    const bundle = planBundle(files, options());
    await assert.rejects(
      bytesOf(bundle.stream()),
      /Cannot read "data_2023\/1\/2\/3\/bar\.bin" .*: it has 100 bytes but 512 were recorded \(the file is shorter\)/,
    );
  });
});

Deno.test("bundle: abort signal errors the stream with its reason", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir);
    const bundle = planBundle(files, options());
    const controller = new AbortController();
    const reader = bundle.stream(0, bundle.size - 1, controller.signal).getReader();
    await reader.read();
    controller.abort(new Error("client went away"));
    await assert.rejects(async () => {
      while (!(await reader.read()).done) { /* drain */ }
    }, /client went away/);
    const aborted = AbortSignal.abort(new Error("already gone"));
    assert.throws(() => bundle.stream(0, 10, aborted), /already gone/);
  });
});

Deno.test("bundle: ranges outside the bundle are refused", () => {
  const bundle = planBundle([], options());
  assert.equal(bundle.size, 1536); // TOP/ and the two end blocks
  assert.throws(() => bundle.stream(0, bundle.size), /range 0-1536 is outside the 1536 bytes/);
  assert.throws(() => bundle.stream(-1, 5), RangeError);
  assert.throws(() => bundle.stream(10, 5), RangeError);
  assert.throws(() => bundle.stream(0.5, 5), RangeError);
});

Deno.test("bundle: the ETag depends on everything that determines the bytes", () => {
  const file: BundleFile = {
    path: "a/b.txt",
    size: 6,
    mtime: MTIME,
    source: "/nonexistent/0",
    sha256: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
    crc32: 0x363a3020,
  };
  const base = planBundle([file], options()).etag;
  assert.match(base, /^"[0-9a-f]{40}"$/);
  assert.equal(planBundle([{ ...file, source: "/elsewhere" }], options()).etag, base);
  // Without a manifest no byte depends on the SHA-256, and no tar byte on the CRC-32 (staging
  // may not have measured them, and measuring them later must not change the tar's ETag).
  assert.equal(planBundle([{ ...file, sha256: "0".repeat(64) }], options()).etag, base);
  assert.equal(planBundle([{ ...file, crc32: 1 }], options()).etag, base);
  const zip = planBundle([file], options({ format: "zip" })).etag;
  const variants = [
    planBundle([{ ...file, path: "a/c.txt" }], options()),
    planBundle([{ ...file, size: 7 }], options()),
    planBundle([{ ...file, mtime: MTIME + 1 }], options()),
    planBundle([{ ...file, sha256: "0".repeat(64) }], options({ manifest: true })),
    planBundle([{ ...file, crc32: 1 }], options({ format: "zip" })),
    planBundle([file], options({ format: "zip" })),
    planBundle([file], options({ top: "other" })),
    planBundle([file], options({ manifest: true })),
    planBundle([file], options({ mtime: MTIME + 1 })),
  ].map((b) => b.etag);
  assert.equal(new Set([base, ...variants]).size, variants.length + 1);
  assert.ok(variants.includes(zip));
});

Deno.test("bundle: invalid plans are refused with a message naming the problem", () => {
  const file: BundleFile = {
    path: "a/b.txt",
    size: 1,
    mtime: MTIME,
    source: "/x",
    sha256: "0".repeat(64),
    crc32: 0,
  };
  assert.throws(() => planBundle([file], options({ top: "a/b" })), /top directory "a\/b"/);
  assert.throws(() => planBundle([{ ...file, path: "/a" }], options()), /Bundle file 0 \("\/a"\)/);
  assert.throws(() => planBundle([{ ...file, path: "a/../b" }], options()), /"\.\."/);
  assert.throws(
    () => planBundle([{ ...file, sha256: "ABC" }], options({ manifest: true })),
    /sha256 "ABC"/,
  );
  assert.throws(() => planBundle([file, file], options()), /Bundle file 1 .* collides/);
  assert.throws(
    () => planBundle([file, { ...file, path: "a/b.txt/c" }], options()),
    /needs "a\/b.txt" as a directory/,
  );
});

Deno.test("bundle: 8 GiB+ file has a pax size header; tools list the sparse archive", async () => {
  await withTemp(async (dir) => {
    const big = 8 * 2 ** 30 + 5; // ≥ 8589934592: ustar's 11 octal digits cannot hold it
    const source = `${dir}/big`;
    await Deno.writeFile(`${dir}/small`, new TextEncoder().encode("tail\n"));
    const f = await Deno.create(source);
    await f.truncate(big); // sparse: all zeros, no disk space used
    f.close();
    const files: BundleFile[] = [
      { path: "big.bin", size: big, mtime: MTIME, source, sha256: "0".repeat(64), crc32: 0 },
      {
        path: "small.txt",
        size: 5,
        mtime: MTIME,
        source: `${dir}/small`,
        sha256: "0".repeat(64),
        crc32: 0,
      },
    ];
    const bundle = planBundle(files, options({ top: "t" }));
    // The big entry's header starts after "t/" (one block).
    const header = await bytesOf(bundle.stream(512, 512 + 3 * 512 - 1));
    assert.equal(String.fromCharCode(header[156]), "x");
    const paxLength = parseInt(decoder.decode(header.subarray(124, 135)), 8);
    const pax = decoder.decode(header.subarray(512, 512 + paxLength));
    assert.equal(pax, `19 size=${big}\n`); // 19 bytes, the length included
    const ustar = header.subarray(1024, 1536);
    assert.equal(decoder.decode(ustar.subarray(0, 9)), "t/big.bin");
    assert.equal(decoder.decode(ustar.subarray(124, 136)), "00000000000\0");
    assert.equal(String.fromCharCode(ustar[156]), "0");

    // Write a sparse copy: the header and everything after the big file's data. The hole in
    // between is exactly the (zero) data, so this is the whole archive.
    const dataEnd = 512 + 1536 + big + (512 - (big % 512));
    const tarPath = `${dir}/big.tar`;
    const out = await Deno.create(tarPath);
    await out.write(await bytesOf(bundle.stream(0, 2047)));
    await out.seek(dataEnd, Deno.SeekMode.Start);
    await out.write(await bytesOf(bundle.stream(dataEnd, bundle.size - 1)));
    out.close();
    assert.equal((await Deno.stat(tarPath)).size, bundle.size);

    const gnu = await clean("tar", ["-tvf", tarPath]);
    assert.match(gnu!, new RegExp(`^-rw-r--r-- 0/0 +${big} .* t/big\\.bin$`, "m"));
    assert.match(gnu!, /t\/small\.txt$/m);
    const py = await clean("python3", [
      "-c",
      "import sys,tarfile,warnings; warnings.simplefilter('error')\n" +
      "with tarfile.open(sys.argv[1]) as t:\n" +
      " print([(m.name, m.size) for m in t]); print(t.extractfile('t/small.txt').read())",
      tarPath,
    ]);
    if (py !== null) {
      assert.equal(
        py,
        `[('t', 0), ('t/big.bin', ${big}), ('t/small.txt', 5)]\nb'tail\\n'\n`,
      );
    }
    const bsd = await clean("bsdtar", ["-tvf", tarPath]);
    if (bsd !== null) assert.match(bsd, new RegExp(` ${big} .* t/big\\.bin$`, "m"));
  });
});

Deno.test("bundle: zip of a 4 GiB+ file uses zip64; tools read the sparse archive", async () => {
  await withTemp(async (dir) => {
    const big = 2 ** 32 + 1000;
    const source = `${dir}/big`;
    const f = await Deno.create(source);
    await f.truncate(big);
    f.close();
    const tail = new TextEncoder().encode("after the big one\n");
    await Deno.writeFile(`${dir}/small`, tail);
    const files: BundleFile[] = [
      // The big file's CRC is not needed to list it or to read the small file after it.
      { path: "big.bin", size: big, mtime: MTIME, source, sha256: "0".repeat(64), crc32: 0 },
      {
        path: "small.txt",
        size: tail.length,
        mtime: MTIME,
        source: `${dir}/small`,
        sha256: "0".repeat(64),
        crc32: crc32(tail) >>> 0,
      },
    ];
    const bundle = planBundle(files, options({ top: "z", format: "zip" }));
    const bigData = 30 + 2 + 9 + 30 + 9 + 9 + 20; // "z/" local header, then big.bin's header
    assert.equal(bigData, 109);
    const zipPath = `${dir}/big.zip`;
    const out = await Deno.create(zipPath);
    await out.write(await bytesOf(bundle.stream(0, bigData - 1)));
    await out.seek(bigData + big, Deno.SeekMode.Start);
    await out.write(await bytesOf(bundle.stream(bigData + big, bundle.size - 1)));
    out.close();

    const py = await clean("python3", [
      "-c",
      "import sys,zipfile,warnings; warnings.simplefilter('error')\n" +
      "with zipfile.ZipFile(sys.argv[1]) as z:\n" +
      " print([(i.filename, i.file_size, i.header_offset) for i in z.infolist()])\n" +
      " print(z.read('z/small.txt'))",
      zipPath,
    ]);
    if (py !== null) {
      const offset = bigData + big;
      assert.equal(
        py,
        `[('z/', 0, 0), ('z/big.bin', ${big}, 41), ('z/small.txt', ${tail.length}, ${offset})]\n` +
          `b'after the big one\\n'\n`,
      );
    }
    const unzip = await run("unzip", ["-l", zipPath], { ifMissing: "code" });
    if (unzip.code === -1) console.warn("skipping unzip check: unzip is not installed");
    else {
      assert.equal(unzip.code, 0, unzip.stderr);
      assert.match(unzip.stdout, new RegExp(`^ *${big} .* z/big\\.bin$`, "m"));
    }
    const bsd = await clean("bsdtar", ["-tvf", zipPath]);
    if (bsd !== null) assert.match(bsd, new RegExp(` ${big} .* z/big\\.bin$`, "m"));
  });
});

// How fast a plan is made is a benchmark's figure (`deno task bench small100k` plans 100,000
// files), not this test's: here, only that a big plan is exact.
Deno.test("bundle: 40,000 files in 2,200 directories plan to the exact size", () => {
  const files: BundleFile[] = Array.from({ length: 40000 }, (_, i) => ({
    path: `${i % 200}/${Math.floor(i / 200) % 10}/file-${i}.dat`,
    size: i * 7,
    mtime: MTIME,
    source: `/staged/${i}`,
    sha256: "a".repeat(64),
    crc32: i,
  }));
  const tar = planBundle(files, options());
  const zip = planBundle(files, options({ format: "zip", manifest: true }));
  // tar: TOP + 200 + 2000 directories (one block each), each file's header + padded data, end.
  let expected = (1 + 200 + 2000) * 512 + 1024;
  for (const f of files) expected += 512 + Math.ceil(f.size / 512) * 512;
  assert.equal(tar.size, expected);
  assert.ok(zip.size > files.reduce((n, f) => n + f.size, 0));
});

Deno.test("bundle: a cart's files in columns (StagedFiles) give the same bytes as the list", async () => {
  await withTemp(async (dir) => {
    const volume = new Volume(dir);
    const cartId = crypto.randomUUID();
    await volume.prepare(cartId);
    const listed = await stage(dir);
    // The columns name each staged file by its document index, in a shuffled order of indexes.
    const idx = Uint32Array.from(listed.map((_, i) => 10 + 3 * (listed.length - i)));
    const moved = listed.map((f, i) => ({ ...f, source: volume.filePath(cartId, idx[i]) }));
    for (const [i, f] of listed.entries()) await Deno.rename(f.source, moved[i].source);
    const columns: StagedColumns = {
      volumeRoot: dir,
      cartId,
      length: listed.length,
      unstaged: [],
      paths: listed.map((f) => f.path),
      sha256: listed.map((f) => f.sha256),
      idx,
      sizes: Float64Array.from(listed.map((f) => f.size)),
      mtimes: Float64Array.from(listed.map((f) => f.mtime)),
      crc32: Float64Array.from(listed.map((f) => f.crc32)),
    };
    const table = new StagedFiles(structuredClone(columns)); // as a thread receives it
    assert.equal(table.length, listed.length);
    const two = table.at(2)!;
    const { path, size, mtime, source, sha256, crc32 } = two;
    assert.deepEqual({ path, size, mtime, source, sha256, crc32 }, moved[2]);
    assert.equal(table.at(listed.length), undefined);
    assert.equal(table.bytes, listed.reduce((sum, f) => sum + f.size, 0));
    for (const opts of [options(), options({ format: "zip" }), options({ manifest: true })]) {
      const a = planBundle(moved, opts);
      const b = planBundle(table, opts);
      assert.equal(b.etag, a.etag);
      assert.equal(b.size, a.size);
      assert.deepEqual(await bytesOf(b.stream()), await bytesOf(a.stream()));
    }
  });
});

/** A ready cart as the store describes it, for the layout tests. */
function readyCart(over: Partial<Cart> = {}): Cart {
  const at = Date.UTC(2024, 0, 2, 3, 4, 5);
  return {
    id: "00000000-0000-4000-8000-000000000001",
    uid: "cart-7",
    owner: "",
    status: "ready",
    message: "",
    documentHash: "",
    bundle: false,
    manifest: false,
    fileCount: 1,
    totalBytes: 6,
    reservedBytes: 6,
    createdAt: at - 1000,
    updatedAt: at,
    readyAt: at,
    lastUsedAt: at,
    claimOwner: null,
    claimExpires: null,
    attempts: 1,
    downloadSize: null,
    downloadEtag: null,
    stagedFiles: 1,
    stagedBytes: 6,
    errorFiles: 0,
    stagingAt: at - 500,
    webhook: null,
    ...over,
  };
}

Deno.test("uidFolder: an ordinary uid is its own folder; any other becomes one safe segment", () => {
  const cases: [uid: string, folder: string][] = [
    ["cart-7", "cart-7"],
    ["my.cart_1.tar", "my.cart_1.tar"],
    ["données 日本", "données 日本"],
    ["...", "..."],
    ["..x", "..x"],
    [".", "_"],
    ["..", "__"],
    ["../../etc", ".._.._etc"],
    ["/abs", "_abs"],
    ["a\\b", "a_b"],
    ["tab\there\nnl", "tab_here_nl"],
    ["nul\0", "nul_"],
    ["del\x7f c1\x85", "del_ c1_"],
  ];
  for (const [uid, folder] of cases) {
    assert.equal(uidFolder(uid), folder, JSON.stringify(uid));
    // Each is a top folder planBundle accepts (it refuses anything that is not one segment).
    planBundle([], options({ top: uidFolder(uid) }));
  }
  const longest = "é".repeat(127) + "x"; // 255 bytes, the longest uid
  assert.equal(new TextEncoder().encode(uidFolder(longest)).length, 255);
  assert.equal(uidFolder("\x85".repeat(127)), "_".repeat(127), "never longer than the uid");
});

Deno.test("cart layout: a bundle cart's top folder is its uid whatever the name; others use NAME", () => {
  const bundled = readyCart({ bundle: true, uid: "../up" });
  for (const format of ["tar", "zip"] as const) {
    for (const name of [undefined, "other.tar", "x.zip"]) {
      assert.equal(cartBundleOptions(bundled, { name, format }).top, ".._up", `${format} ${name}`);
    }
  }
  const plain = readyCart();
  assert.equal(cartBundleOptions(plain, { name: "other.tar", format: "tar" }).top, "other");
  assert.equal(cartBundleOptions(plain, { name: "other.zip", format: "zip" }).top, "other");
  assert.equal(cartBundleOptions(plain, { format: "tar" }).top, "data_2024_01_02_03_04_05");
  // The tar written at bundling time (no name) is the one any download name gets.
  const files: BundleFile[] = [];
  assert.equal(
    planCartBundle(bundled, files, { format: "tar" }).etag,
    planCartBundle(bundled, files, { name: "other.tar", format: "tar" }).etag,
  );
  assert.notEqual(
    planCartBundle(plain, files, { format: "tar" }).etag,
    planCartBundle(plain, files, { name: "other.tar", format: "tar" }).etag,
  );
});

Deno.test("bundle: a uid made a folder cannot put a member outside the extraction folder", async () => {
  await withTemp(async (dir) => {
    const files = await stage(dir, [["a/f.txt", 10]]);
    const top = uidFolder("../x\x01");
    const tarPath = `${dir}/out.tar`;
    await writeBundle(planBundle(files, options({ top })), tarPath);
    await Deno.mkdir(`${dir}/gnu/in`, { recursive: true });
    await clean("tar", ["-xf", tarPath, "-C", `${dir}/gnu/in`]);
    assert.deepEqual(await listFiles(`${dir}/gnu`), ["in/.._x_/a/f.txt"]);
    const py = await clean("python3", ["-c", PY_TAR, tarPath, `${dir}/py/in`]);
    if (py !== null) assert.deepEqual(await listFiles(`${dir}/py`), ["in/.._x_/a/f.txt"]);
    await Deno.mkdir(`${dir}/bsd/in`, { recursive: true });
    if (await clean("bsdtar", ["-xf", tarPath, "-C", `${dir}/bsd/in`]) !== null) {
      assert.deepEqual(await listFiles(`${dir}/bsd`), ["in/.._x_/a/f.txt"]);
    }
  });
});

/** Names of the members of a tar (GNU tar's listing). */
async function members(tarPath: string): Promise<string[]> {
  const listing = await clean("tar", ["-tf", tarPath]);
  assert.ok(listing !== null, "GNU tar is required");
  return listing.trimEnd().split("\n");
}

Deno.test('e2e: a "bundle": true cart downloaded as other.tar has its members under UID/; a streamed one under NAME/', async () => {
  await using archive = startFakeArchive();
  archive.put("a", "alpha\n");
  archive.put("b", { size: 70_000 });
  await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: archive.url } });
  const { url } = cartd;
  const fileids = [{ id: "a", path: "x/a.txt" }, { id: "b", path: "y/z/b.bin" }];
  // "ctl\x01.." as a URL segment: a uid with a control character and dots.
  const carts: [uid: string, bundle: boolean, top: string][] = [
    ["cart-7", true, "cart-7"],
    ["ctl\x01..", true, "ctl_.."],
    ["plain", false, "other"],
  ];
  for (const [uid, bundle] of carts) {
    const res = await postCart(url, uid, { fileids, bundle });
    assert.equal(res.status, 201, await res.text());
  }
  await withTemp(async (dir) => {
    for (const [uid, , top] of carts) {
      const [code, state, message] = await waitFor(url, uid, "ready");
      assert.equal(state, "ready", `${uid}: HEAD ${code} ${message}`);
      const res = await fetch(`${url}${encodeURIComponent(uid)}?filename=other.tar`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-disposition"), 'attachment; filename="other.tar"');
      const tarPath = `${dir}/${top}.tar`;
      await Deno.writeFile(tarPath, new Uint8Array(await res.arrayBuffer()));
      assert.deepEqual(await members(tarPath), [
        `${top}/`,
        `${top}/x/`,
        `${top}/x/a.txt`,
        `${top}/y/`,
        `${top}/y/z/`,
        `${top}/y/z/b.bin`,
      ]);
      const want = [`${top}/x/a.txt`, `${top}/y/z/b.bin`];
      const gnu = `${dir}/gnu-${top}`;
      await Deno.mkdir(gnu);
      await clean("tar", ["-xf", tarPath, "-C", gnu]);
      assert.deepEqual(await listFiles(gnu), want);
      assert.equal(await Deno.readTextFile(`${gnu}/${top}/x/a.txt`), "alpha\n");
      assert.deepEqual(await Deno.readFile(`${gnu}/${top}/y/z/b.bin`), await archive.bytes("b"));
      if (await clean("python3", ["-c", PY_TAR, tarPath, `${dir}/py-${top}`]) !== null) {
        assert.deepEqual(await listFiles(`${dir}/py-${top}`), want);
      }
      const bsd = `${dir}/bsd-${top}`;
      await Deno.mkdir(bsd);
      if (await clean("bsdtar", ["-xf", tarPath, "-C", bsd]) !== null) {
        assert.deepEqual(await listFiles(bsd), want);
      }
    }
    // The zip of a bundle cart has the same layout as its tar.
    const zip = await fetch(`${url}cart-7?filename=other.zip&format=zip`);
    assert.equal(zip.status, 200);
    const zipPath = `${dir}/cart-7.zip`;
    await Deno.writeFile(zipPath, new Uint8Array(await zip.arrayBuffer()));
    const bsd = `${dir}/bsd-zip`;
    await Deno.mkdir(bsd);
    if (await clean("bsdtar", ["-xf", zipPath, "-C", bsd]) !== null) {
      assert.deepEqual(await listFiles(bsd), ["cart-7/x/a.txt", "cart-7/y/z/b.bin"]);
    }
  });
});
