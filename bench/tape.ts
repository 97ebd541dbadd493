/**
 * The `tape` scenario group of the benchmarks (`deno task bench tape`, and the opt-in
 * `tape-big`): cartd against the fake archive with a tape library behind it
 * (tests/support/tape_library.ts), measuring the figures of issue 14 beside their targets.
 * It measures and prints; a missed target is a `MISS` in the table, never a failure.
 *
 * Each case starts its own all-in-one cartd (shipped defaults, as the other groups) and its own
 * fake archive, run in this (the driver's) process so that the library's counters can be read:
 * the archive's load here is a few thousand small requests, not a 1 GiB stream.
 *
 * - `tape`: 96 files on 4 tapes behind 2 drives (mounts, time to ready ÷ the library's best);
 *   1,000 files on tape 5 s after their stage request, unlimited drives (POST → ready, HEADs
 *   per file); a cart on disk posted behind two carts waiting 30 s on tape (head-of-line); two
 *   carts with 50 files in common (archive GETs, bytes stored).
 * - `tape-big`: a 100,000-file cart on tape with a 10,000 recall cap, watched for a minute
 *   after its POST (peak RSS, archive HEADs per second, recalls outstanding, how fast cartd
 *   still answers a HEAD of the cart); and cartd killed with 10,000 recalls outstanding, then
 *   restarted (none lost, none fetched twice).
 *
 * A case that runs past its deadline is cut there and says how far it got.
 *
 * @module
 */
import { SETTINGS } from "../lib/config/config.ts";
import { startFakeArchive } from "../tests/support/fake_archive.ts";
import { type FakeArchive, patternBytes } from "../tests/support/fake_archive.ts";
import { layoutTapes, type TapeLibraryOptions } from "../tests/support/tape_library.ts";
import { type Cartd, cartStatus, postCart, startCartd } from "../tests/support/harness.ts";
import { benchIds, cartDoc, MiB, PeakRss, type Row } from "./common.ts";

/** One row of the table (the shape bench/run.ts prints). */
export type TapeRow = Row;

/** A titled group of rows. */
export interface TapeSection {
  title: string;
  rows: TapeRow[];
}

/** What the group needs from the driver. */
export interface TapeBenchOptions {
  /** cartd's environment (the shipped defaults, written out). */
  env: Record<string, string>;
  /** Run the `tape` cases. */
  tape: boolean;
  /** Run the `tape-big` case. */
  big: boolean;
  /** A temp folder the driver removes at the end of the run. */
  tempDir(prefix: string): Promise<string>;
  /** A progress line on stderr. */
  progress(text: string): void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const f2 = (n: number) => n.toFixed(2);
const secs = (n: number) => `${n < 10 ? f2(n) : n.toFixed(1)} s`;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
const count = (n: number) => n.toLocaleString("en");
const message = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0];

/** Small files, one shared buffer (their bytes are not what these cases measure). */
const SMALL = patternBytes(4096, 0x7a9e);

/**
 * The setting named `name` with its shipped default, if this cartd has it (the recall cap
 * `CARTD_RECALLS_MAX` and the HEAD ceiling `CARTD_HEADS_PER_SECOND` came with issue 14, so
 * an older cartd measured by this bench has neither).
 */
function setting(name: string): { name: string; value: string } | undefined {
  const found = SETTINGS.find(([each]) => each === name);
  return found ? { name: found[0], value: found[2] } : undefined;
}

/** POSTs a cart and polls its HEAD every 25 ms until ready, an error or the deadline. */
async function postAndWait(
  cartd: Cartd,
  uid: string,
  doc: unknown,
  deadlineMs: number,
): Promise<{ seconds: number; ready: boolean; status: string }> {
  const t0 = performance.now();
  const res = await postCart(cartd.url, uid, doc);
  const body = await res.text();
  if (res.status !== 201) throw new Error(`POST ${uid}: ${res.status} ${body}`);
  for (;;) {
    const [, status, text] = await cartStatus(cartd.url, uid);
    const seconds = (performance.now() - t0) / 1000;
    if (status === "ready") return { seconds, ready: true, status };
    if (status === "error") throw new Error(`cart ${uid} failed: ${text}`);
    if (seconds * 1000 > deadlineMs) return { seconds, ready: false, status };
    await sleep(25);
  }
}

