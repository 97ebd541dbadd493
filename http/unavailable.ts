/**
 * The one place that decides which failures of a request mean "the service cannot do this
 * right now" (503 with `Retry-After`) rather than a bug (500): the database away or busy, the
 * database that cannot be written (full, read-only, failing disk), and a full volume. The
 * routes' error handler asks {@linkcode unavailable}; no route matches error text itself.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { DbWriteError } from "../lib/db/db.ts";
 * import { unavailable } from "./unavailable.ts";
 * const full = unavailable(new DbWriteError("full", "database or disk is full"));
 * assert.match(full!.message, /database or disk is full/);
 * assert.match(unavailable(new Error("No space left on device (os error 28)"))!.message, /full/);
 * assert.equal(unavailable(new TypeError("x is undefined")), null);
 * ```
 * @module
 */
import { DbUnavailableError, DbWriteError } from "../lib/db/db.ts";
import { isNoSpace } from "../lib/util/fs_errors.ts";

/** How a request that cannot be served now is answered. */
export interface Unavailable {
  /** The answer's message, for the client: it names the cause, never a server path. */
  message: string;
  /** Seconds the client should wait before it tries again (`Retry-After`). */
  retryAfterSeconds: number;
  /** What the log says about it (the driver's words included). */
  logMessage: string;
}

/** What a client hears for each cause a database write fails on. */
const WRITE_ADVICE: Record<DbWriteError["why"], string> = {
  full: "the volume that holds it has no space left; try again once space is freed",
  readonly: "it is read-only for cartd; reads still work, try writes again later",
  io: "its disk failed the write; try again later",
};

/**
 * The 503 that `error` stands for, or null when it is no temporary unavailability (the caller
 * answers 500). Checked in this order: a database that cannot be written, a database away or
 * busy, a full volume (ENOSPC from any file write, see {@linkcode isNoSpace}).
 */
export function unavailable(error: unknown): Unavailable | null {
  if (error instanceof DbWriteError) {
    return {
      message: `${error.message}: ${WRITE_ADVICE[error.why]}`,
      retryAfterSeconds: 30,
      logMessage: "the database cannot be written",
    };
  }
  if (error instanceof DbUnavailableError) {
    return {
      message: "The cart database is unavailable right now; try again shortly",
      retryAfterSeconds: 5,
      logMessage: "database unavailable",
    };
  }
  if (isNoSpace(error)) {
    return {
      message: "The volume is full (no space left on device); try again once space is freed",
      retryAfterSeconds: 30,
      logMessage: "the volume is full",
    };
  }
  return null;
}
