/**
 * Space under VOLUME_PATH (SPEC §4).
 *
 * **Reservation.** Before a cart's first file is fetched, the worker reserves the cart's whole
 * size (every file's `X-Content-Length`, plus the tar when `"bundle": true`) with
 * {@linkcode Space.reserve}. The check and the write of the reservation are one database
 * transaction that every cartd process serialises on (SQLite: `BEGIN IMMEDIATE`; MySQL: the
 * one row of `cartd_lock`, read `FOR UPDATE`), so two workers can never both take the last
 * free bytes. A cart fits when both hold:
 *
 * - *cap* (only with `CARTD_VOLUME_SIZE`): the reservations of every other cart plus this one
 *   stay within the cap;
 * - *disk*: the file system's free space (for an unprivileged writer) covers what this cart
 *   still has to write, plus what carts in progress still have to write (their reservation
 *   less the files they have staged), plus one block per file of slack.
 *
 * Once a cart is final, {@linkcode Space.settle} sets its reservation to what its folder
 * really holds (a ready cart's files and tar; a failed cart's staged files, kept for
 * `cartd admin fixit`), so the cap counts real bytes.
 *
 * **LRU purge.** When a cart does not fit, whole ready carts are removed (as DELETE does),
 * least recently used first — a download or a status check of a ready cart is a use — but
 * never one used within `LRU_BUFFER_TIME`, never one in progress, and never the cart itself.
 * When even removing every such cart could not make room, none is removed and the cart fails
 * at once with {@linkcode NoSpaceError}: purging is all-or-nothing in intent, so carts are not
 * destroyed for a cart that fails anyway. `CARTD_LRU_PURGE=false` turns purging off.
 *
 * @module
 */
import { statfs } from "node:fs/promises";
import type { Config } from "../config/config.ts";
import { log } from "../util/log.ts";
import { Cancellations } from "./cancellations.ts";
import { removeCart } from "./remove_cart.ts";
import { expireCarts } from "./retention.ts";
import type { Cart, CartStore } from "../store/store.ts";
import type { Volume } from "../volume/volume.ts";
import { countCartEvent } from "../util/metrics.ts";

/** The exact message SPEC §1 and §4 give for a cart that does not fit. */
export const NO_SPACE = "No Space Available";

/** A cart does not fit, even after purging what may be purged. */
export class NoSpaceError extends Error {
  constructor() {
    super(NO_SPACE);
    this.name = "NoSpaceError";
  }
}

/** The file system that holds a path: free bytes for an unprivileged writer, block size. */
export interface DiskInfo {
  /** Free bytes for an unprivileged writer. */
  free: number;
  /** Block size, in bytes. */
  blockSize: number;
}

/** Free bytes and block size of the file system that holds `path`. */
export async function diskInfo(path: string): Promise<DiskInfo> {
  const s = await statfs(path);
  return { free: Number(s.bavail) * Number(s.bsize), blockSize: Number(s.bsize) };
}

/** Free bytes of the file system that holds `path`, for an unprivileged writer. */
export async function freeBytes(path: string): Promise<number> {
  return (await diskInfo(path)).free;
}

/** What one reservation attempt found. */
export interface Fit {
  /** True when the cart fits (its reservation is then recorded). */
  ok: boolean;
  /** Bytes missing under the cap (0 when it fits, or when there is no cap). */
  capShort: number;
  /** Bytes missing on the file system (0 when it fits). */
  diskShort: number;
}

/** Where space stands now (for `cartd admin dump`). */
export interface SpaceReport {
  /** The cap, or null when only the file system limits. */
  volumeSize: number | null;
  /** Sum of every cart's reservation. */
  reserved: number;
  /** Free bytes of the file system under VOLUME_PATH. */
  free: number;
  /** Bytes that carts in progress have reserved but not staged yet. */
  outstanding: number;
}

/** Reserves space for carts and purges least-recently-used ones to make room. */
export class Space {
  /**
   * `settings` are the config's `space` settings; `now` gives the time in ms since the epoch
   * (tests replace it).
   */
  constructor(
    readonly store: CartStore,
    readonly volume: Volume,
    readonly settings: Config["space"],
    readonly now: () => number = Date.now,
    /** Where free space is read from (tests replace it). */
    readonly disk: (path: string) => Promise<DiskInfo> = diskInfo,
    /**
     * The process's cancellations: a worker busy with a purged or expired cart hears it there
     * (a new instance, that no one else hears, when not given).
     */
    readonly cancellations: Cancellations = new Cancellations(),
  ) {}

