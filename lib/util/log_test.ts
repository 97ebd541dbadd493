/** Tests of the log's text format: one line per event, whatever a client put in a field. */
import assert from "node:assert/strict";
import { log } from "./log.ts";

/** The lines `fn` logs (console.error is caught meanwhile). */
function logged(fn: () => void): string[] {
  const lines: string[] = [];
  const original = console.error;
  console.error = (line: string) => void lines.push(line);
  try {
    fn();
  } finally {
    console.error = original;
  }
  return lines;
}

/** A line without its timestamp. */
const rest = (line: string) => line.replace(/^\S+ /, "");

Deno.test("plain values stay bare; spaces, quotes, = and backslashes are quoted", () => {
  const [line] = logged(() =>
    log.info("cart ready", { uid: "abc-1", files: 3, ok: true, none: null, skip: undefined })
  );
  assert.equal(rest(line), "INFO cart ready uid=abc-1 files=3 ok=true none=null");
  const [quoted] = logged(() => log.info("x", { a: "b c", q: 'say "hi"', e: "k=v", s: "a\\b" }));
  assert.equal(rest(quoted), String.raw`INFO x a="b c" q="say \"hi\"" e="k=v" s="a\\b"`);
});

Deno.test("NUL, ESC, CR/LF, C1, format characters and lone surrogates are escaped everywhere", () => {
  const uid = "a\u0000b\u001b[31mred\r\nINFO forged line\u0085\u202e\u2028\ud800z";
  const lines = logged(() => log.warn(`no cart ${uid}`, { uid, path: "x\u007f" }));
  assert.equal(lines.length, 1);
  const [line] = lines;
  // deno-lint-ignore no-control-regex
  assert.doesNotMatch(line, /[\u0000-\u001f\u007f-\u009f\u202e\u2028]/);
  assert.ok(line.isWellFormed());
  assert.equal(
    rest(line),
    String
      .raw`WARN no cart a\u0000b\u001b[31mred\u000d\u000aINFO forged line\u0085\u202e\u2028\ud800z` +
      String.raw` uid="a\u0000b\u001b[31mred\r\nINFO forged line\u0085\u202e\u2028\ud800z"` +
      String.raw` path="x\u007f"`,
  );
  // A character outside the BMP is escaped whole.
  assert.equal(
    rest(logged(() => log.info("t", { tag: "\u{e0041}" }))[0]),
    String.raw`INFO t tag="\u{e0041}"`,
  );
});

Deno.test("CARTD_LOG_FORMAT=json: one JSON object a line, with time, level, message and fields", () => {
  log.setFormat("json");
  try {
    const lines = logged(() => {
      log.warn("cart failed", { uid: "a b\nc", cart: "id-1", files: 3, ok: false, none: null });
      log.info("odd\u202e\u2028", { message: "the archive's words", skip: undefined });
    });
    assert.equal(lines.length, 2);
    for (const line of lines) assert.doesNotMatch(line, /[\n\r\u2028\u2029\u202e]/);
    const [first, second] = lines.map((line) => JSON.parse(line));
    assert.ok(!Number.isNaN(Date.parse(first.time)));
    assert.deepEqual({ ...first, time: 0 }, {
      time: 0,
      level: "warn",
      message: "cart failed",
      uid: "a b\nc",
      cart: "id-1",
      files: 3,
      ok: false,
      none: null,
    });
    assert.equal(second.message, "odd\u202e\u2028");
    assert.equal(second.field_message, "the archive's words");
    assert.equal("skip" in second, false);
  } finally {
    log.setFormat("text");
  }
});
