/**
 * Where cart files live under VOLUME_PATH. A cart's folder is named after its internal id (a
 * UUID the store made), and each file after its position in the cart: client-chosen uids and
 * paths never become file-system paths, so nothing can escape the cart's folder.
 *
 * ```
 * VOLUME_PATH/carts/<cart id>/files/<index>       a staged file
 * VOLUME_PATH/carts/<cart id>/files/<index>.part  a file being fetched
 * VOLUME_PATH/carts/<cart id>/bundle.tar          the tar of a "bundle": true cart
 * ```
 * @module
 */
import { dirname, join } from "node:path";

const CART_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The folder layout under one VOLUME_PATH. */
export class Volume {
  /**
   * The layout under `root`.
   *
   * @param root absolute VOLUME_PATH
   */
  constructor(readonly root: string) {}

  /** The folder that holds every cart. */
  get cartsDir(): string {
    return join(this.root, "carts");
  }

  /** The folder of one cart. Throws for anything but a store-made id. */
  cartDir(cartId: string): string {
    if (!CART_ID.test(cartId)) throw new Error(`"${cartId}" is not a cart id made by the store`);
    return join(this.cartsDir, cartId);
  }

  /** Where file number `idx` of a cart is staged. */
  filePath(cartId: string, idx: number): string {
    if (!Number.isSafeInteger(idx) || idx < 0) throw new Error(`Bad file index ${idx}`);
    return join(this.cartDir(cartId), "files", String(idx));
  }

  /** Where the tar of a `"bundle": true` cart is written. */
  bundlePath(cartId: string): string {
    return join(this.cartDir(cartId), "bundle.tar");
  }

  /** Creates the cart's folders. */
  async prepare(cartId: string): Promise<void> {
    await Deno.mkdir(join(this.cartDir(cartId), "files"), { recursive: true });
  }

  /**
   * Whether `path` (a file, or the folder it would be made in) is on the same file system as
   * the cart folders, so that removing a cart's folder makes room for it too. False when
   * either cannot be looked at.
   */
  sharesFileSystem(path: string): boolean {
    const device = (p: string) => {
      try {
        return Deno.statSync(p).dev;
      } catch {
        return null;
      }
    };
    const carts = device(this.cartsDir) ?? device(this.root);
    const other = device(path) ?? device(dirname(path));
    return carts !== null && carts === other;
  }

  /** Removes the cart's folder and everything in it; a missing folder is fine. */
  async remove(cartId: string): Promise<void> {
    await Deno.remove(this.cartDir(cartId), { recursive: true }).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }

  /** The cart ids that have a folder on the volume. */
  async cartIds(): Promise<string[]> {
    const ids: string[] = [];
    try {
      for await (const entry of Deno.readDir(this.cartsDir)) {
        if (entry.isDirectory && CART_ID.test(entry.name)) ids.push(entry.name);
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return ids;
  }

  /** Bytes used by the files of one cart (what is on disk now). */
  async usage(cartId: string): Promise<number> {
    let total = 0;
    const walk = async (dir: string) => {
      for await (const entry of Deno.readDir(dir)) {
        const path = join(dir, entry.name);
        if (entry.isDirectory) await walk(path);
        else if (entry.isFile) total += (await Deno.stat(path)).size;
      }
    };
    await walk(this.cartDir(cartId)).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    return total;
  }
}
