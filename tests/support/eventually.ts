/**
 * Waiting in tests for something that happens in its own time (a delivery, a log line, a cart
 * state): the one polling helper of the test suite, for unit and end-to-end tests alike. It
 * imports nothing, so a unit test does not load the cartd harness to use it.
 *
 * The arguments read as a sentence: what is awaited, how to tell, how long at most.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { eventually } from "./eventually.ts";
 * let calls = 0;
 * await eventually("the third call", () => ++calls === 3, 1_000);
 * assert.equal(calls, 3);
 * await assert.rejects(
 *   eventually("never", () => false, 50),
 *   { message: "Timed out after 50 ms waiting until never" },
 * );
 * ```
 * @module
 */

/** How long {@linkcode eventually} waits when not told: 15 s. */
export const EVENTUALLY_MS = 15_000;

/** The pause between two checks. */
const POLL_MS = 25;

/**
 * Calls `check` until it returns (or resolves to) true, pausing 25 ms between calls; throws
 * `Timed out after MS ms waiting until WHAT` when it still does not hold after `timeoutMs`
 * (it is called once more at the end). An error thrown by `check` fails at once: a check for
 * something that fails until it is ready catches the failure itself
 * (`db.all(sql).then(ok, () => false)`).
 */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs: number = EVENTUALLY_MS,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting until ${what}`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
