/**
 * Operators' commands (`cartd admin ...`).
 *
 * @module
 */
import type { Config } from "./config.ts";

/** Runs `cartd admin <args>`; returns the exit code. */
export function admin(
  _config: Config,
  args: string[],
  _flags: Record<string, unknown>,
): Promise<number> {
  console.error(`cartd admin: unknown command "${args[0] ?? ""}"; see 'cartd admin --help'`);
  return Promise.resolve(2);
}
