import assert from "node:assert/strict";
import { ByteBudget } from "./byte_budget.ts";

Deno.test("shares are granted in order while they fit; a give-back counts once", async () => {
  const budget = new ByteBudget(100);
  const order: string[] = [];
  const take = (name: string, bytes: number) =>
    budget.take(bytes).then((give) => {
      order.push(name);
      return give;
    });
  const a = await take("a", 50);
  const b = await take("b", 50);
  const c = take("c", 80); // waits for both
  const d = take("d", 10); // fits, but c came first
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(order, ["a", "b"]);
  assert.equal(budget.waiting, 2);
  a();
  a(); // twice: still once
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(order, ["a", "b"]);
  b();
  const giveC = await c;
  const giveD = await d;
  assert.deepEqual(order, ["a", "b", "c", "d"]);
  assert.equal(budget.used, 90);
  giveC();
  giveD();
  assert.equal(budget.used, 0);
});

Deno.test("a share larger than the budget is granted alone", async () => {
  const budget = new ByteBudget(100);
  const big = await budget.take(500);
  let small = false;
  const next = budget.take(1).then((give) => (small = true, give));
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(small, false);
  big();
  (await next)();
  assert.equal(budget.used, 0);
});
