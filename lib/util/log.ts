/**
 * Logs that say what happened: one line per event on stderr, a timestamp, a level, a sentence
 * and `key=value` fields (`uid`, `cart`, `file` …) that can be grepped.
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

function format(value: string | number | boolean | null): string {
  const text = String(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

function write(level: LogLevel, message: string, fields?: Fields): void {
  if (ORDER.indexOf(level) < threshold) return;
  let line = `${new Date().toISOString()} ${level.toUpperCase()} ${message}`;
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
