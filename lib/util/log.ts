/**
 * Logs that say what happened: one line per event on stderr, a timestamp, a level, a sentence
 * and `key=value` fields (`uid`, `cart`, `file` …) that can be grepped.
 *
 * A line is always one line, whatever a client put in a uid or a path: in the message and in
 * every field, control characters (NUL, ESC, CR, LF, C1 …), Unicode format characters (such as
 * U+202E), line and paragraph separators and lone surrogates are written as `\uXXXX` escapes,
 * and a field value with a space, quote, `=`, backslash or escape is quoted as a JSON string.
 *
 * With `CARTD_LOG_FORMAT=json` ({@linkcode log.setFormat}), each line is one JSON object
 * instead: `time` (ISO 8601), `level` (lowercase), `message`, then the fields as they were
 * given (`uid`, `cart`, `file` …; a field named `time`, `level` or `message` is written as
 * `field_time` …). Those characters are written as `\uXXXX` escapes there too.
 *
 * @example
 * ```ts
 * import { log } from "./log.ts";
 * log.info("cart ready", { uid: "abc", files: 3 });
 * // 2026-11-29T23:59:59.000Z INFO cart ready uid=abc files=3
 * ```
 * @module
 */

/** How much is logged; each level includes the ones after it. */
export type LogLevel = "debug" | "info" | "warn" | "error";
const ORDER: LogLevel[] = ["debug", "info", "warn", "error"];

/** How a line is written: `key=value` text, or one JSON object. */
export type LogFormat = "text" | "json";

/** Extra facts of a log line. */
export type Fields = Record<string, string | number | boolean | null | undefined>;

let threshold = 1;
let lineFormat: LogFormat = "text";

/** The keys of a JSON line that fields may not take. */
const OWN_KEYS = new Set(["time", "level", "message"]);

/** What may not reach the log raw: controls, format characters, separators, lone surrogates. */
const UNSAFE = /[\p{Cc}\p{Cf}\u2028\u2029\ud800-\udfff]/u;
const EVERY_UNSAFE = new RegExp(UNSAFE.source, "gu");

/** `text` with each {@linkcode UNSAFE} character as a `\uXXXX` escape. */
function escaped(text: string): string {
  return text.replace(EVERY_UNSAFE, (c) => {
    const code = c.codePointAt(0)!;
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

/** A field value as it is written: bare when it is plain, else a quoted, escaped JSON string. */
function format(value: string | number | boolean | null): string {
  const text = String(value);
  if (/^[^\s"=\\]+$/.test(text) && !UNSAFE.test(text)) return text;
  return escaped(JSON.stringify(text));
}

/** `text` with each {@linkcode UNSAFE} character as `\uXXXX` escapes of its UTF-16 units. */
function jsonEscaped(text: string): string {
  return text.replace(EVERY_UNSAFE, (c) => {
    let out = "";
    for (let i = 0; i < c.length; i++) out += `\\u${c.charCodeAt(i).toString(16).padStart(4, "0")}`;
    return out;
  });
}

/** One JSON line: time, level, message, then the fields (see the module's doc). */
function jsonLine(level: LogLevel, message: string, fields?: Fields): string {
  const record: Record<string, unknown> = {
    time: new Date().toISOString(),
    level,
    message,
  };
  for (const [key, value] of Object.entries(fields ?? {})) {
    if (value !== undefined) record[OWN_KEYS.has(key) ? `field_${key}` : key] = value;
  }
  // JSON.stringify escapes controls and lone surrogates; format characters and separators
  // can only be inside strings, where an escape means the same.
  return jsonEscaped(JSON.stringify(record));
}

function write(level: LogLevel, message: string, fields?: Fields): void {
  if (ORDER.indexOf(level) < threshold) return;
  if (lineFormat === "json") return console.error(jsonLine(level, message, fields));
  let line = `${new Date().toISOString()} ${level.toUpperCase()} ${escaped(message)}`;
  for (const [key, value] of Object.entries(fields ?? {})) {
    if (value !== undefined) line += ` ${key}=${format(value)}`;
  }
  console.error(line);
}

/** The process-wide logger. */
export const log = {
  debug: (message: string, fields?: Fields) => write("debug", message, fields),
  info: (message: string, fields?: Fields) => write("info", message, fields),
  warn: (message: string, fields?: Fields) => write("warn", message, fields),
  error: (message: string, fields?: Fields) => write("error", message, fields),
  /** Whether lines of `level` are written now (to skip building the fields of one that is not). */
  enabled: (level: LogLevel): boolean => ORDER.indexOf(level) >= threshold,
  /** Sets the lowest level that is written. */
  setLevel(level: LogLevel): void {
    threshold = ORDER.indexOf(level);
  },
  /** Sets how lines are written: `text` (the default) or `json`. */
  setFormat(format: LogFormat): void {
    lineFormat = format;
  },
};

/** Milliseconds as seconds for messages, to a tenth: `600`, `0.3`. */
export function seconds(ms: number): string {
  return String(Math.round(ms / 100) / 10);
}

/** The message of any thrown value, for logs and for people. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
