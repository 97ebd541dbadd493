/**
 * Quotas per principal (issue 17 item 4), with identities on; admins have none. Over one, the
 * request answers `429` with `Retry-After` and a message that names the limit and its setting,
 * and nothing is stored.
 *
 * - requests per second (`CARTD_QUOTA_RATE`): a token bucket per principal in each API
 *   process, as many tokens as the rate, refilled at the rate;
 * - on `POST /{uid}`, from the database (the principal's live carts, `CartStore.usage`):
 *   live carts (`CARTD_QUOTA_CARTS`; a POST that replaces one of its carts adds none), files in
 *   the cart (`CARTD_QUOTA_FILES`), files still to stage in its carts in progress
 *   (`CARTD_QUOTA_RECALLS`), and bytes held reserved (`CARTD_QUOTA_BYTES`: a POST is admitted
 *   while they are below the limit, since a new cart's size is known only once the archive has
 *   told it).
 *
 * "Files still to stage" is what the database can tell of outstanding recalls: which of them
 * wait on tape is known only to the worker recalling them (lib/staging/recalls.ts keeps it in
 * memory; a file's row says `pending` until it is staged), so every file of the principal's
 * carts in progress that is neither staged nor failed counts, whether on tape, on disk or
 * being fetched (docs/security.md).
 *
 * The POST checks run inside the transaction that stores the cart
 * (`CartStore.createCart`'s `admit`), with a principal's creations serialised: of two
 * POSTs at once for the last place, one passes and the other is refused, with nothing stored.
 *
 * @module
 */
import type { Config } from "../lib/config/config.ts";
import type { Admission } from "../lib/store/store.ts";
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
   * The `429` of a POST of `files` files by `principal` that goes over its files per cart
   * (which needs no look at the database), or null.
   */
  filesPerCart(principal: Principal, files: number): Response | null {
    const limit = this.limits.filesPerCart;
    if (principal.admin || files <= limit) return null;
    return new QuotaExceeded(
      "files per cart",
      "CARTD_QUOTA_FILES",
      limit,
      `the cart has ${files}; split it`,
    ).answer();
  }

  /**
   * The check of a POST of `files` files by `principal` against what it holds, for
   * `CartStore.createCart` to run inside its transaction (null for an admin: no
   * quota). It throws {@linkcode QuotaExceeded} over live carts, files still to stage or
   * bytes reserved.
   */
  admission(principal: Principal, files: number): ((admission: Admission) => void) | null {
    if (principal.admin) return null;
    const { carts, bytes, recalls } = this.limits;
    return ({ use, replaced }) => {
      if (!use) return;
      const replacedPending = replaced && IN_PROGRESS.has(replaced.status)
        ? replaced.fileCount - replaced.stagedFiles - replaced.errorFiles
        : 0;
      const liveAfter = use.carts - (replaced ? 1 : 0) + 1;
      if (liveAfter > carts) {
        throw new QuotaExceeded(
          "live carts",
          "CARTD_QUOTA_CARTS",
          carts,
          `${principal.name} has ${use.carts}; delete one first`,
        );
      }
      const pendingAfter = use.pendingFiles - replacedPending + files;
      if (pendingAfter > recalls) {
        throw new QuotaExceeded(
          "files still to stage",
          "CARTD_QUOTA_RECALLS",
          recalls,
          `${principal.name}'s carts in progress have ${use.pendingFiles} and this one ${files}; ` +
            "wait for them to be staged",
        );
      }
      const held = use.reservedBytes - (replaced?.reservedBytes ?? 0);
      if (bytes > 0 && held >= bytes) {
        throw new QuotaExceeded(
          "bytes reserved",
          "CARTD_QUOTA_BYTES",
          bytes,
          `${principal.name}'s carts hold ${held}; delete one first`,
        );
      }
    };
  }
}

/** The statuses of a cart in progress, whose unstaged files count as still to stage. */
const IN_PROGRESS: ReadonlySet<string> = new Set(["waiting", "staging", "bundling"]);

/** A POST over one of its principal's quotas: {@linkcode QuotaExceeded.answer} is its `429`. */
export class QuotaExceeded extends Error {
  /** `what` the quota is, its `setting` and `limit`, and `detail` for the client. */
  constructor(what: string, setting: string, limit: number, detail: string) {
    super(`Quota exceeded: ${what} (${setting}=${limit}): ${detail}`);
    this.name = "QuotaExceeded";
  }

  /** The `429` with `Retry-After` ({@linkcode HOLDINGS_RETRY_S}) and the message. */
  answer(): Response {
    return json({ message: this.message }, 429, { "Retry-After": String(HOLDINGS_RETRY_S) });
  }
}
