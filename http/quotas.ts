/**
 * Quotas per principal (issue 17 item 4), with identities on; admins have none. Over one, the
 * request answers `429` with `Retry-After` and a message that names the limit and its setting,
 * and nothing is stored.
 *
 * - requests per second (`CARTD_QUOTA_RATE`): a token bucket per principal in each API
 *   process, as many tokens as the rate, refilled at the rate;
 * - on `POST /{uid}`, from the database (the principal's live carts, {@linkcode CartStore.usage}):
 *   live carts (`CARTD_QUOTA_CARTS`; a POST that replaces one of its carts adds none), files in
 *   the cart (`CARTD_QUOTA_FILES`), files still to stage in its carts in progress, each a
 *   possible tape recall (`CARTD_QUOTA_RECALLS`: the database does not know which are on tape,
 *   so every file not yet staged counts), and bytes held reserved (`CARTD_QUOTA_BYTES`: a POST
 *   is admitted while they are below the limit, since a new cart's size is known only once the
 *   archive has told it).
 *
 * The POST checks read the database before the cart is stored, outside its transaction: two
 * POSTs of one principal at the same moment may both pass the last free place.
 *
 * @module
 */
import type { Config } from "../lib/config/config.ts";
import type { CartStore } from "../lib/store/store.ts";
import type { Principal } from "./access.ts";
import { json } from "./json.ts";

/** `Retry-After` (s) of a refusal over what a principal holds: carts finish or get deleted. */
export const HOLDINGS_RETRY_S = 60;

/** Request-rate buckets kept before the quiet ones are forgotten. */
const BUCKETS_MAX = 10_000;

/** The quotas of one API process. */
export class Quotas {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  /** Quotas of `limits`; `now` is the clock (ms). */
  constructor(readonly limits: Config["quota"], readonly now: () => number = Date.now) {}

  /**
   * Takes one request of `principal` from its bucket: null when it may go on, else the whole
   * seconds until a request would be let through.
   */
  rate(principal: Principal): number | null {
    const rate = this.limits.requestsPerSecond;
    const now = this.now();
    if (this.#buckets.size >= BUCKETS_MAX) this.#prune(now);
    const bucket = this.#buckets.get(principal.name) ?? { tokens: rate, at: now };
    bucket.tokens = Math.min(rate, bucket.tokens + (now - bucket.at) * rate / 1000);
    bucket.at = now;
    this.#buckets.set(principal.name, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return null;
    }
    return Math.max(1, Math.ceil((1 - bucket.tokens) / rate));
  }

  /** Forgets the buckets that are full again (their principals have been quiet a second). */
  #prune(now: number): void {
    for (const [name, bucket] of this.#buckets) {
      if (now - bucket.at >= 1000) this.#buckets.delete(name);
    }
  }

  /**
   * The `429` of a POST of `files` files to `uid` by `principal` that would go over one of its
   * quotas, or null when it fits.
   */
  async admitCart(
    store: CartStore,
    principal: Principal,
    uid: string,
    files: number,
  ): Promise<Response | null> {
    if (principal.admin) return null;
    const { carts, bytes, filesPerCart, recalls } = this.limits;
    const refuse = (what: string, setting: string, limit: number, detail: string) =>
      json(
        { message: `Quota exceeded: ${what} (${setting}=${limit}): ${detail}` },
        429,
        { "Retry-After": String(HOLDINGS_RETRY_S) },
      );
    if (files > filesPerCart) {
      return refuse(
        "files per cart",
        "CARTD_QUOTA_FILES",
        filesPerCart,
        `the cart has ${files}; split it`,
      );
    }
    const [use] = await store.usage(principal.name);
    if (!use) return null;
    const replaced = await store.liveCart(uid, principal.name);
    const replacedPending = replaced && ["waiting", "staging", "bundling"].includes(replaced.status)
      ? replaced.fileCount - replaced.stagedFiles - replaced.errorFiles
      : 0;
    const liveAfter = use.carts - (replaced ? 1 : 0) + 1;
    if (liveAfter > carts) {
      return refuse(
        "live carts",
        "CARTD_QUOTA_CARTS",
        carts,
        `${principal.name} has ${use.carts}; delete one first`,
      );
    }
    const pendingAfter = use.pendingFiles - replacedPending + files;
    if (pendingAfter > recalls) {
      return refuse(
        "files still to stage",
        "CARTD_QUOTA_RECALLS",
        recalls,
        `${principal.name}'s carts in progress have ${use.pendingFiles} and this one ${files}; ` +
          "wait for them to be staged",
      );
    }
    const held = use.reservedBytes - (replaced?.reservedBytes ?? 0);
    if (bytes > 0 && held >= bytes) {
      return refuse(
        "bytes reserved",
        "CARTD_QUOTA_BYTES",
        bytes,
        `${principal.name}'s carts hold ${held}; delete one first`,
      );
    }
    return null;
  }
}
