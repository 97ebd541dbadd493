/**
 * The bundling stage: the last step of a cart's work, after staging.
 *
 * ```
 * check every staged file (fetch again the ones missing) → plan the tar
 *   → write it in a thread when "bundle": true → ready → settle the reservation
 * ```
 *
 * @module
 */
import { cartBundleOptions } from "../lib/bundle/cart_bundle.ts";
import { planBundle } from "../lib/bundle/plan.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import type { CartFile } from "../lib/store/store.ts";
import { forEachLimited } from "../lib/util/limit.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import type { CartRun } from "./context.ts";
import { CartFailure, Stopped } from "./errors.ts";
import { fetchFiles, sizeOnDisk } from "./stage_cart.ts";

/** Files whose size on disk is checked at once. */
const CHECKS_IN_FLIGHT = 32;

/**
 * Checks every file against the store and the disk (one fetched again when it is missing),
 * plans the tar, writes it for a `"bundle": true` cart, and moves the cart to `ready`.
 * Throws {@linkcode Stopped} when the cart cannot be moved (deleted, replaced, or its claim
 * lost), a {@linkcode CartFailure} when the written tar does not match its plan, or what
 * fetching and writing threw.
 */
export async function bundleCart(run: CartRun): Promise<void> {
  const { cart, signal, owner, deps: { store, volume, pool, space } } = run;
  const files = await checkedFiles(run);
  const readyAt = Date.now();
  const ready = { ...cart, readyAt };
  // The tar of a "bundle": true cart is laid out as downloads plan it (under the cart's uid).
  const options = cartBundleOptions(ready, { format: "tar" });
  const plan = planBundle(files, options);
  if (cart.bundle) {
    const written = await pool.bundle({
      files: files.columns,
      options,
      dest: volume.bundlePath(cart.id),
    }, signal);
    if (written.etag !== plan.etag || written.size !== plan.size) {
      throw new CartFailure("The tar written to disk does not match its plan; POST the cart again");
    }
  }
  signal.throwIfAborted();
  if (!(await store.move(cart.id, "ready", "", readyAt, owner))) throw new Stopped("gone");
  // The reservation of a ready cart is what it holds on disk: its checked files, and the tar.
  const held = files.bytes + (cart.bundle ? plan.size : 0);
  await space.settle(cart.id, held).catch((e) =>
    log.warn("could not settle the reservation", { cart: cart.id, error: errorMessage(e) })
  );
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
