/**
 * Running a command from a test and reading what it printed: the one subprocess helper of
 * the test suite (GNU tar, unzip, curl, bash, `deno` itself…). It imports nothing, so a unit
 * test does not load the cartd harness to use it (the `cartd` command itself is built by
 * `cartdCommand` in tests/support/harness.ts).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { run } from "./run.ts";
 * const cat = await run("cat", [], { stdin: "hello\n" });
 * assert.deepEqual(cat, { code: 0, stdout: "hello\n", stderr: "" });
 * const missing = await run("no-such-tool-here", [], { ifMissing: "code" });
 * assert.equal(missing.code, -1);
 * ```
 * @module
 */

/** What a finished command did. */
export interface RunResult {
  /** Its exit code; -1 when it is not installed and `ifMissing` is `"code"`. */
  code: number;
  /** Everything it wrote on stdout, decoded as UTF-8. */
  stdout: string;
  /** Everything it wrote on stderr, decoded as UTF-8. */
  stderr: string;
}

/** How {@linkcode run} starts the command. */
export interface RunOptions {
  /** Its working folder (default: the test's). */
  cwd?: string;
  /** What it reads on stdin (default: nothing, stdin is null). */
  stdin?: Uint8Array | string;
  /** Variables added to the inherited environment, or the whole of it with `clearEnv`. */
  env?: Record<string, string>;
  /** Start from an empty environment: the command sees only `env`. */
  clearEnv?: boolean;
  /** Kills the command when aborted (`AbortSignal.timeout(ms)` bounds a test's wait). */
  signal?: AbortSignal;
  /**
   * When `cmd` is not installed: `"throw"` (the default) rejects with
   * `Deno.errors.NotFound`; `"code"` resolves with code -1, for a test that skips a check
   * without the tool.
   */
  ifMissing?: "throw" | "code";
}

/** Runs `cmd args` to its end; resolves with its exit code, stdout and stderr. */
export async function run(
  cmd: string,
  args: string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const input = typeof options.stdin === "string"
    ? new TextEncoder().encode(options.stdin)
    : options.stdin;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      cwd: options.cwd,
      env: options.env,
      clearEnv: options.clearEnv,
      signal: options.signal,
      stdin: input ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    if (options.ifMissing === "code" && error instanceof Deno.errors.NotFound) {
      return { code: -1, stdout: "", stderr: `${cmd}: not installed` };
    }
    throw error;
  }
  if (input) {
    const writer = child.stdin.getWriter();
    await writer.write(input);
    await writer.close();
  }
  const out = await child.output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}
