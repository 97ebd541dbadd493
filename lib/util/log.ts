/**
 * Logs that say what happened: one line per event on stderr, a timestamp, a level, a sentence
 * and `key=value` fields (`uid`, `cart`, `file` …) that can be grepped.
 *
 * A line is always one line, whatever a client put in a uid or a path: in the message and in
 * every field, control characters (NUL, ESC, CR, LF, C1 …), Unicode format characters (such as
 * U+202E), line and paragraph separators and lone surrogates are written as `\uXXXX` escapes,
 * and a field value with a space, quote, `=`, backslash or escape is quoted as a JSON string.
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

/** Extra facts of a log line. */
export type Fields = Record<string, string | number | boolean | null | undefined>;

let threshold = 1;

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

function write(level: LogLevel, message: string, fields?: Fields): void {
  if (ORDER.indexOf(level) < threshold) return;
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
  /** Sets the lowest level that is written. */
  setLevel(level: LogLevel): void {
    threshold = ORDER.indexOf(level);
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