  /**
   * One atomic attempt: does `bytes` fit for `cart`? Records the reservation if so (see
   * {@linkcode CartStore.reserveIf} for the lock that makes it atomic across processes).
   */
  async tryReserve(cart: Cart, bytes: number): Promise<Fit> {
    await Deno.mkdir(this.volume.cartsDir, { recursive: true });
    return await this.store.reserveIf(cart.id, bytes, async ({ reserved, outstanding, staged }) => {
      // Read inside the lock, so no other reservation moves between this and the check.
      const disk = await this.disk(this.volume.cartsDir);
      const cap = this.settings.volumeSize;
      const capShort = cap > 0 ? Math.max(0, reserved + bytes - cap) : 0;
      const toWrite = Math.max(0, bytes - staged);
      const slack = (cart.fileCount + 2) * disk.blockSize;
      const diskShort = Math.max(0, toWrite + slack + outstanding - disk.free);
      return { ok: capShort === 0 && diskShort === 0, capShort, diskShort };
    });
  }

  /** Ready live carts that may be purged now, least recently used first. */
  async purgeable(exceptId = ""): Promise<Cart[]> {
    return await this.store.purgeable(this.now() - this.settings.lruBufferMs, exceptId);
  }

  /**
   * Reserves `bytes` for `cart`, purging least-recently-used ready carts as needed.
   * Throws {@linkcode NoSpaceError} when it cannot fit.
   */
  async reserve(cart: Cart, bytes: number): Promise<void> {
    const purged: string[] = [];
    for (;;) {
      const fit = await this.tryReserve(cart, bytes);
      if (fit.ok) {
        if (purged.length) {
          log.info("space made by LRU purge", {
            uid: cart.uid,
            cart: cart.id,
            purged: purged.join(", "),
          });
        }
        return;
      }
      const short = Math.max(fit.capShort, fit.diskShort);
      const candidates = this.settings.purge ? await this.purgeable(cart.id) : [];
      // A shared file is freed only with its last cart: the bytes a candidate counts that a
      // cart outside the candidates also holds are handed over, not freed.
      const kept = candidates.length
        ? await this.store.sharedOutside(candidates.map((c) => c.id))
        : new Map<string, number>();
      const freeable = candidates.reduce(
        (total, c) => total + Math.max(0, c.reservedBytes - (kept.get(c.id) ?? 0)),
        0,
      );
      // A cart that cannot fit even after every allowed purge fails without destroying any.
      if (!candidates.length || (purged.length === 0 && freeable < short)) {
        log.warn("no space for cart", {
          uid: cart.uid,
          cart: cart.id,
          bytes,
          short,
          purgeable: freeable,
          purge: this.settings.purge,
        });
        throw new NoSpaceError();
      }
      const victim = candidates[0];
      // The victim may have been used (or removed) since it was listed: only an idle one goes.
      const safeSince = this.now() - this.settings.lruBufferMs;
      if (await this.store.unliveReady(victim.id, { usedBefore: safeSince })) {
        countCartEvent("purged");
        const why = `LRU purge to make room for ${cart.uid}`;
        const shared = await this.store.sharedOutside([victim.id]);
        const keptBytes = shared.get(victim.id) ?? 0;
        log.info("LRU purge: removing a cart", {
          uid: victim.uid,
          cart: victim.id,
          frees: Math.max(0, victim.reservedBytes - keptBytes),
          kept: keptBytes || undefined,
          note: keptBytes ? "shared files stay for the other carts that hold them" : undefined,
        });
        await removeCart(this.store, this.volume, victim, why, this.cancellations);
        purged.push(victim.uid);
      }
    }
  }

  /**
   * Sets a final cart's reservation to what its folder holds: `bytes` when the caller knows
   * it (a ready cart's checked files), else measured on disk, less its links to files that
   * another cart counts (worker/shares.ts).
   */
  async settle(cartId: string, bytes?: number): Promise<void> {
    if (bytes === undefined) {
      bytes = await this.volume.usage(cartId);
      for (const idx of await this.store.linkedFiles(cartId)) {
        bytes -= await Deno.stat(this.volume.filePath(cartId, idx)).then((s) => s.size, () => 0);
      }
    }
    await this.store.setReserved(cartId, Math.max(0, bytes));
  }

  /**
   * Retention (`CARTD_RETENTION`, see {@linkcode expireCarts}) on this space's store, volume
   * and clock: removes the ready carts kept longer than `settings.retentionMs`, telling this
   * process's workers through its cancellations; returns them.
   */
  async expire(): Promise<Cart[]> {
    const { store, volume, settings, cancellations } = this;
    return await expireCarts(store, volume, settings.retentionMs, this.now(), cancellations);
  }

  /** Where space stands now. */
  async report(): Promise<SpaceReport> {
    await Deno.mkdir(this.volume.cartsDir, { recursive: true });
    const { reserved, outstanding } = await this.store.spaceHoldings();
    const disk = await this.disk(this.volume.cartsDir);
    return {
      volumeSize: this.settings.volumeSize || null,
      reserved,
      free: disk.free,
      outstanding,
    };
  }
}