/** Runs `fn` with a fake archive (with a tape library) and a fresh cartd on it. */
async function withTapeCartd<T>(
  opts: TapeBenchOptions,
  archiveOptions: { tapeLibrary: TapeLibraryOptions },
  setup: (archive: FakeArchive) => void,
  fn: (cartd: Cartd, archive: FakeArchive) => Promise<T>,
  env: Record<string, string> = {},
): Promise<T> {
  await using archive = startFakeArchive(archiveOptions);
  setup(archive);
  const cartd = await startCartd({
    env: { ...opts.env, ...env, ARCHIVE_INTERFACE_URL: archive.url },
    volume: await opts.tempDir("cartd-bench-tape-"),
  });
  try {
    await sleep(500);
    return await fn(cartd, archive);
  } catch (e) {
    console.error(cartd.output().split("\n").slice(-15).join("\n"));
    throw e;
  } finally {
    await cartd.stop();
  }
}

/** The cells of a time that may have hit its deadline, and how far the cart got. */
function timeCell(r: { seconds: number; ready: boolean }, fetched: number, of: number): string {
  return r.ready ? secs(r.seconds) : `> ${secs(r.seconds)} (cut: ${fetched}/${of} fetched)`;
}

// ---------------------------------------------------------------------------------------------
// tape

/** 96 files on 4 tapes, 2 drives, 2 s mount, 0.05 s read, listed in an order unrelated to tapes. */
async function library96(opts: TapeBenchOptions): Promise<TapeRow[]> {
  const drives = 2, tapes = 4, mountMs = 2000, readMs = 50;
  const ids = benchIds("lib96-", 96);
  const placement = layoutTapes(ids, tapes, 14);
  const bestS = (Math.ceil(tapes / drives) * (mountMs + (ids.length / tapes) * readMs)) / 1000;
  opts.progress(`tape: 96 files on ${tapes} tapes, ${drives} drives (library's best ${bestS} s)`);
  return await withTapeCartd(
    opts,
    { tapeLibrary: { drives, mountMs, readMs } },
    (archive) => {
      for (const id of ids) archive.put(id, SMALL, { tape: placement.get(id) });
    },
    async (cartd, archive) => {
      const r = await postAndWait(cartd, "tape-library", cartDoc(ids, "tape"), 300_000);
      const stats = archive.libraryStats();
      const totals = archive.totals();
      const ratio = r.seconds / bestS;
      return [
        {
          figure: "POST → ready",
          cartd: timeCell(r, totals.get, ids.length),
          baseline: `library best ${secs(bestS)}`,
          ratio: `${f2(ratio)}×`,
          target: "≤ 1.30×",
          ok: r.ready && ratio <= 1.3,
        },
        {
          figure: "tape mounts",
          cartd: String(stats.mounts),
          baseline: `${tapes} tapes`,
          target: "≤ 5",
          ok: stats.mounts <= 5,
        },
        {
          figure: "stage requests (no-ops: already queued / on disk)",
          cartd: `${stats.stageRequests} (${stats.duplicateRequests} / ${stats.onDiskRequests})`,
        },
        { figure: "archive HEADs per file", cartd: f2(totals.head / ids.length) },
      ];
    },
  );
}

