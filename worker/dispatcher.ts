/**
 * The worker's dispatcher: takes cart ids from the queue, claims each cart, and runs the
 * stages in order.
 *
 * ```
 * claim → waiting → staging   (./stage_cart.ts: sizes, space, files fetched in threads)
 *                 → bundling  (./bundle_cart.ts: files checked, tar planned and written)
 *                 → ready     (or error: ./errors.ts classifies what went wrong)
 *                 → the CRC-32s staging left, measured for a zip (./bundle_cart.ts)
 * ```
 *
 * The database is the truth: the dispatcher claims a cart for a while and renews the claim
 * (a heartbeat) as the stages work; when the cart is deleted or replaced, or the claim is
 * lost, the cart's signal aborts, the work stops and the cart's folder is removed. A cart
 * whose worker died is queued again by any worker's sweep (./sweep.ts) once the claim
 * expires, and resumes with the files that are already staged.
 *
 * `CARTD_CARTS_IN_FLIGHT` bounds the carts that have work to do, not those that wait for tape:
 * a cart whose only files left are being recalled (`CartRun.onRecallsOnly`) gives its place
 * back to the queue at once and goes on in the background (it keeps its claim, its heartbeat
 * and its place in {@linkcode CartWorker.stop}), so a cart whose files are on disk never waits
 * for another cart's tapes. What such carts hold is bounded by their recalls
 * (`CARTD_RECALLS_MAX` over the process; the rest wait in the recall manager's queue).
 *
 * @module
 */
import { hostname } from "node:os";
import type { Cart } from "../lib/store/store.ts";
import { sleep } from "../lib/util/backoff.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { bundleCart, measureCrc32 } from "./bundle_cart.ts";
import type { CartRun, WorkerDeps } from "./context.ts";
import { CartFailure, type Classified, classify, Stopped } from "./errors.ts";
import { stageCart } from "./stage_cart.ts";
import { Sweep } from "./sweep.ts";
import { countCartEvent } from "../lib/util/metrics.ts";

export type { WorkerDeps } from "./context.ts";

/** How long {@linkcode CartWorker.stop} waits for the carts in progress to stop. */
const STOP_WAIT_MS = 10_000;

/** Consumes the queue and drives each cart it claims through the stages. */
export class CartWorker {
  /** This worker's name in claims: host, process and a random part. */
  readonly owner = `${hostname().slice(0, 40)}:${Deno.pid}:${crypto.randomUUID().slice(0, 8)}`;
  /** The carts this worker works on, each with the controller that stops its work. */
  #active = new Map<string, AbortController>();
  #sweep: Sweep;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #stopping = false;
  /** Carts to queue again when this worker stops. */
  #handBack = new Set<string>();
  /** Stops listening to the process's cancellations. */
  #stopListening: (() => void) | undefined;

  /** A worker on `deps`; nothing runs until {@linkcode start}. */
  constructor(readonly deps: WorkerDeps) {
    this.#sweep = new Sweep(deps, (id) => this.#active.has(id));
  }

