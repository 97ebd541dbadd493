/** The classifier's table: every failure that reaches a cart, and what becomes of the cart. */
import assert from "node:assert/strict";
import { ArchiveError } from "../lib/archive/client.ts";
import { DbUnavailableError } from "../lib/db/db.ts";
import { NO_SPACE, NoSpaceError } from "../lib/space/space.ts";
import { StageError } from "../lib/staging/stage_file.ts";
import { TaskError } from "../threads/pool.ts";
import { type CartErrorCode, CartFailure, classify, FAILING_CODES, Stopped } from "./errors.ts";

const INTERNAL = "The cart could not be prepared because of an internal error; the worker log " +
  "has the details (cart c1)";

/** [what, the error, code, the cart's message, retryable]. */
const TABLE: [string, unknown, CartErrorCode, string, boolean][] = [
  ["a deleted cart", new Stopped("gone"), "gone", "the cart was deleted or replaced", false],
  [
    "a worker shutting down",
    new Stopped("shutdown"),
    "shutdown",
    "the worker is shutting down",
    true,
  ],
  [
    "a claim not renewed in time",
    new Stopped("claim_unsure"),
    "claim_unsure",
    "the claim could not be renewed in time (database away?); another worker may take it",
    true,
  ],
  [
    "the database away",
    new DbUnavailableError("the database cannot be reached"),
    "db_unavailable",
    "the database cannot be reached",
    true,
  ],
  [
    "a crashed thread",
    new TaskError("A staging thread crashed (boom); the task will be retried", "crashed"),
    "thread_crashed",
    "A staging thread crashed (boom); the task will be retried",
    true,
  ],
  ["a cart too big for the volume", new NoSpaceError(), "nospace", NO_SPACE, false],
  [
    "a full disk in a thread",
    new TaskError("No Space Available", "nospace", "StageError"),
    "nospace",
    NO_SPACE,
    false,
  ],
  [
    "a full disk while hashing in a thread",
    new TaskError("No space left on device (os error 28)", "nospace", "Error"),
    "nospace",
    NO_SPACE,
    false,
  ],
  [
    "a full disk in the main thread",
    Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" }),
    "nospace",
    NO_SPACE,
    false,
  ],
  [
    "a file that failed in a thread",
    new TaskError("fileids[2] (id 9): the sha1 does not match", "hash", "StageError"),
    "stage",
    "fileids[2] (id 9): the sha1 does not match",
    false,
  ],
  [
    "a file whose archive message mentions a full disk (the archive's)",
    new TaskError(
      "fileids[0] (id 1): the archive answered 500: No space left",
      "archive",
      "StageError",
    ),
    "stage",
    "fileids[0] (id 1): the archive answered 500: No space left",
    false,
  ],
  [
    "a file that failed here",
    new StageError("timeout", "fileids[1] (id 4): the archive sent nothing for 60 s"),
    "stage",
    "fileids[1] (id 4): the archive sent nothing for 60 s",
    false,
  ],
  [
    "an archive call",
    new ArchiveError("7", "the archive answered 404 Not Found to HEAD", { retryable: false }),
    "archive",
    'archive id "7": the archive answered 404 Not Found to HEAD',
    false,
  ],
  [
    "a failure written for people",
    new CartFailure("The tar written to disk does not match its plan; POST the cart again"),
    "failed",
    "The tar written to disk does not match its plan; POST the cart again",
    false,
  ],
  [
    "a pool that cannot start",
    new TaskError("The staging threads cannot start (module not found)"),
    "internal",
    INTERNAL,
    false,
  ],
  [
    "a programming error",
    new TypeError("x is undefined at /srv/cartd/a.ts:3"),
    "internal",
    INTERNAL,
    false,
  ],
  ["a thrown string", "oops", "internal", INTERNAL, false],
];

for (const [what, error, code, message, retryable] of TABLE) {
  Deno.test(`classify: ${what} → ${code}`, () => {
    assert.deepEqual(classify(error, "c1"), { code, message, retryable });
  });
}

Deno.test("classify: the cart fails exactly for the failing codes, and never when retryable", () => {
  for (const [, error] of TABLE) {
    const c = classify(error, "c1");
    if (c.retryable) assert.equal(FAILING_CODES.has(c.code), false, c.code);
    if (FAILING_CODES.has(c.code)) assert.equal(c.retryable, false, c.code);
  }
});

Deno.test("classify: without a cart id the internal sentence names none; it survives JSON", () => {
  const c = classify(new Error("/var/lib/cartd: EACCES"));
  assert.equal(
    c.message,
    "The cart could not be prepared because of an internal error; the worker log has the details",
  );
  assert.deepEqual(JSON.parse(JSON.stringify(c)), c);
});
