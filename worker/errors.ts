/**
 * What went wrong with a cart's work, in one place: the errors the stages throw on purpose
 * ({@linkcode CartFailure}, {@linkcode Stopped}) and {@linkcode classify}, the one function
 * that turns any failure that reaches a cart into a serialisable {@linkcode Classified}: a
 * code, the sentence the cart's status shows, and whether the work is taken up again.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { CartFailure, classify, Stopped } from "./errors.ts";
 * assert.deepEqual(classify(new CartFailure("fileids[0] (id 7): the media is in error")), {
 *   code: "failed",
 *   message: "fileids[0] (id 7): the media is in error",
 *   retryable: false,
 * });
 * assert.equal(classify(new Stopped("shutdown")).retryable, true);
 * assert.equal(classify(new Error("No space left on device (os error 28)")).code, "nospace");
 * ```
 * @module
 */
import { ArchiveError } from "../lib/archive/client.ts";
import { DbUnavailableError } from "../lib/db/db.ts";
import { NO_SPACE, NoSpaceError } from "../lib/space/space.ts";
import { StageError } from "../lib/staging/stage_file.ts";
import { isNoSpace } from "../lib/util/fs_errors.ts";
import { errorMessage } from "../lib/util/log.ts";
import { TaskError } from "../threads/pool.ts";

/**
 * Why a cart's work ended without the cart becoming ready:
 *
 * - `gone`: the cart was deleted or replaced, or its claim was taken (work stops; what is
 *   left is removed once the cart is really dead);
 * - `shutdown`: this worker is stopping (the cart is handed back to the queue);
 * - `claim_unsure`: the claim could not be renewed in time (another worker may take it);
 * - `db_unavailable`: the database went away (the cart resumes once it is back);
 * - `thread_crashed`: a staging thread died (the cart is queued again);
 * - `nospace`: the cart does not fit on the volume ("No Space Available");
 * - `stage`: a file could not be staged (the message names the file and the cause);
 * - `archive`: an archive call failed (the message names the archive id and the cause);
 * - `failed`: the worker gave up on the cart for a reason it wrote for people;
 * - `internal`: anything else (the details go to the log, people get a sentence).
 */
export type CartErrorCode =
  | "gone"
  | "shutdown"
  | "claim_unsure"
  | "db_unavailable"
  | "thread_crashed"
  | "nospace"
  | "stage"
  | "archive"
  | "failed"
  | "internal";

/** A failure as {@linkcode classify} sees it; plain data, so it can be logged or sent. */
export interface Classified {
  /** What kind of failure it is. */
  code: CartErrorCode;
  /** A sentence for people: the cart's message when the cart fails. */
  message: string;
  /**
   * True when the cart keeps its status and its work is taken up again later, by this worker
   * or another; false when the cart fails (or, for `gone`, when there is nothing left to do).
   */
  retryable: boolean;
}

/** The codes with which the cart ends in `error`. */
export const FAILING_CODES: ReadonlySet<CartErrorCode> = new Set<CartErrorCode>([
  "nospace",
  "stage",
  "archive",
  "failed",
  "internal",
]);

/** A failure that ends the cart in `error` with this message. */
export class CartFailure extends Error {
  /** Builds the failure; `message` becomes the cart's message, so it must name the cause. */
  constructor(message: string) {
    super(message);
    this.name = "CartFailure";
  }
}

/** Why the dispatcher stopped a cart's work (see {@linkcode CartErrorCode}). */
export type StopReason = "gone" | "shutdown" | "claim_unsure";

const STOP_MESSAGES: Record<StopReason, string> = {
  gone: "the cart was deleted or replaced",
  shutdown: "the worker is shutting down",
  claim_unsure:
    "the claim could not be renewed in time (database away?); another worker may take it",
};

/** A cart's work was stopped without failing the cart; the abort reason of its signal. */
export class Stopped extends Error {
  /** Builds the reason; its message says why, for the log. */
  constructor(readonly why: StopReason) {
    super(STOP_MESSAGES[why]);
    this.name = "Stopped";
  }
}

/**
 * Classifies any failure that reaches a cart. Stops come first, then the failures after which
 * the cart resumes (database away, thread crashed), then the ones that fail it: no space
 * (checked before the others, as a full disk is what a person must hear about), messages
 * written for people (they name the file and the cause), and anything else, whose message may
 * carry paths or internals and so is replaced by a sentence that points at the log (naming
 * `cartId` when given).
 */
export function classify(error: unknown, cartId?: string): Classified {
  if (error instanceof Stopped) {
    return { code: error.why, message: error.message, retryable: error.why !== "gone" };
  }
  if (error instanceof DbUnavailableError) {
    return { code: "db_unavailable", message: error.message, retryable: true };
  }
  if (error instanceof TaskError && error.code === "crashed") {
    return { code: "thread_crashed", message: error.message, retryable: true };
  }
  if (noSpace(error)) return { code: "nospace", message: NO_SPACE, retryable: false };
  const forPeople = peopleCode(error);
  if (forPeople) return { code: forPeople, message: errorMessage(error), retryable: false };
  const which = cartId ? ` (cart ${cartId})` : "";
  return {
    code: "internal",
    message: "The cart could not be prepared because of an internal error; the worker log " +
      `has the details${which}`,
    retryable: false,
  };
}

/**
 * A full disk or a full cap. Errors that carry a code of their own (a file's stage error,
 * here or from a thread) are trusted on it, so an archive's message that mentions a full disk
 * (the archive's, not ours) is not mistaken for one; only raw errors are read by
 * {@linkcode isNoSpace}.
 */
function noSpace(error: unknown): boolean {
  if (error instanceof NoSpaceError) return true;
  if (error instanceof TaskError || error instanceof StageError) return error.code === "nospace";
  if (error instanceof CartFailure || error instanceof ArchiveError) return false;
  return isNoSpace(error);
}

/** The code of a failure whose message was written for people, or undefined. */
function peopleCode(error: unknown): CartErrorCode | undefined {
  if (error instanceof CartFailure) return "failed";
  if (error instanceof StageError) return "stage";
  if (error instanceof ArchiveError) return "archive";
  if (error instanceof TaskError) {
    if (error.name === "StageError") return "stage";
    if (error.name === "ArchiveError") return "archive";
  }
  return undefined;
}
