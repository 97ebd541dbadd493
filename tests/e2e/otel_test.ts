/**
 * cartd under Deno's built-in OpenTelemetry (`OTEL_DENO=true`, issue 16 item 5): a real cartd
 * exports its spans by OTLP/HTTP (JSON) to a receiver of the test's own on 127.0.0.1, and a
 * recall, the staging of each file and a download show as spans carrying the cart's uid.
 *
 * @module
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import { eventually } from "../support/eventually.ts";
import { postCart, waitFor, withCartd } from "../support/harness.ts";

/** One span as the receiver keeps it: its name, service and attributes. */
interface ReceivedSpan {
  name: string;
  service: string;
  attributes: Record<string, string | number>;
  failed: boolean;
}

/** An attribute's value in OTLP JSON. */
type AnyValue = { stringValue?: string; intValue?: string | number; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };

/** The attributes of OTLP JSON as a record. */
function attributesOf(list: KeyValue[] = []): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const { key, value } of list) {
    out[key] = value.stringValue ?? Number(value.intValue ?? value.doubleValue);
  }
  return out;
}

/** An OTLP/HTTP receiver of traces (JSON) on 127.0.0.1 that keeps what it is sent. */
function startReceiver() {
  const spans: ReceivedSpan[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const path = new URL(req.url).pathname;
    const body = await req.text();
    if (path === "/v1/traces") {
      for (const rs of JSON.parse(body).resourceSpans ?? []) {
        const service = String(attributesOf(rs.resource?.attributes)["service.name"] ?? "");
        for (const ss of rs.scopeSpans ?? []) {
          for (const span of ss.spans ?? []) {
            spans.push({
              name: span.name,
              service,
              attributes: attributesOf(span.attributes),
              failed: span.status?.code === 2 || span.status?.code === "STATUS_CODE_ERROR",
            });
          }
        }
      }
    }
    return new Response("{}", { headers: { "Content-Type": "application/json" } });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    spans,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

Deno.test("OTEL_DENO=true: a recall, each file's staging and a download are spans with the cart's uid", async () => {
  await using receiver = startReceiver();
  await using archive = startFakeArchive();
  archive.put("disk", "on disk\n");
  archive.put("tape", "from tape\n", { tapeMs: 300 });
  const env = {
    OTEL_DENO: "true",
    OTEL_SERVICE_NAME: "cartd-otel-test",
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
  };
  await withCartd({ archive, env }, async (c) => {
    const doc = { fileids: [{ id: "disk", path: "a.txt" }, { id: "tape", path: "b.txt" }] };
    assert.equal((await postCart(c.url, "traced", doc)).status, 201);
    assert.equal((await waitFor(c.url, "traced", "ready"))[1], "ready");
    const tar = await (await fetch(c.url + "traced")).arrayBuffer();
    assert.ok(tar.byteLength > 0);
    const ours = () => receiver.spans.filter((s) => s.attributes["cartd.uid"] === "traced");
    await eventually("the spans reach the receiver", () => {
      const names = ours().map((s) => s.name);
      return names.includes("cartd.download") && names.includes("cartd.recall") &&
        names.filter((n) => n === "cartd.stage_file").length === 2;
    }, 20_000).catch((e) => {
      throw new Error(
        `${e.message}; received: ${JSON.stringify(receiver.spans.map((s) => s.name))}`,
      );
    });
    const spans = ours();
    assert.ok(spans.every((s) => s.service === "cartd-otel-test"));
    assert.ok(spans.every((s) => !s.failed), JSON.stringify(spans));
    const recall = spans.find((s) => s.name === "cartd.recall")!;
    assert.equal(recall.attributes["cartd.archive_id"], "tape");
    const staged = spans.filter((s) => s.name === "cartd.stage_file");
    assert.deepEqual(staged.map((s) => s.attributes["cartd.archive_id"]).sort(), ["disk", "tape"]);
    assert.deepEqual(staged.map((s) => Number(s.attributes["cartd.bytes"])).sort((a, b) => a - b), [
      8,
      10,
    ]);
    const download = spans.find((s) => s.name === "cartd.download")!;
    assert.equal(download.attributes["cartd.sent"], tar.byteLength);
  });
});
