/**
 * Classifiers for file-system errors, one home for each.
 *
 * A full disk reaches the program in three shapes: a Node-style error whose `code` is
 * `ENOSPC`, a Deno error whose message is "No space left on device (os error 28)", and an
 * error that crossed from a thread as a plain message (or with the code `"nospace"` that the
 * thread gives it). {@linkcode isNoSpace} knows all three, so every caller that turns a full
 * disk into "No Space Available" asks the same question.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isNoSpace } from "./fs_errors.ts";
 * assert.equal(isNoSpace(new Error("No space left on device (os error 28)")), true);
 * assert.equal(isNoSpace(Object.assign(new Error("write failed"), { code: "ENOSPC" })), true);
 * assert.equal(isNoSpace(Object.assign(new Error("from a thread"), { code: "nospace" })), true);
 * assert.equal(isNoSpace(new Error("Permission denied (os error 13)")), false);
 * ```
 * @module
 */

/** The error codes that mean a full disk: the system's, and the one threads send. */
const NO_SPACE_CODES: ReadonlySet<string> = new Set(["ENOSPC", "nospace"]);

/** The words a full disk puts in a message: Deno's, Node's and the raw errno. */
const NO_SPACE_MESSAGE = /ENOSPC|No space left|os error 28/i;

/**
 * Whether `error` says the disk (or the quota) is full: its `code` is `ENOSPC` or `"nospace"`,
 * or its message (a string thrown is its own message) names ENOSPC, "No space left" or
 * "os error 28". Anything else, `null` and `undefined` included, is not.
 */
export function isNoSpace(error: unknown): boolean {
  if (typeof error === "string") return NO_SPACE_MESSAGE.test(error);
  if (typeof error !== "object" || error === null) return false;
  const { code, message } = error as { code?: unknown; message?: unknown };
  if (typeof code === "string" && NO_SPACE_CODES.has(code)) return true;
  return typeof message === "string" && NO_SPACE_MESSAGE.test(message);
}
