/**
 * From a ready cart to its {@linkcode Bundle}: the download name, the top folder, and which
 * bytes to serve (the tar written at bundling time for `"bundle": true` carts, else a bundle
 * assembled from the staged files at download time — the same bytes either way).
 *
 * @module
 */
import {
  type Bundle,
  type BundleFormat,
  bundleFromFile,
  type FileList,
  planBundle,
} from "./bundle.ts";
import type { Cart } from "./store.ts";
import type { Volume } from "./volume.ts";

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
export function defaultName(cart: Cart, format: BundleFormat): string {
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

/** Plans the bundle of a cart whose files are all staged. */
export function planCartBundle(
  cart: Cart,
  files: FileList,
  request: DownloadRequest,
): Bundle {
  const name = request.name ?? defaultName(cart, request.format);
  return planBundle(files, {
    top: topFolder(name),
    format: request.format,
    manifest: cart.manifest || (request.manifest ?? false),
    mtime: Math.floor((cart.readyAt ?? cart.createdAt) / 1000),
  });
}

/**
 * The bundle to serve: the tar on disk when the cart has one with exactly the planned bytes,
 * else the planned bundle itself.
 */
export async function cartBundle(
  cart: Cart,
  files: FileList,
  volume: Volume,
  request: DownloadRequest,
): Promise<Bundle> {
  const planned = planCartBundle(cart, files, request);
  if (!cart.bundle || request.format !== "tar") return planned;
  try {
    const stat = await Deno.stat(volume.bundlePath(cart.id));
    if (stat.size === planned.size && (await readEtag(volume, cart)) === planned.etag) {
      return bundleFromFile(volume.bundlePath(cart.id), planned.size, planned.etag);
    }
  } catch {
    // No tar on disk (or unreadable): the staged files serve the same bytes.
  }
  return planned;
}

async function readEtag(volume: Volume, cart: Cart): Promise<string | null> {
  try {
    return (await Deno.readTextFile(volume.bundlePath(cart.id) + ".etag")).trim();
  } catch {
    return null;
  }
}
