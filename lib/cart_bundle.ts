/**
 * From a ready cart to its {@linkcode Bundle}: the download name, the top folder, and which
 * bytes to serve (the tar written at bundling time for `"bundle": true` carts, else a bundle
 * assembled from the staged files at download time — the same bytes either way).
 *
 * @module
 */
import {
  type Bundle,
  type BundleFile,
  type BundleFormat,
  bundleFromFile,
  planBundle,
} from "./bundle.ts";
import type { Cart, CartFile } from "./store.ts";
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

/**
 * A staged file as the bundle sees it. Its `source` is worked out when the file is read, not
 * kept: a download of a 40,000-file cart would otherwise hold 40,000 path strings.
 */
class StagedFile implements BundleFile {
  constructor(
    private readonly volume: Volume,
    private readonly cartId: string,
    private readonly idx: number,
    readonly path: string,
    readonly size: number,
    readonly mtime: number,
    readonly sha256: string,
    readonly crc32: number,
  ) {}
  get source(): string {
    return this.volume.filePath(this.cartId, this.idx);
  }
}

/** Plans the bundle of a cart whose files are all staged. */
export function planCartBundle(
  cart: Cart,
  files: CartFile[],
  volume: Volume,
  request: DownloadRequest,
): Bundle {
  const name = request.name ?? defaultName(cart, request.format);
  return planBundle(
    files.map((f) => {
      if (f.status !== "staged" || f.size === null || f.sha256 === null || f.crc32 === null) {
        throw new Error(`fileids[${f.idx}] (id ${f.archiveId}) is not staged`);
      }
      return new StagedFile(
        volume,
        cart.id,
        f.idx,
        f.path,
        f.size,
        f.mtime ?? 0,
        f.sha256,
        f.crc32,
      );
    }),
    {
      top: topFolder(name),
      format: request.format,
      manifest: cart.manifest || (request.manifest ?? false),
      mtime: Math.floor((cart.readyAt ?? cart.createdAt) / 1000),
    },
  );
}

/**
 * The bundle to serve: the tar on disk when the cart has one with exactly the planned bytes,
 * else the planned bundle itself.
 */
export async function cartBundle(
  cart: Cart,
  files: CartFile[],
  volume: Volume,
  request: DownloadRequest,
): Promise<Bundle> {
  const planned = planCartBundle(cart, files, volume, request);
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
