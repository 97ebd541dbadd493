/**
 * What downloads rely on in app/server.ts: where {@linkcode copiesChunks} says so, the server
 * is done with a chunk of an answer's body before it asks for the next, so a bundle may lend
 * its chunks (lib/bundle/plan.ts, `StreamOptions.lend`) to fast and to slow readers.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { planBundle } from "../lib/bundle/plan.ts";
import { copiesChunks, serveLimited } from "./server.ts";

const LIMITS = {
  maxConnections: 16,
  headerTimeoutMs: 0,
  idleTimeoutMs: 0,
  minRate: 0,
  rateWindowMs: 0,
};

/** Reads `response`'s body `pace` ms apart per chunk, and hashes it. */
async function slowHash(response: Response, pace: number): Promise<[string, number]> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of response.body!) {
    hash.update(chunk);
    bytes += chunk.length;
    if (pace > 0) await new Promise((r) => setTimeout(r, pace));
  }
  return [hash.digest("hex"), bytes];
}

Deno.test("serveLimited: a body that fills one buffer again for every chunk arrives whole", async () => {
  if (!copiesChunks()) return; // Deno.serve keeps chunks: nothing may be lent there
  const size = 256 * 1024;
  const count = 48;
  const buffer = new Uint8Array(size);
  const server = serveLimited({ hostname: "127.0.0.1", port: 0, ...LIMITS }, () => {
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (i === count) return controller.close();
        buffer.fill(i++); // the chunk just sent is overwritten: only a copy survives
        controller.enqueue(buffer);
      },
    }, { highWaterMark: 0 });
    return new Response(body, { headers: { "Content-Length": String(size * count) } });
  });
  const want = createHash("sha256");
  for (let c = 0; c < count; c++) want.update(new Uint8Array(size).fill(c));
  const expected: [string, number] = [want.digest("hex"), size * count];
  try {
    for (const pace of [0, 5]) {
      const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
      assert.deepEqual(await slowHash(response, pace), expected, `read ${pace} ms apart`);
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("serveLimited: a bundle's lent chunks arrive as its given ones, read fast or slowly", async () => {
  if (!copiesChunks()) return;
  const dir = await Deno.makeTempDir();
  const files = [];
  for (let i = 0; i < 6; i++) {
    // Sizes around the chunk edges: 64 KiB chunks for 8 MiB, then 1 MiB ones; odd lengths.
    const size = [3 << 20, 100_001, 5 << 20, 7, 2 << 20, 1_234_567][i];
    const data = new Uint8Array(size);
    for (let b = 0; b < size; b += 4096) data[b] = (b / 4096 + i) & 255;
    data[size - 1] = i + 1;
    await Deno.writeFile(`${dir}/${i}`, data);
    files.push({
      path: `d${i}/f${i}`,
      size,
      mtime: 1700000000,
      source: `${dir}/${i}`,
      sha256: createHash("sha256").update(data).digest("hex"),
      crc32: 0,
    });
  }
  const bundle = planBundle(files, { top: "t", format: "tar", manifest: true, mtime: 1700000000 });
  const [want, wantBytes] = await slowHash(new Response(bundle.stream()), 0);
  const server = serveLimited(
    { hostname: "127.0.0.1", port: 0, ...LIMITS },
    () =>
      new Response(bundle.stream(0, bundle.size - 1, undefined, { lend: true }), {
        headers: { "Content-Length": String(bundle.size) },
      }),
  );
  try {
    for (const pace of [0, 2]) {
      const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
      assert.deepEqual(await slowHash(response, pace), [want, wantBytes], `read ${pace} ms apart`);
    }
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
