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

Deno.test("https: TLS to the checked address, the certificate checked against the URL's name", async () => {
  // A certificate for hooks.test that no trusted authority signed.
  const dir = await Deno.makeTempDir({ prefix: "cartd-test-tls-" });
  try {
    const made = await new Deno.Command("openssl", {
      args: [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=hooks.test",
        "-addext",
        "subjectAltName=DNS:hooks.test",
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.ok(made.success, new TextDecoder().decode(made.stderr));
    let requests = 0;
    let handshakes = 0;
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert: await Deno.readTextFile(`${dir}/cert.pem`),
      key: await Deno.readTextFile(`${dir}/key.pem`),
      onListen() {},
      onError() {
        return new Response(null, { status: 500 });
      },
    }, () => {
      requests++;
      return new Response("ok");
    });
    // Count TLS connections that reach the server at all (through a plain TCP relay).
    const relay = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const relaying = (async () => {
      for await (const conn of relay) {
        handshakes++;
        const upstream = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
        conn.readable.pipeTo(upstream.writable).catch(() => {});
        upstream.readable.pipeTo(conn.writable).catch(() => {});
      }
    })().catch(() => {});
    try {
      const port = (relay.addr as Deno.NetAddr).port;
      const resolver = () => Promise.resolve([{ address: "127.0.0.1", family: 4 }]);
      const result = await attemptDelivery(
        event(`https://hooks.test:${port}/in`),
        options({ resolver }),
      );
      assert.equal(result.outcome, "error", JSON.stringify(result));
      assert.match(result.error!, /certificate|issuer|self.signed/i);
      assert.equal(handshakes, 1, "the connection went to the checked address");
      assert.equal(requests, 0, "nothing was sent to an endpoint whose certificate fails");
    } finally {
      relay.close();
      await relaying;
      await server.shutdown();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
