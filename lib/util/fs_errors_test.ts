import assert from "node:assert/strict";
import { isNoSpace } from "./fs_errors.ts";

Deno.test("isNoSpace knows Deno's message, Node's code and message, and a thread's code", () => {
  assert.equal(isNoSpace(new Error("No space left on device (os error 28)")), true);
  assert.equal(isNoSpace(new Error("ENOSPC: no space left on device, write")), true);
  assert.equal(isNoSpace(Object.assign(new Error("write"), { code: "ENOSPC" })), true);
  assert.equal(isNoSpace(Object.assign(new Error("task failed"), { code: "nospace" })), true);
  assert.equal(isNoSpace({ name: "Error", message: "no space left on device" }), true);
  assert.equal(isNoSpace("No space left on device (os error 28)"), true);
});

Deno.test("isNoSpace says no to other failures and to non-errors", () => {
  assert.equal(isNoSpace(new Error("Permission denied (os error 13)")), false);
  assert.equal(isNoSpace(Object.assign(new Error("gone"), { code: "ENOENT" })), false);
  assert.equal(isNoSpace(new Error("No Space Available")), false);
  assert.equal(isNoSpace(undefined), false);
  assert.equal(isNoSpace(null), false);
  assert.equal(isNoSpace(28), false);
  assert.equal(isNoSpace({ code: 28, message: 42 }), false);
});
