/**
 * From a ready cart to its {@linkcode Bundle}: the download name, the top folder, and which
 * bytes to serve (the tar written at bundling time for `"bundle": true` carts, else a bundle
 * assembled from the staged files at download time — the same bytes either way).
 *
 * The top folder (SPEC §1, Download): the download name without `.tar`/`.zip` for a cart
 * assembled at download time; the cart's uid for a `"bundle": true` cart, whatever the name
 * (its tar is made before any name is known, as in Pacifica), in a tar and in a zip alike, so
 * that one cart has one layout. A uid that is not a safe path segment is mapped to one by
 * {@linkcode uidFolder}.
 *
 * @module
 */
import {
  type Bundle,
  type BundleFormat,
  bundleFromFile,
  type BundleOptions,
  type FileList,
  planBundle,
} from "./plan.ts";
import type { Cart } from "../store/store.ts";
import type { Volume } from "../volume/volume.ts";

/** How a client asked for the cart. */
export interface DownloadRequest {
  /** The download name (`?filename=`); defaults to {@linkcode defaultName}. */
  name?: string;
  /** The archive format (`?format=`). */
  format: BundleFormat;
  /** Add a sha256 manifest even if the cart did not ask for one. */
  manifest?: boolean;
}

/** `data_YYYY_MM_DD_HH_MM_SS.tar` (or `.zip`) from the time the cart became ready (UTC). */
export function defaultName(
  cart: Pick<Cart, "readyAt" | "createdAt">,
  format: BundleFormat,
): string {
  const d = new Date(cart.readyAt ?? cart.createdAt);
  const p = (n: number) => String(n).padStart(2, "0");
  return `data_${d.getUTCFullYear()}_${p(d.getUTCMonth() + 1)}_${p(d.getUTCDate())}_${
    p(d.getUTCHours())
  }_${p(d.getUTCMinutes())}_${p(d.getUTCSeconds())}.${format}`;
}

/** The bundle's top folder: the name without its `.tar`/`.zip` ending. */
export function topFolder(name: string): string {
  return name.replace(/\.(tar|zip)$/i, "") || "cart";
}

/**
 * The top folder of a `"bundle": true` cart: its uid, as one path segment that no extracting
 * tool can resolve outside the folder it extracts into. Each `/`, `\` and control character
 * (U+0000–U+001F, U+007F–U+009F) becomes `_`; a uid that is then empty, `.` or `..` becomes
 * as many `_` as it has characters (at least one). Nothing else changes, so an ordinary uid is
 * its own folder, and the folder is never longer than the uid (255 bytes at most, a valid
 * file name everywhere).
 */
export function uidFolder(uid: string): string {
  // deno-lint-ignore no-control-regex
  const safe = uid.replace(/[/\\\x00-\x1f\x7f-\x9f]/g, "_");
  return safe === "" || safe === "." || safe === ".." ? "_".repeat(Math.max(1, safe.length)) : safe;
}

/** What a cart's bundle is laid out from: its uid, its choices and its times. */
export type BundleCart = Pick<Cart, "uid" | "bundle" | "manifest" | "readyAt" | "createdAt">;

/**
 * The download a client gets without asking for anything: a tar under the default name, with
 * a manifest only when the cart asked for one. It is what bundling writes for a `"bundle":
 * true` cart, and what the store's `markReady` records the size and ETag of.
 */
export const DEFAULT_DOWNLOAD: DownloadRequest = { format: "tar" };

/**
 * The layout of a ready cart's bundle for `request`: the top folder (see the module
 * description), the format, the manifest and the time of its folders; what
 * {@linkcode planCartBundle} plans with.
 */
export function cartBundleOptions(cart: BundleCart, request: DownloadRequest): BundleOptions {
  const top = cart.bundle
    ? uidFolder(cart.uid)
    : topFolder(request.name ?? defaultName(cart, request.format));
  return {
    top,
    format: request.format,
    manifest: cart.manifest || (request.manifest ?? false),
    mtime: Math.floor((cart.readyAt ?? cart.createdAt) / 1000),
  };
}

/**
 * The one place where a cart and its files become a plan: the bundle of `cart` asked for as
 * `request` ({@linkcode DEFAULT_DOWNLOAD} when not given). Staging sizes the tar of a
 * `"bundle": true` cart with it (from the sizes the archive told), the bundling thread writes
 * that tar from it, and downloads that are not the written tar are served from it; so they
 * all agree, byte for byte.
 */
export function planCartBundle(
  cart: BundleCart,
  files: FileList,
  request: DownloadRequest = DEFAULT_DOWNLOAD,
): Bundle {
  return planBundle(files, cartBundleOptions(cart, request));
}

/**
 * True when `request` asks for the bytes of the cart's default download
 * ({@linkcode DEFAULT_DOWNLOAD}): a tar, without a manifest the cart did not ask for, and,
 * for a cart assembled at download time, under the default name (which is its top folder).
 */
export function isDefaultDownload(cart: BundleCart, request: DownloadRequest): boolean {
  if (request.format !== "tar" || (request.manifest && !cart.manifest)) return false;
  return cart.bundle || request.name === undefined ||
    request.name === defaultName(cart, request.format);
}

/**
 * The bundle to serve for `request`, or null when the cart is gone (`loadFiles` said so).
 * A ready `"bundle": true` cart asked for its default download is served from the tar written
 * at bundling, with the size and ETag the store recorded, without its files being read; when
 * that tar is not on disk with that size, or nothing was recorded (a cart made ready by a
 * cartd of schema 1), or anything else is asked for, the files (`loadFiles`) are planned by
 * {@linkcode planCartBundle}: the same bytes and ETag either way.
 */
export async function cartBundle(
  cart: Cart,
  volume: Volume,
  request: DownloadRequest,
  loadFiles: () => Promise<FileList | null>,
): Promise<Bundle | null> {
  const { downloadSize: size, downloadEtag: etag } = cart;
  if (cart.bundle && size !== null && etag !== null && isDefaultDownload(cart, request)) {
    const path = volume.bundlePath(cart.id);
    const onDisk = await Deno.stat(path).then((s) => s.size, () => -1);
    if (onDisk === size) return bundleFromFile(path, size, etag);
  }
  const files = await loadFiles();
  return files ? planCartBundle(cart, files, request) : null;
}