/** 1,000 files, each on disk 5 s after its stage request (unlimited drives). */
async function delay1000(opts: TapeBenchOptions): Promise<TapeRow[]> {
  const n = 1000, recallMs = 5000, deadlineMs = 150_000;
  const ids = benchIds("d5-", n);
  opts.progress(`tape: ${count(n)} files, each on tape ${recallMs / 1000} s after its request`);
  return await withTapeCartd(
    opts,
    { tapeLibrary: { recallMs } },
    (archive) => {
      ids.forEach((id, i) => archive.put(id, SMALL, { tape: { tape: "t", position: i } }));
    },
    async (cartd, archive) => {
      const r = await postAndWait(cartd, "tape-1000", cartDoc(ids, "tape"), deadlineMs);
      const totals = archive.totals();
      const rows: TapeRow[] = [{
        figure: "POST → ready",
        cartd: timeCell(r, totals.get, n),
        baseline: `one recall ${secs(recallMs / 1000)}`,
        target: "≤ 8 s",
        ok: r.ready && r.seconds <= 8,
      }];
      if (!r.ready && totals.get > 0) {
        rows.push({
          figure: "  at the rate so far, all files after",
          cartd: `≈ ${secs((r.seconds * n) / totals.get)}`,
        });
      }
      const perFile = totals.head / Math.max(1, r.ready ? n : totals.get);
      rows.push({
        figure: `archive HEADs per file${r.ready ? "" : " (of the files fetched)"}`,
        cartd: f2(perFile),
        target: "≤ 3",
        ok: perFile <= 3,
      });
      rows.push({
        figure: "archive stage POSTs per file",
        cartd: f2(totals.post / Math.max(1, r.ready ? n : totals.get)),
      });
      return rows;
    },
  );
}

/** A 10-file cart on disk posted while two 20-file carts wait 30 s on tape. */
async function headOfLine(opts: TapeBenchOptions): Promise<TapeRow[]> {
  const recallMs = 30_000;
  const tapeA = benchIds("hol-a-", 20), tapeB = benchIds("hol-b-", 20);
  const disk = benchIds("hol-disk-", 10);
  opts.progress(`tape: a cart on disk behind two 20-file carts on tape ${recallMs / 1000} s`);
  return await withTapeCartd(
    opts,
    { tapeLibrary: { recallMs } },
    (archive) => {
      [...tapeA, ...tapeB].forEach((id, i) =>
        archive.put(id, SMALL, { tape: { tape: "t", position: i } })
      );
      for (const id of disk) archive.put(id, SMALL);
    },
    async (cartd) => {
      for (const [uid, ids] of [["hol-a", tapeA], ["hol-b", tapeB]] as const) {
        const res = await postCart(cartd.url, uid, cartDoc(ids, "tape"));
        await res.body?.cancel();
        if (res.status !== 201) throw new Error(`POST ${uid}: ${res.status}`);
      }
      await sleep(1000); // both tape carts staging
      const r = await postAndWait(cartd, "hol-disk", cartDoc(disk, "disk"), 120_000);
      return [{
        figure: "10-file cart on disk, POST → ready",
        cartd: r.ready ? secs(r.seconds) : `> ${secs(r.seconds)} (cut)`,
        baseline: `alone: ≈ 0.1 s`,
        target: "≤ 1 s",
        ok: r.ready && r.seconds <= 1,
      }];
    },
  );
}

