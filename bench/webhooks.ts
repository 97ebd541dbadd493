/**
 * `deno task bench webhooks` (or `deno run -A bench/webhooks.ts`): does a bad webhook endpoint
 * slow staging? One cartd (SQLite, in-process queue) against the fake archive stages rounds of
 * 100 carts of 4 × 4 KiB files; in each round every cart names the same kind of webhook:
 *
 * - `none`: no webhook (the baseline);
 * - `hang`: an endpoint on 127.0.0.1 that reads the request and never answers
 *   (`CARTD_WEBHOOK_TIMEOUT=10`: each attempt holds its connection for 10 s);
 * - `500`: an endpoint that answers 500 at once (every event is tried again and again).
 *
 * The kinds take turns, round after round, and the figure is the median time from the first
 * POST to the last cart ready, with its ratio to `none` in the same run. It measures and
 * prints; it asserts nothing.
 *
 * @module
 */
import { startFakeArchive } from "../tests/support/fake_archive.ts";
import { cartStatus, postCart, startCartd } from "../tests/support/harness.ts";
import { startHangingReceiver, startReceiver } from "../tests/support/webhook_receiver.ts";

const CARTS = 100;
const FILES = 4;
const ROUNDS = 3;
const SECRET = "bench-secret-0123456789";

/** The median of `values`. */
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Runs the benchmark; returns the exit code. */
export async function main(): Promise<number> {
  await using archive = startFakeArchive();
  await using hanging = startHangingReceiver(SECRET);
  await using failing = startReceiver(SECRET);
  failing.answer(() => new Response("no", { status: 500 }));
  for (let f = 0; f < FILES; f++) archive.put(`f${f}`, new Uint8Array(4096).fill(f));
  await using cartd = await startCartd({
    env: {
      ARCHIVE_INTERFACE_URL: archive.url,
      CARTD_LOG_LEVEL: "warn",
      CARTD_WEBHOOK_SECRET: SECRET,
      CARTD_WEBHOOK_ALLOW: "127.0.0.1",
      CARTD_WEBHOOK_TIMEOUT: "10",
      CARTD_WEBHOOK_RETRY_DELAY: "0.1",
    },
  });
  const kinds: Record<string, string | undefined> = {
    none: undefined,
    hang: hanging.url,
    "500": failing.url,
  };
  const times: Record<string, number[]> = { none: [], hang: [], "500": [] };
  let n = 0;
  for (let round = 0; round < ROUNDS; round++) {
    for (const [kind, webhook] of Object.entries(kinds)) {
      const uids: string[] = [];
      const t0 = performance.now();
      for (let c = 0; c < CARTS; c++) {
        const uid = `r${round}-${kind}-${n++}`;
        const doc = {
          fileids: Array.from({ length: FILES }, (_, f) => ({ id: `f${f}`, path: `d/${f}` })),
          ...(webhook ? { webhook } : {}),
        };
        const res = await postCart(cartd.url, uid, doc);
        await res.body?.cancel();
        if (res.status !== 201) throw new Error(`POST ${uid}: ${res.status}`);
        uids.push(uid);
      }
      for (const uid of uids) {
        for (;;) {
          const [, status, message] = await cartStatus(cartd.url, uid);
          if (status === "ready") break;
          if (status === "error") throw new Error(`${uid} failed: ${message}`);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
      times[kind].push((performance.now() - t0) / 1000);
    }
  }
  const base = median(times.none);
  console.log(`${CARTS} carts of ${FILES} × 4 KiB, POST → all ready, median of ${ROUNDS} rounds:`);
  for (const kind of Object.keys(kinds)) {
    const m = median(times[kind]);
    console.log(
      `  webhook ${kind.padEnd(4)} ${m.toFixed(2)} s  (${(m / base).toFixed(2)} × none)  ` +
        `rounds: ${times[kind].map((t) => t.toFixed(2)).join(", ")}`,
    );
  }
  console.log(
    `  attempts seen: hang ${hanging.received.length}, 500 ${failing.received.length}`,
  );
  return 0;
}

if (import.meta.main) Deno.exit(await main());
