/**
 * The bundling stage: the last step of a cart's work, after staging.
 *
 * ```
 * check every staged file (fetch again the ones missing)
 *   → "bundle": true: the tar planned and written in a thread; else: the tar planned here
 *   → ready, with the tar's size and ETag → settle the reservation
 * ```
 *
 * @module
 */
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import type { CartFile } from "../lib/store/store.ts";
import { forEachLimited } from "../lib/util/limit.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import type { CartRun } from "./context.ts";
import { Stopped } from "./errors.ts";
import { fetchFiles, sizeOnDisk } from "./stage_cart.ts";
import { countCartEvent } from "../lib/util/metrics.ts";

/** Files whose size on disk is checked at once. */
const CHECKS_IN_FLIGHT = 32;

/**
 * Checks every file against the store and the disk (one fetched again when it is missing),
 * has the tar of a `"bundle": true` cart written in a thread, and moves the cart to `ready`
 * with the size and ETag of its default download (the written tar, or for another cart the
 * tar it would get, planned here). Either way the plan is made once, by `planCartBundle`.
 * Returns the files it checked (for {@linkcode measureCrc32}). Throws {@linkcode Stopped} when
 * the cart cannot be moved (deleted, replaced, or its claim lost), or what fetching and writing
 * threw.
 */
export async function bundleCart(run: CartRun): Promise<StagedFiles> {
  const { cart, signal, owner, deps: { store, volume, pool, space } } = run;
  const files = await checkedFiles(run);
  // Files linked from another cart's copies (worker/shares.ts) may come without a SHA-256.
  if (cart.manifest && files.unmeasured) await files.measure(store, { sha256: true }, signal);
  const readyAt = Date.now();
  // The plan's folder times come from readyAt: the cart is planned as it will be when ready.
  const ready = { ...cart, readyAt };
  const download = cart.bundle
    ? await pool.bundle(
      { cart: ready, files: files.columns, dest: volume.bundlePath(cart.id) },
      signal,
    )
    : planCartBundle(ready, files);
  signal.throwIfAborted();
  const facts = { readyAt, size: download.size, etag: download.etag };
  if (!(await store.markReady(cart.id, owner, facts))) throw new Stopped("gone");
  countCartEvent("ready");
  // The reservation of a ready cart is what it holds on disk: its checked files (those it
  // counts: not its links to files another cart counts, worker/shares.ts), and the tar.
  const held = (await store.countedBytes(cart.id)) + (cart.bundle ? download.size : 0);
  await space.settle(cart.id, held).catch((e) =>
    log.warn("could not settle the reservation", { cart: cart.id, error: errorMessage(e) })
  );
  return files;
}

/**
 * The CRC-32s that staging did not measure (big files piped to disk, which it does not read
 * back only for them), measured once the cart is ready: a zip needs them, and the first zip
 * asked for then starts at once, as the cart's tar does. The cart is downloadable meanwhile
 * (a zip asked for before this ends measures what is left itself); a failure here only
 * leaves that to the zip.
 */
export async function measureCrc32(run: CartRun, files: StagedFiles): Promise<void> {
  const { cart, signal, deps: { store } } = run;
  const missing = files.unmeasuredCrc32;
  if (!missing) return;
  const started = performance.now();
  try {
    await files.measure(store, { crc32: true }, signal);
    log.debug("measured the CRC-32s staging left for a zip", {
      uid: cart.uid,
      cart: cart.id,
      files: missing,
      ms: Math.round(performance.now() - started),
    });
  } catch (e) {
    if (signal.aborted) return;
    log.warn("could not measure the CRC-32s for a zip; the first zip will", {
      uid: cart.uid,
      cart: cart.id,
      error: errorMessage(e),
    });
  }
}

/** The cart's staged files, each checked on disk; those missing are fetched again first. */
async function checkedFiles(run: CartRun): Promise<StagedFiles> {
  const { cart, signal, deps: { store, volume } } = run;
  const files = await StagedFiles.load(store, cart, volume, true);
  const missing = new Set<number>(files.columns.unstaged.map((i) => files.idx(i)));
  await forEachLimited(rows(files.length), CHECKS_IN_FLIGHT, async (i) => {
    if ((await sizeOnDisk(files.source(i))) !== files.size(i)) missing.add(files.idx(i));
  }, signal);
  if (!missing.size) return files;
  log.warn("staged files missing at bundling; fetching again", {
    uid: cart.uid,
    cart: cart.id,
    files: missing.size,
  });
  const again: CartFile[] = [];
  for await (const file of store.eachFile(cart.id)) if (missing.has(file.idx)) again.push(file);
  await fetchFiles(run, again, new Map());
  return await StagedFiles.load(store, cart, volume);
}

/** 0, 1, …, n - 1. */
function* rows(n: number): Generator<number> {
  for (let i = 0; i < n; i++) yield i;
}
