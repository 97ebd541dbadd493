/**
 * The cart state machine: the one place that decides which status may follow which.
 *
 * A cart moves only forward, `waiting → staging → bundling → ready`, or to `error` from any
 * status that is not final. Stores ask {@linkcode predecessorsOf} when they write a new status,
 * so an update that would move a cart backwards (or out of a final status) never happens.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { assertMove, canMove, TransitionError } from "./state.ts";
 * assert.equal(canMove("staging", "bundling"), true);
 * assert.equal(canMove("ready", "staging"), false);
 * assert.throws(() => assertMove("ready", "staging"), TransitionError);
 * ```
 * @module
 */

/** Every status a cart can have, in the order a healthy cart passes through them. */
export const CART_STATUSES = ["waiting", "staging", "bundling", "ready", "error"] as const;

/**
 * One status of a cart, as `X-Cartd-State` reports it (and `X-Pacifica-Status` when
 * `CARTD_STATUS_WORDS=precise`; see {@linkcode pacificaStatus}).
 */
export type CartStatus = typeof CART_STATUSES[number];

const NEXT: Readonly<Record<CartStatus, readonly CartStatus[]>> = {
  waiting: ["staging", "error"],
  staging: ["bundling", "error"],
  bundling: ["ready", "error"],
  ready: [],
  error: [],
};

/** True when `to` may directly follow `from`. */
export function canMove(from: CartStatus, to: CartStatus): boolean {
  return NEXT[from].includes(to);
}

/** The statuses from which a cart may move to `to` (empty for `waiting`, the start). */
export function predecessorsOf(to: CartStatus): CartStatus[] {
  return CART_STATUSES.filter((from) => canMove(from, to));
}

/** True for `ready` and `error`: no work remains for a cart in such a status. */
export function isFinal(status: CartStatus): boolean {
  return NEXT[status].length === 0;
}

/** Narrows an untrusted string (a database column, say) to a {@linkcode CartStatus}. */
export function parseStatus(value: string): CartStatus {
  if ((CART_STATUSES as readonly string[]).includes(value)) return value as CartStatus;
  throw new Error(`Unknown cart status "${value}": expected one of ${CART_STATUSES.join(", ")}`);
}

/**
 * Which words `X-Pacifica-Status` uses (`CARTD_STATUS_WORDS`): `compatible`, the three that
 * Pacifica's own service and client library know, or `precise`, all five of
 * {@linkcode CART_STATUSES}.
 */
export type StatusWords = "compatible" | "precise";

/**
 * The word `X-Pacifica-Status` gives for a cart in `status`. In `compatible` mode a waiting or
 * bundling cart says `staging`, so only Pacifica's three words (`staging`, `ready`, `error`)
 * are said: Pacifica's client library (`CartAPI.wait_for_cart`) polls only while it reads
 * `staging` and fails on any other word but `ready`. In `precise` mode the status is said as
 * it is. Either way, the precise status goes in `X-Cartd-State`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pacificaStatus } from "./state.ts";
 * assert.equal(pacificaStatus("waiting", "compatible"), "staging");
 * assert.equal(pacificaStatus("bundling", "compatible"), "staging");
 * assert.equal(pacificaStatus("ready", "compatible"), "ready");
 * assert.equal(pacificaStatus("bundling", "precise"), "bundling");
 * ```
 */
export function pacificaStatus(status: CartStatus, words: StatusWords): CartStatus {
  if (words === "precise") return status;
  return status === "waiting" || status === "bundling" ? "staging" : status;
}

/** Thrown when code asks for a move the state machine forbids. */
export class TransitionError extends Error {
  /** Builds the error for the forbidden move from `from` to `to`. */
  constructor(readonly from: CartStatus, readonly to: CartStatus) {
    super(`A cart cannot move from "${from}" to "${to}"`);
    this.name = "TransitionError";
  }
}

/** Throws {@linkcode TransitionError} unless `to` may follow `from`. */
export function assertMove(from: CartStatus, to: CartStatus): void {
  if (!canMove(from, to)) throw new TransitionError(from, to);
}
