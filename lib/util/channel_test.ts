import assert from "node:assert/strict";
import { Channel } from "./channel.ts";

async function take<T>(channel: Channel<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of channel) out.push(item);
  return out;
}

Deno.test("channel: items come out in the order they went in, and the end comes after them", async () => {
  const channel = new Channel<number>();
  for (let i = 0; i < 3000; i++) channel.push(i);
  assert.equal(channel.size, 3000);
  channel.close();
  const got = await take(channel);
  assert.deepEqual(got, Array.from({ length: 3000 }, (_, i) => i));
  assert.equal(channel.size, 0);
});

Deno.test("channel: a consumer waits while it is empty and wakes for each push", async () => {
  const channel = new Channel<string>();
  const seen: string[] = [];
  const consumer = (async () => {
    for await (const item of channel) seen.push(item);
  })();
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(seen, []);
  channel.push("a");
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(seen, ["a"]);
  channel.push("b");
  channel.push("c");
  channel.close();
  await consumer;
  assert.deepEqual(seen, ["a", "b", "c"]);
});

Deno.test("channel: fail() ends the consumer with the producer's error, at once", async () => {
  const channel = new Channel<number>();
  channel.push(1);
  const waiting = take(channel);
  await new Promise((r) => setTimeout(r, 10));
  channel.fail(new Error("the archive went away"));
  await assert.rejects(waiting, /the archive went away/);
});

Deno.test("channel: pushing after close() is the producer's mistake and says so", () => {
  const channel = new Channel<number>();
  channel.close();
  assert.throws(() => channel.push(1), /after close/);
});

Deno.test("channel: room() holds a producer back until the consumer has taken enough, or aborts", async () => {
  const channel = new Channel<number>();
  for (let i = 0; i < 5; i++) channel.push(i);
  await channel.room(5); // already so
  let roomy = false;
  const waiting = channel.room(2).then(() => roomy = true);
  const iterator = channel[Symbol.asyncIterator]();
  await iterator.next();
  await iterator.next();
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(roomy, false, "3 still wait");
  await iterator.next();
  await waiting;
  assert.equal(channel.size, 2);
  const stop = new AbortController();
  const held = channel.room(0, stop.signal);
  stop.abort(new Error("the cart was deleted"));
  await assert.rejects(held, /the cart was deleted/);
  const ended = channel.room(0);
  channel.close();
  await ended;
});
