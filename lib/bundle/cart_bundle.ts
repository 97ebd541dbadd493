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

/**
 * The layout of a ready cart's bundle for `request`: the top folder (see the module
 * description), the format, the manifest and the time of its folders. Bundling (which writes
 * the tar of a `"bundle": true` cart) and downloads both plan from this, so that they agree.
 */
export function cartBundleOptions(cart: Cart, request: DownloadRequest): BundleOptions {
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

/** Plans the bundle of a cart whose files are all staged. */
export function planCartBundle(
  cart: Cart,
  files: FileList,
  request: DownloadRequest,
): Bundle {
  return planBundle(files, cartBundleOptions(cart, request));
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
