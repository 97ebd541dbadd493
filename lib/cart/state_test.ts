import assert from "node:assert/strict";
import {
  assertMove,
  canMove,
  CART_STATUSES,
  isFinal,
  pacificaStatus,
  parseStatus,
  predecessorsOf,
  TransitionError,
} from "./state.ts";

Deno.test("a cart moves only forward, or to error from a status that is not final", () => {
  const allowed = CART_STATUSES.flatMap((from) =>
    CART_STATUSES.filter((to) => canMove(from, to)).map((to) => `${from}→${to}`)
  );
  assert.deepEqual(allowed, [
    "waiting→staging",
    "waiting→error",
    "staging→bundling",
    "staging→error",
    "bundling→ready",
    "bundling→error",
  ]);
});

Deno.test("ready and error are final; nothing leads back to waiting", () => {
  assert.deepEqual(CART_STATUSES.filter(isFinal), ["ready", "error"]);
  assert.deepEqual(predecessorsOf("waiting"), []);
  assert.deepEqual(predecessorsOf("error"), ["waiting", "staging", "bundling"]);
  assert.deepEqual(predecessorsOf("ready"), ["bundling"]);
});

Deno.test("assertMove throws a TransitionError that names both statuses", () => {
  assert.throws(() => assertMove("ready", "staging"), (e: unknown) => {
    assert.ok(e instanceof TransitionError);
    assert.equal(e.message, 'A cart cannot move from "ready" to "staging"');
    return true;
  });
  assertMove("staging", "bundling");
});

Deno.test("parseStatus accepts the five statuses and rejects anything else", () => {
  for (const s of CART_STATUSES) assert.equal(parseStatus(s), s);
  assert.throws(() => parseStatus("done"), /Unknown cart status "done"/);
});

Deno.test("pacificaStatus: compatible says staging for waiting and bundling; precise says all five", () => {
  assert.deepEqual(CART_STATUSES.map((s) => pacificaStatus(s, "compatible")), [
    "staging",
    "staging",
    "staging",
    "ready",
    "error",
  ]);
  assert.deepEqual(CART_STATUSES.map((s) => pacificaStatus(s, "precise")), [...CART_STATUSES]);
});
