import assert from "node:assert/strict";
import { MAX_RETRY_DELAY_MS, nextAttemptAt } from "./sender.ts";

Deno.test("nextAttemptAt: the delay doubles from CARTD_WEBHOOK_RETRY_DELAY, at most an hour, until RETRY_FOR", () => {
  const settings = { retryDelayMs: 10_000, retryForMs: 86_400_000 };
  const now = 1_000_000;
  const delays = [1, 2, 3, 4, 5].map((attempts) =>
    nextAttemptAt({ attempts, createdAt: now }, now, settings)! - now
  );
  const expected = [10_000, 20_000, 40_000, 80_000, 160_000];
  delays.forEach((delay, i) => {
    assert.ok(Math.abs(delay - expected[i]) <= expected[i] * 0.1, `attempt ${i + 1}: ${delay}`);
  });
  const late = nextAttemptAt({ attempts: 30, createdAt: now }, now, settings)! - now;
  assert.ok(late <= MAX_RETRY_DELAY_MS && late >= MAX_RETRY_DELAY_MS * 0.9, `capped: ${late}`);
  // Past RETRY_FOR after the event: given up.
  const short = { retryDelayMs: 10_000, retryForMs: 30_000 };
  assert.ok(nextAttemptAt({ attempts: 1, createdAt: now }, now, short) !== null);
  assert.equal(nextAttemptAt({ attempts: 1, createdAt: now }, now + 25_000, short), null);
});
