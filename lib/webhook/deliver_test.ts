import assert from "node:assert/strict";
import {
  startHangingReceiver,
  startReceiver,
  verifies,
} from "../../tests/support/webhook_receiver.ts";
import { AllowList } from "./allow.ts";
import { attemptDelivery, type AttemptOptions, signature } from "./deliver.ts";

const SECRET = "unit-secret-0123456789";
const loopbackOnly = new AllowList(["127.0.0.1"]);
const options = (over: Partial<AttemptOptions> = {}): AttemptOptions => ({
  secret: SECRET,
  allow: loopbackOnly,
  timeoutMs: 2000,
  userAgent: "cartd-test",
  ...over,
});
const event = (url: string) => ({ id: "ev-1", type: "cart.ready", url, body: '{"id":"ev-1"}' });

Deno.test("signature: sha256= and the HMAC of timestamp.body, as a receiver checks it", () => {
  const value = signature(SECRET, "1700000000", "{}");
  assert.equal(verifies(SECRET, "1700000000", "{}", value), true);
  assert.equal(verifies(SECRET, "1700000001", "{}", value), false);
  assert.equal(verifies("another-secret-0123", "1700000000", "{}", value), false);
});

Deno.test("an attempt connects to the addresses checked, not to what the name resolves to later", async () => {
  await using receiver = startReceiver(SECRET);
  const port = receiver.port;
  // "hooks.test" is answered by this resolver only: the connection cannot have looked it up.
  let lookups = 0;
  const answers = ["127.0.0.1", "10.0.0.1"];
  const resolver = () => Promise.resolve([{ address: answers[lookups++], family: 4 }]);
  const url = `http://hooks.test:${port}/in?x=1`;
  const first = await attemptDelivery(event(url), options({ resolver }));
  assert.deepEqual(first, { outcome: "delivered", status: 200 });
  assert.equal(receiver.received.length, 1);
  const [got] = receiver.received;
  assert.equal(got.headers.get("host"), `hooks.test:${port}`);
  assert.equal(got.path, "/in?x=1");
  assert.equal(got.body, '{"id":"ev-1"}');
  assert.equal(got.headers.get("x-cartd-event-id"), "ev-1");
  assert.equal(got.headers.get("user-agent"), "cartd-test");
  assert.ok(got.signed);
  // Rebound: the name now resolves to a private address; nothing is sent.
  const second = await attemptDelivery(event(url), options({ resolver }));
  assert.equal(second.outcome, "refused");
  assert.match(second.error!, /hooks\.test resolves to 10\.0\.0\.1/);
  assert.equal(receiver.received.length, 1);
  assert.equal(lookups, 2);
});

Deno.test("an attempt reads no answer body, follows no redirect, and has one time limit", async () => {
  await using receiver = startReceiver(SECRET);
  let pulled = 0;
  let cancelled = false;
  receiver.answer((_, n) => {
    if (n === 1) {
      // An endless body: the attempt must end at the status anyway.
      return new Response(
        new ReadableStream({
          pull(controller) {
            pulled++;
            controller.enqueue(new Uint8Array(65536));
          },
          cancel() {
            cancelled = true;
          },
        }),
        { status: 200 },
      );
    }
    if (n === 2) {
      return new Response(null, { status: 302, headers: { Location: "http://127.0.0.1:1/" } });
    }
    return new Response("no", { status: 503 });
  });
  assert.deepEqual(await attemptDelivery(event(receiver.url), options()), {
    outcome: "delivered",
    status: 200,
  });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.ok(cancelled, "the answer's body was cut off");
  assert.ok(pulled < 100, `at most a few chunks were sent before the connection went (${pulled})`);
  const redirect = await attemptDelivery(event(receiver.url), options());
  assert.equal(redirect.outcome, "3xx");
  assert.match(redirect.error!, /302 \(a redirect, which cartd does not follow\)/);
  assert.equal(receiver.received.length, 2, "the redirect's target was not called");
  assert.equal((await attemptDelivery(event(receiver.url), options())).outcome, "5xx");

  await using hanging = startHangingReceiver(SECRET);
  const started = performance.now();
  const late = await attemptDelivery(event(hanging.url), options({ timeoutMs: 300 }));
  assert.deepEqual(late, { outcome: "timeout", error: "no answer within 300 ms" });
  assert.ok(performance.now() - started < 2000);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(hanging.received[0].gone.aborted, true, "the connection was closed");

  // Nobody listens: an error, not a hang.
  const closed = await attemptDelivery(event("http://127.0.0.1:1/"), options());
  assert.equal(closed.outcome, "error");
});