/** Blocks used under `dir` by regular files, each inode once, the database left out. */
async function diskUse(dir: string): Promise<number> {
  const seen = new Set<string>();
  let bytes = 0;
  const walk = async (path: string) => {
    for await (const e of Deno.readDir(path)) {
      const p = `${path}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (e.isFile && !e.name.startsWith("cartd.sqlite3")) {
        const st = await Deno.lstat(p);
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
        bytes += (st.blocks ?? 0) * 512;
      }
    }
  };
  await walk(dir);
  return bytes;
}

/** Two 100-file carts posted together, 50 files in common. */
async function sharing(opts: TapeBenchOptions): Promise<TapeRow[]> {
  const size = 256 * 1024;
  const ids = benchIds("share-", 150);
  const a = ids.slice(0, 100), b = ids.slice(50, 150), common = ids.slice(50, 100);
  opts.progress("tape: two 100-file carts with 50 files in common, posted together");
  return await withTapeCartd(
    opts,
    { tapeLibrary: {} },
    (archive) => {
      for (const id of ids) archive.put(id, { size });
    },
    async (cartd, archive) => {
      const [ra, rb] = await Promise.all([
        postAndWait(cartd, "share-a", cartDoc(a, "a"), 120_000),
        postAndWait(cartd, "share-b", cartDoc(b, "b"), 120_000),
      ]);
      if (!ra.ready || !rb.ready) throw new Error("the carts were not ready within 120 s");
      const commonGets = common.reduce((n, id) => n + archive.counts(id).get, 0);
      const used = await diskUse(cartd.volume);
      const distinct = ids.length * size;
      return [
        {
          figure: "archive GETs of the 50 common files",
          cartd: String(commonGets),
          baseline: `all files: ${archive.totals().get}`,
          target: "50",
          ok: commonGets === 50,
        },
        {
          figure: "volume disk use (database left out)",
          cartd: mib(used),
          baseline: `150 distinct files ${mib(distinct)}`,
          ratio: `${f2(used / distinct)}×`,
          target: "≈ 1.00×",
          ok: used <= distinct * 1.05,
        },
        {
          figure: "both carts, POST → ready",
          cartd: `${secs(ra.seconds)} / ${secs(rb.seconds)}`,
        },
      ];
    },
  );
}

// ---------------------------------------------------------------------------------------------
// tape-big

/** A 100,000-file cart on tape with a 10,000 recall cap, watched for a minute. */
async function big(opts: TapeBenchOptions): Promise<TapeRow[]> {
  const n = 100_000, cap = 10_000, watchMs = 60_000;
  const ids = benchIds("big-", n);
  const capSetting = setting("CARTD_RECALLS_MAX");
  const headSetting = setting("CARTD_HEADS_PER_SECOND");
  const env: Record<string, string> = {};
  if (capSetting) env[capSetting.name] = String(cap);
  opts.progress(`tape-big: ${count(n)} files on tape, watched for ${watchMs / 1000} s`);
  return await withTapeCartd(
    opts,
    // Far longer than the watch: every file stays on tape, every recall stays outstanding.
    { tapeLibrary: { recallMs: 3_600_000 } },
    (archive) => {
      ids.forEach((id, i) => archive.put(id, SMALL, { tape: { tape: "t", position: i } }));
    },
    async (cartd, archive) => {
      // Two windows: the POST and the 10 s after its 201 (a document this big is taken by the
      // document thread, app/documents.ts, which stops 5 s after its last document), then
      // the rest of the watch, where the recalls are what the process holds.
      let peak = new PeakRss(cartd.process.pid);
      let postPeak = NaN;
      const t0 = performance.now();
      const res = await postCart(cartd.url, "tape-big", cartDoc(ids, "big"));
      await res.body?.cancel();
      if (res.status !== 201) throw new Error(`POST: ${res.status}`);
      const postS = (performance.now() - t0) / 1000;
      const settledAt = performance.now() + 10_000;
      // Once a second: the archive's HEADs in that second, and a timed HEAD of the cart.
      // The rate of each sample is its HEADs over the time since the last one (a busy machine
      // makes the driver's "second" longer than a second).
      let last = archive.totals().head;
      let lastAt = performance.now();
      let maxHeads = 0, maxCartHead = 0, maxOutstanding = 0;
      const end = t0 + watchMs;
      while (performance.now() < end) {
        await sleep(1000);
        if (Number.isNaN(postPeak) && performance.now() >= settledAt) {
          postPeak = peak.stop();
          peak = new PeakRss(cartd.process.pid);
        }
        const heads = archive.totals().head;
        const at = performance.now();
        maxHeads = Math.max(maxHeads, Math.round((heads - last) / ((at - lastAt) / 1000)));
        last = heads;
        lastAt = at;
        const h0 = performance.now();
        await cartStatus(cartd.url, "tape-big");
        maxCartHead = Math.max(maxCartHead, performance.now() - h0);
        maxOutstanding = Math.max(maxOutstanding, archive.libraryStats().waiting);
      }
      const rss = peak.stop();
      const overall = Math.max(rss, postPeak || 0);
      const watched = (performance.now() - t0) / 1000;
      const totals = archive.totals();
      const ceiling = headSetting ? Number(headSetting.value) : NaN;
      return [
        { figure: "POST of the cart (201)", cartd: secs(postS) },
        {
          figure: `peak RSS, the first ${watchMs / 1000} s`,
          cartd: mib(overall),
          target: "≤ 150 MiB",
          ok: overall <= 150 * MiB,
        },
        {
          figure: "  of which: the POST and the 10 s after it (document thread)",
          cartd: Number.isNaN(postPeak) ? "" : mib(postPeak),
        },
        {
          figure: `  of which: from then to ${watchMs / 1000} s (the recalls)`,
          cartd: mib(rss),
          target: "≤ 150 MiB",
          ok: rss <= 150 * MiB,
        },
        {
          figure: "archive HEADs per second: highest second / mean",
          cartd: `${count(maxHeads)} / ${f2(totals.head / watched)}`,
          baseline: headSetting ? `${headSetting.name}=${headSetting.value}` : "no HEAD ceiling",
          target: headSetting ? `≤ ${headSetting.value}` : "≤ the ceiling setting",
          ok: Number.isFinite(ceiling) ? maxHeads <= ceiling : undefined,
        },
        {
          figure: "recalls outstanding (stage requests queued), most",
          cartd: count(maxOutstanding),
          baseline: capSetting ? `${capSetting.name}=${cap}` : "no recall cap setting",
          target: `${count(cap)} (the cap)`,
          ok: maxOutstanding === cap,
        },
        {
          figure: "stage POSTs / archive GETs so far",
          cartd: `${count(totals.post)} / ${count(totals.get)}`,
        },
        {
          figure: "HEAD of the cart, slowest (once a second)",
          cartd: `${maxCartHead.toFixed(0)} ms`,
        },
      ];
    },
    env,
  );
}

/**
 * The file indexes staged (whole, at their place) in the carts under `volume`, and the number
 * of `.part` files there (see lib/volume/volume.ts for the layout).
 */
async function filesOnVolume(volume: string): Promise<{ staged: Set<number>; parts: number }> {
  const staged = new Set<number>();
  let parts = 0;
  const carts = `${volume}/carts`;
  for await (const cart of Deno.readDir(carts)) {
    if (!cart.isDirectory) continue;
    for await (const e of Deno.readDir(`${carts}/${cart.name}/files`)) {
      if (e.name.endsWith(".part")) parts++;
      else if (/^\d+$/.test(e.name)) staged.add(Number(e.name));
    }
  }
  return { staged, parts };
}

/**
 * The restart fault: a 10,000-file cart on tape, cartd killed (SIGKILL) once every stage
 * request is out and the first files are being fetched (so that the kill cuts fetches too;
 * with the stage requests sent ahead of the size HEADs, every one is out before any recall
 * ends), then started again on the same volume and database.
 */
async function restart(opts: TapeBenchOptions): Promise<TapeRow[]> {
  const n = 10_000, recallMs = 20_000;
  const ids = benchIds("restart-", n);
  opts.progress(`tape-big: ${count(n)} recalls outstanding, kill -9, restart`);
  await using archive = startFakeArchive({ tapeLibrary: { recallMs } });
  ids.forEach((id, i) => archive.put(id, SMALL, { tape: { tape: "t", position: i } }));
  const volume = await opts.tempDir("cartd-bench-restart-");
  const env = { ...opts.env, ARCHIVE_INTERFACE_URL: archive.url };
  const first = await startCartd({ env, volume });
  let second: Cartd | undefined;
  try {
    const res = await postCart(first.url, "restart", cartDoc(ids, "restart"));
    await res.body?.cancel();
    if (res.status !== 201) throw new Error(`POST: ${res.status}`);
    const t0 = performance.now();
    const fetchedBefore = n / 20;
    while (archive.totals().post < n || archive.totals().get < fetchedBefore) {
      if (performance.now() - t0 > 120_000) {
        throw new Error(
          `the stage requests did not go out, or ${fetchedBefore} files were not fetched, in 120 s`,
        );
      }
      await sleep(50);
    }
    const postsBefore = archive.totals().post;
    const getsBefore = archive.totals().get;
    await first.kill();
    const killedAt = performance.now();
    // What the killed process left: each id's GETs so far (arrived, and sent to their end),
    // and which files stood whole at their place on the volume (renamed there once checked)
    // or half-written (`.part`). A file GET again after the restart is a defect only if it
    // stood whole (it should have been adopted); one that was being fetched is fetched again.
    const getsAtKill = ids.map((id) => archive.counts(id).get);
    const wholeAtKill = ids.map((id) => archive.wholeGets(id));
    const { staged, parts } = await filesOnVolume(volume);
    second = await startCartd({ env, volume });
    let ready = false;
    while (!ready && performance.now() - killedAt < 300_000) {
      await sleep(250);
      ready = (await cartStatus(second.url, "restart"))[1] === "ready";
    }
    const readyS = (performance.now() - killedAt) / 1000;
    const gets = ids.map((id) => archive.counts(id).get);
    const twice = ids.flatMap((_, i) => gets[i] > 1 ? [i] : []);
    const lost = gets.filter((g) => g === 0).length;
    // Of the files fetched again: those the first process had on the volume (a defect), those
    // it was writing or whose GET it had sent, and (of those) whose body the archive had sent
    // whole before the kill.
    const again = twice.filter((i) => gets[i] > getsAtKill[i]);
    const hadWhole = again.filter((i) => staged.has(i));
    const interrupted = again.filter((i) => !staged.has(i));
    const sentWhole = interrupted.filter((i) => wholeAtKill[i] >= getsAtKill[i]);
    const totals = archive.totals();
    return [
      {
        figure: "stage requests sent when killed / files fetched then",
        cartd: `${count(postsBefore)} / ${count(getsBefore)}`,
        target: `${count(n)} / ≥ ${count(fetchedBefore)}`,
        ok: postsBefore >= n,
      },
      {
        figure: "kill → ready again",
        cartd: ready ? secs(readyS) : `> ${secs(readyS)} (cut)`,
        baseline: `one recall ${secs(recallMs / 1000)}`,
      },
      {
        figure: "files lost / fetched again though whole on the volume",
        cartd: `${lost} / ${hadWhole.length}`,
        target: "0 / 0",
        ok: ready && lost === 0 && hadWhole.length === 0 && twice.length === again.length,
      },
      {
        figure: "files GET twice: all / their fetch cut by the kill",
        cartd: `${twice.length} / ${interrupted.length}`,
        baseline: `at the kill: ${count(staged.size)} staged, ${parts} .part`,
      },
      {
        figure: "  of those cut: body sent whole by the archive, not yet renamed",
        cartd: String(sentWhole.length),
      },
      {
        figure: "stage requests re-sent after the restart",
        cartd: count(totals.post - postsBefore),
      },
    ];
  } finally {
    await first.stop().catch(() => {});
    await second?.stop();
  }
}

// ---------------------------------------------------------------------------------------------

/** Runs the selected tape cases; a case that fails is one row saying so. */
export async function tapeScenarios(opts: TapeBenchOptions): Promise<TapeSection[]> {
  const cases: [string, (o: TapeBenchOptions) => Promise<TapeRow[]>][] = [];
  if (opts.tape) {
    cases.push(
      ["tape: 96 files on 4 tapes, 2 drives, 2 s mount, 0.05 s read, path order", library96],
      ["tape: 1,000 files, each on disk 5 s after its stage request, unlimited drives", delay1000],
      ["tape: head-of-line, a cart on disk behind two 20-file carts on tape 30 s", headOfLine],
      ["tape: two 100 × 256 KiB carts posted together, 50 files in common (on disk)", sharing],
    );
  }
  if (opts.big) {
    cases.push(["tape-big: 100,000 files on tape, 10,000 recall cap, first minute", big]);
    cases.push(["tape-big: killed with 10,000 recalls outstanding, restarted", restart]);
  }
  const sections: TapeSection[] = [];
  for (const [title, run] of cases) {
    let rows: TapeRow[];
    try {
      rows = await run(opts);
    } catch (e) {
      rows = [{ figure: "failed", cartd: message(e) }];
    }
    sections.push({ title, rows });
  }
  return sections;
}
