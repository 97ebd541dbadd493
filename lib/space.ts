/**
 * Space under VOLUME_PATH (SPEC §4). Before a cart's first file is fetched, its whole size is
 * reserved; when it does not fit, whole ready carts are purged, least recently used first,
 * never one used within `LRU_BUFFER_TIME` and never one in progress. When that is not enough,
 * the cart fails with {@linkcode NoSpaceError} ("No Space Available").
 *
 * Capacity is the file system's free space, optionally capped by `CARTD_VOLUME_SIZE`.
 *
 * @module
 */
import { statfs } from "node:fs/promises";
import type { Config } from "./config.ts";
import { log } from "./log.ts";
import { removeCart } from "./remove_cart.ts";
import type { Cart, CartStore } from "./store.ts";
import type { Volume } from "./volume.ts";

/** The exact message SPEC §1 and §4 give for a cart that does not fit. */
export const NO_SPACE = "No Space Available";

/** A cart does not fit, even after purging what may be purged. */
export class NoSpaceError extends Error {
  constructor() {
    super(NO_SPACE);
    this.name = "NoSpaceError";
  }
}

/** Free bytes of the file system that holds `path`, for an unprivileged writer. */
export async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return Number(s.bavail) * Number(s.bsize);
}

/** Reserves space for carts and purges least-recently-used ones to make room. */
export class Space {
  constructor(
    readonly store: CartStore,
    readonly volume: Volume,
    readonly settings: Config["space"],
    readonly now: () => number = Date.now,
  ) {}

  /** Does `bytes` more fit beside every other cart's reservation? Reserves them if so. */
  async #tryReserve(cart: Cart, bytes: number): Promise<boolean> {
    await Deno.mkdir(this.volume.cartsDir, { recursive: true });
    const free = await freeBytes(this.volume.root);
    return await this.store.db.transaction(async (tx) => {
      const rows = await tx.all<{ status: string; reserved: number; used: number }>(
        `SELECT status, SUM(reserved_bytes) AS reserved, COUNT(*) AS used FROM carts
         WHERE id <> ? GROUP BY status`,
        [cart.id],
      );
      let reserved = 0;
      let inProgress = 0;
      for (const r of rows) {
        reserved += Number(r.reserved ?? 0);
        if (!["ready", "error"].includes(r.status)) inProgress += Number(r.reserved ?? 0);
      }
      const capOk = this.settings.volumeSize === 0 || reserved + bytes <= this.settings.volumeSize;
      // Carts in progress will still write (at most) what they reserved.
      const diskOk = free - inProgress >= bytes;
      if (!capOk || !diskOk) return false;
      await tx.run("UPDATE carts SET reserved_bytes = ? WHERE id = ?", [bytes, cart.id]);
      return true;
    });
  }

  /** Ready carts that may be purged now, least recently used first. */
  async purgeable(exceptId = ""): Promise<Cart[]> {
    const safeSince = this.now() - this.settings.lruBufferMs;
    const carts = await this.store.allCarts();
    return carts
      .filter((c) => c.id !== exceptId && c.status === "ready" && c.lastUsedAt < safeSince)
      .sort((a, b) => a.lastUsedAt - b.lastUsedAt);
  }

  /**
   * Reserves `bytes` for `cart`, purging least-recently-used ready carts as needed.
   * Throws {@linkcode NoSpaceError} when it cannot fit.
   */
  async reserve(cart: Cart, bytes: number): Promise<void> {
    while (!(await this.#tryReserve(cart, bytes))) {
      const victim = this.settings.purge ? (await this.purgeable(cart.id))[0] : undefined;
      if (!victim) {
        log.warn("no space for cart", { uid: cart.uid, cart: cart.id, bytes });
        throw new NoSpaceError();
      }
      await removeCart(this.store, this.volume, victim, `LRU purge to make room for ${cart.uid}`);
    }
  }
}
