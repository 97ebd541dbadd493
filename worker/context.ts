/**
 * What the worker's parts share: the services a worker runs on ({@linkcode WorkerDeps}) and
 * the context of one cart's run that the dispatcher hands to each stage ({@linkcode CartRun}).
 *
 * @module
 */
import type { ArchiveClient } from "../lib/archive/client.ts";
import type { Config } from "../lib/config/config.ts";
import type { Queue } from "../lib/queue/queue.ts";
import type { Cancellations } from "../lib/space/cancellations.ts";
import type { Space } from "../lib/space/space.ts";
import type { RecallManager } from "../lib/staging/recalls.ts";
import type { Cart, CartStore } from "../lib/store/store.ts";
import type { Volume } from "../lib/volume/volume.ts";
import type { ThreadPool } from "../threads/pool.ts";
import type { FileShares } from "./shares.ts";

/** What a worker needs. */
export interface WorkerDeps {
  /** Where carts are claimed and their progress recorded. */
  store: CartStore;
  /** Where cart ids come from, and where orphaned carts are queued again. */
  queue: Queue;
  /** The folder layout under VOLUME_PATH. */
  volume: Volume;
  /** The service's settings. */
  config: Config;
  /** The threads that stage, hash and bundle files. */
  pool: ThreadPool;
  /** The archive that files are staged from. */
  archive: ArchiveClient;
  /**
   * The process's one tape recall manager (lib/staging/recalls.ts): every file on tape of
   * every cart is recalled through it, outside the fetch slots and threads.
   */
  recalls: RecallManager;
  /** Reserves space for carts, purging least-recently-used ones to make room. */
  space: Space;
  /**
   * The process's shared files (worker/shares.ts): one lead per archive file, links to
   * stored copies. Without it, one without database claims is made for these deps.
   */
  shares?: FileShares;
  /**
   * Where this process says that a cart's work must stop (DELETE, a replacing POST, purge,
   * retention); the space's cancellations when not given.
   */
  cancellations?: Cancellations;
}

/** One claimed cart on its way through the stages. */
export interface CartRun {
  /** The worker's services. */
  readonly deps: WorkerDeps;
  /** The cart as it was claimed (its `attempts` counts this one). */
  readonly cart: Cart;
  /** The claim's owner: only it may move the cart on. */
  readonly owner: string;
  /** Aborts (with a `Stopped` reason) when the cart's work must stop. */
  readonly signal: AbortSignal;
  /**
   * Called by the staging stage when all the cart has left to do is to wait for recalls (no
   * file to fetch until the tape turns): the dispatcher then frees the cart's place among
   * `CARTD_CARTS_IN_FLIGHT`, so that carts whose files are on disk never wait behind it. It
   * may be called more than once; the first call counts.
   */
  readonly onRecallsOnly?: () => void;
}