  /** Starts consuming, and sweeps for orphaned carts now and every half claim period. */
  async start(): Promise<void> {
    const cancellations = this.deps.cancellations ?? this.deps.space.cancellations;
    this.#stopListening = cancellations.onCancel((id) => {
      this.#active.get(id)?.abort(new Stopped("gone"));
    });
    await this.sweep();
    await this.deps.queue.consume((id) => this.#take(id), this.deps.config.limits.cartsInFlight);
    this.#sweeper = setInterval(() => {
      this.sweep().catch((e) => log.warn("sweep failed", { error: errorMessage(e) }));
    }, Math.max(1000, this.deps.config.work.claimTtlMs / 2));
  }

  /** Stops taking work; carts in progress are released for another worker. */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#sweeper);
    this.#stopListening?.();
    for (const id of this.#active.keys()) this.#handBack.add(id);
    for (const c of this.#active.values()) c.abort(new Stopped("shutdown"));
    const deadline = Date.now() + STOP_WAIT_MS;
    while (this.#active.size && Date.now() < deadline) await sleep(50);
    // Claims are released now: queue those carts (and messages that came meanwhile) again, so
    // that another worker takes them at once instead of after the sweep's quiet period.
    for (const id of this.#handBack) {
      await this.deps.queue.publish(id).catch((e) =>
        log.warn("could not hand a cart back to the queue; a sweep queues it later", {
          cart: id,
          error: errorMessage(e),
        })
      );
    }
    await this.deps.queue.close();
  }

  /** Sweeps once (see ./sweep.ts); also runs by itself every half claim period. */
  sweep(): Promise<void> {
    return this.#sweep.run();
  }

  /**
   * The queue's handler: works on the cart ({@linkcode work}), and settles when the work ends
   * or when the cart waits for tape recalls only, whichever comes first. The queue's place
   * (one of `CARTD_CARTS_IN_FLIGHT`) is then free for a cart with work to do, while the cart
   * goes on (it stays in `#active`: a second message for it is dropped, and stop() waits).
   */
  #take(cartId: string): Promise<void> {
    const freed = Promise.withResolvers<void>();
    let gone = false;
    const working = this.work(cartId, () => {
      if (gone) return;
      gone = true;
      log.info("cart waits for tape recalls only: its place among the carts in flight is free", {
        cart: cartId,
      });
      freed.resolve();
    });
    working.catch((e) => {
      if (gone) log.error("cart work failed", { cart: cartId, error: errorMessage(e) });
    });
    return Promise.race([working, freed.promise]);
  }

  /**
   * Handles one queue message: claims the cart and works on it until it is final.
   * `onRecallsOnly` is told when all the cart has left to do is to wait for tape recalls.
   */
  async work(cartId: string, onRecallsOnly?: () => void): Promise<void> {
    const { store, config } = this.deps;
    // A second message for a cart this process works on already (the sweep queues carts that
    // wait unclaimed, and a message may come twice): the claim would let this owner in again,
    // and two runs of one cart would tear each other's files down. The running work covers it.
    if (this.#active.has(cartId)) return;
    if (this.#stopping) return void this.#handBack.add(cartId);
    const controller = new AbortController();
    this.#active.set(cartId, controller);
    let cart: Cart | null;
    try {
      cart = await store.claim(cartId, this.owner, config.work.claimTtlMs);
    } catch (e) {
      log.warn("could not claim cart", { cart: cartId, error: errorMessage(e) });
      this.#active.delete(cartId);
      return;
    }
    if (!cart) {
      this.#active.delete(cartId);
      return;
    }
    const heartbeat = this.#heartbeat(cartId, controller);
    const run: CartRun = {
      deps: this.deps,
      cart,
      owner: this.owner,
      signal: controller.signal,
      onRecallsOnly,
    };
    let again = false;
    try {
      await this.#runStages(run);
    } catch (error) {
      // When the work was stopped, the stop is the cause, whatever the stage threw for it.
      const failure = classify(stopOf(controller.signal) ?? error, cart.id);
      again = await this.#settleFailure(cart, failure, error);
    } finally {
      clearInterval(heartbeat);
      this.#active.delete(cartId);
      await store.release(cartId, this.owner).catch((e) =>
        log.warn("could not release the claim; it expires by itself", {
          uid: cart.uid,
          cart: cartId,
          error: errorMessage(e),
        })
      );
    }
    // Only now: a message that came back while the cart was still active here was dropped.
    if (again) {
      await this.deps.queue.publish(cartId).catch((e) =>
        log.warn("could not queue a cart again; a sweep queues it later", {
          uid: cart.uid,
          cart: cartId,
          error: errorMessage(e),
        })
      );
    }
  }

  /**
   * Renews the claim every third of its life; aborts the cart's work when the claim is lost,
   * and also when it cannot be renewed for most of its life (the database is away): by the
   * time it expires another worker may take the cart, and two workers must never fetch into
   * the same files.
   */
  #heartbeat(cartId: string, controller: AbortController): ReturnType<typeof setInterval> {
    const { store, config } = this.deps;
    let renewed = Date.now();
    return setInterval(async () => {
      try {
        if (!(await store.renew(cartId, this.owner, config.work.claimTtlMs))) {
          controller.abort(new Stopped("gone"));
        } else renewed = Date.now();
      } catch (e) {
        log.debug("could not renew a claim", { cart: cartId, error: errorMessage(e) });
        if (Date.now() - renewed > (config.work.claimTtlMs * 2) / 3) {
          controller.abort(new Stopped("claim_unsure"));
        }
      }
    }, Math.max(200, config.work.claimTtlMs / 3));
  }

  /** Runs the stages a claimed cart still needs, in order, from the status it has. */
  async #runStages(run: CartRun): Promise<void> {
    const { cart } = run;
    const { store, config } = this.deps;
    if (cart.attempts > config.work.maxAttempts) {
      throw new CartFailure(
        `The cart failed ${config.work.maxAttempts} times (worker crashes included); ` +
          "DELETE and POST it again, or see the worker logs",
      );
    }
    log.info("cart claimed", { uid: cart.uid, cart: cart.id, attempt: cart.attempts });
    const started = Date.now();
    let status = cart.status;
    if (status === "waiting") {
      if (!(await store.startStaging(cart.id, this.owner))) throw new Stopped("gone");
      status = "staging";
    }
    if (status === "staging") {
      await stageCart(run);
      if (!(await store.startBundling(cart.id, this.owner))) throw new Stopped("gone");
    }
    const files = await bundleCart(run);
    log.info("cart ready", { uid: cart.uid, cart: cart.id, ms: Date.now() - started });
    await measureCrc32(run, files);
  }

  /**
   * Acts on a classified failure of a cart's work; true when the cart is to be queued again
   * once its claim is released.
   */
  async #settleFailure(cart: Cart, failure: Classified, error: unknown): Promise<boolean> {
    const fields = { uid: cart.uid, cart: cart.id };
    switch (failure.code) {
      case "gone":
        log.info("cart work stopped", { ...fields, why: failure.message });
        await this.#removeIfDead(cart.id);
        return false;
      case "shutdown":
      case "claim_unsure":
        log.info("cart work stopped", { ...fields, why: failure.message });
        return false;
      case "db_unavailable":
        log.warn("database lost during cart work; it will resume", {
          ...fields,
          error: failure.message,
        });
        return false;
      case "thread_crashed":
        log.warn("thread crashed; cart queued again", fields);
        return true;
      default:
        await this.#fail(cart, failure, error);
        return false;
    }
  }

  /** Ends the cart in `error` with the failure's message, and settles what it holds. */
  async #fail(cart: Cart, failure: Classified, error: unknown): Promise<void> {
    const { store, volume, space } = this.deps;
    if (failure.code === "internal") {
      log.error("unexpected error in cart work", {
        uid: cart.uid,
        cart: cart.id,
        error: errorMessage(error),
      });
    }
    if (failure.code === "nospace") {
      // Files it shared stay with the carts that link to them, which count them from now.
      await store.handOverShared(cart.id);
      await volume.remove(cart.id);
      await store.setReserved(cart.id, 0);
    } else {
      // The staged files stay (for `cartd admin fixit`); the reservation becomes what they hold.
      await space.settle(cart.id).catch((e) =>
        log.warn("could not settle the reservation of a failed cart", {
          uid: cart.uid,
          cart: cart.id,
          error: errorMessage(e),
        })
      );
    }
    if (await store.fail(cart.id, failure.message, this.owner)) {
      countCartEvent("failed");
      log.warn("cart failed", { uid: cart.uid, cart: cart.id, error: failure.message });
    } else {
      await this.#removeIfDead(cart.id); // deleted or replaced meanwhile
    }
  }

  /**
   * After work stopped because the cart seemed gone: removes its folder and rows when it is
   * really deleted or replaced. A cart that is still live lost its claim to another worker
   * (ours expired), which is now using the folder: it stays. When the database cannot say,
   * nothing is removed; the sweep removes what is dead later.
   */
  async #removeIfDead(cartId: string): Promise<void> {
    const { store, volume } = this.deps;
    try {
      const row = await store.cart(cartId);
      if (row && (await store.liveCart(row.uid, row.owner))?.id === cartId) return;
      await volume.remove(cartId);
      if (row) await store.forget(cartId);
    } catch (e) {
      log.warn("could not clean up a stopped cart; the sweep will", {
        cart: cartId,
        error: errorMessage(e),
      });
    }
  }
}

/** The {@linkcode Stopped} reason of an aborted signal, or undefined (not aborted, or not stopped). */
function stopOf(signal: AbortSignal): Stopped | undefined {
  return signal.reason instanceof Stopped ? signal.reason : undefined;
}
