/**
 * A download client for the benchmarks: `deno run --allow-net bench/fetch_client.ts URL
 * [START-END]` GETs URL with Deno's fetch, reads the body into nothing, and prints
 * `{"status": 200, "bytes": N, "seconds": S}` (seconds from the request to the last byte).
 *
 * @module
 */
const [url, range] = Deno.args;
const t0 = performance.now();
const res = await fetch(url, { headers: range ? { Range: `bytes=${range}` } : {} });
let bytes = 0;
if (res.body) {
  const reader = res.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    bytes += value.byteLength;
  }
}
const seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify({ status: res.status, bytes, seconds }));
