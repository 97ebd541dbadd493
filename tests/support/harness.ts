/**
 * End-to-end test harness: runs the real `cartd` command as a child process (a real HTTP
 * server, real SQLite or MySQL, real threads) and talks to it over HTTP like a client.
 *
 * `CARTD_TEST_ENTRY` picks what runs: `main.ts` (default) or the bundled single-file build
 * (`dist/cartd.js`), started with the permissions the compiled binary gets.
 *
 * Polling and running other commands are not here but in ./eventually.ts and ./run.ts, which
 * unit tests use without loading this harness.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { MALLOC_TUNABLES, UNSTABLE_FLAGS, V8_FLAGS } from "../../tools/compile.ts";
import { eventually } from "./eventually.ts";
import { type FakeArchive, startFakeArchive } from "./fake_archive.ts";

/** The repository root. */
export const ROOT: string = fileURLToPath(new URL("../../", import.meta.url));

/** The module `cartd` runs from in tests. */
export const ENTRY: string = Deno.env.get("CARTD_TEST_ENTRY") ?? `${ROOT}main.ts`;

/** The permissions the compiled binary gets (see the `compile` task). */
export function permissions(volume: string): string[] {
  return [
    "--allow-net",
    "--allow-env",
    "--allow-sys=hostname,statfs,getPriority,setPriority",
    `--allow-read=${volume},${ROOT}`,
    `--allow-write=${volume}`,
  ];
}

/** A running cartd process. */
export interface Cartd {
  /** Base URL of the API (ends with "/"); empty for a worker-only process. */
  url: string;
  /** VOLUME_PATH of this process. */
  volume: string;
  process: Deno.ChildProcess;
  /** Everything the process printed on stderr so far. */
  output(): string;
  /** SIGTERM, then waits for the exit. */
  stop(): Promise<void>;
  /** SIGKILL, then waits for the exit: a crash. */
  kill(): Promise<void>;
  /**
   * Stops the process (as {@linkcode Cartd.stop}) and removes its volume when
   * {@linkcode startCartd} made it, which `await using` does at the end of the test.
   */
  [Symbol.asyncDispose](): Promise<void>;
}

/** A temporary folder that `await using` removes (with everything in it) at the end of scope. */
export interface TempDir extends AsyncDisposable {
  /** Its path. */
  path: string;
}

/** Makes a temporary folder named `prefix…`; see {@linkcode TempDir}. */
export async function tempDir(prefix = "cartd-test-"): Promise<TempDir> {
  const path = await Deno.makeTempDir({ prefix });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }).catch(() => {}),
  };
}

/** Settings that make tests fast: short polls, retries and claims. */
export const FAST_ENV: Record<string, string> = {
  CARTD_POLL_INITIAL: "0.05",
  CARTD_POLL_MAX: "0.3",
  CARTD_RETRY_DELAY: "0.05",
  CARTD_REQUEST_TIMEOUT: "3",
  CARTD_CLAIM_TTL: "2",
  CARTD_LOG_LEVEL: "info",
};

/**
 * The `cartd ARGS` command as tests run it: the permissions of the compiled binary, exactly
 * `env` (plus VOLUME_PATH and NO_COLOR; nothing inherited), stdout kept only when asked for;
 * `entry` runs another module than {@linkcode ENTRY} (a benchmark's copy of an older commit,
 * which must lie under {@linkcode ROOT} to be readable).
 */
export function cartdCommand(
  args: string[],
  volume: string,
  env: Record<string, string>,
  options: {
    stdout?: "piped" | "null";
    signal?: AbortSignal;
    entry?: string;
    /** Runs it in `sh` under `ulimit -n fdLimit` (the soft limit of open descriptors). */
    fdLimit?: number;
  } = {},
): Deno.Command {
  const entry = options.entry ?? ENTRY;
  const run = ["run", V8_FLAGS, UNSTABLE_FLAGS, ...permissions(volume), entry, ...args];
  const limited = options.fdLimit !== undefined;
  return new Deno.Command(limited ? "sh" : Deno.execPath(), {
    args: limited
      ? ["-c", `ulimit -n ${options.fdLimit} && exec "$@"`, "sh", Deno.execPath(), ...run]
      : run,
    env: {
      ...(limited ? { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" } : {}),
      VOLUME_PATH: volume,
      NO_COLOR: "1",
      GLIBC_TUNABLES: MALLOC_TUNABLES,
      ...env,
    },
    clearEnv: true,
    stdin: "null",
    stdout: options.stdout ?? "null",
    stderr: "piped",
    signal: options.signal,
  });
}

/** A child process whose stderr is collected as it comes. */
export interface Collected {
  process: Deno.ChildProcess;
  /** Everything it printed on stderr so far. */
  output(): string;
  /** Its exit code, once it has exited and its stderr is read to the end. */
  exited: Promise<number>;
  /** Sends `signal` (unless it has exited) and waits for the exit. */
  stop(signal?: Deno.Signal): Promise<number>;
}

/**
 * Spawns `command` (its stderr piped) and collects the stderr; `onText` sees the whole text
 * after every chunk (to wait for a line, say).
 */
export function spawnCollecting(
  command: Deno.Command,
  onText: (text: string) => void = () => {},
): Collected {
  const child = command.spawn();
  let text = "";
  const decoder = new TextDecoder();
  const pump = (async () => {
    for await (const chunk of child.stderr) {
      text += decoder.decode(chunk, { stream: true });
      onText(text);
    }
  })();
  let done = false;
  const exited = (async () => {
    const status = await child.status;
    await pump;
    done = true;
    return status.code;
  })();
  return {
    process: child,
    output: () => text,
    exited,
    async stop(signal: Deno.Signal = "SIGTERM") {
      if (!done) {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
      }
      return await exited;
    },
  };
}

/**
 * Waits until some cart on `volume` has its first file staged with `size` bytes, and returns
 * that file's path (tests remove it to make bundling fetch it again).
 */
export async function stagedFirstFile(volume: string, size: number, what: string): Promise<string> {
  let staged = "";
  await eventually(what, async () => {
    for await (const cart of Deno.readDir(`${volume}/carts`)) {
      const path = `${volume}/carts/${cart.name}/files/0`;
      if (await Deno.stat(path).then((s) => s.size === size, () => false)) staged = path;
    }
    return staged !== "";
  });
  return staged;
}

/**
 * Runs `fn` with a cartd started with `env` against `archive` (a fake archive of its own when
 * none is given). When `fn` fails, cartd's log is printed before the failure goes on; cartd,
 * its volume and an archive made here are removed afterwards.
 */
export async function withCartd(
  options: { env?: Record<string, string>; archive?: FakeArchive },
  fn: (cartd: Cartd, archive: FakeArchive) => Promise<void>,
): Promise<void> {
  await using own = options.archive ? null : startFakeArchive();
  const archive = options.archive ?? own!;
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: archive.url, ...options.env },
  });
  try {
    await fn(cartd, archive);
  } catch (e) {
    console.error(cartd.output());
    throw e;
  }
}

/**
 * Starts `cartd [role]` with `env` on a free port; resolves once it serves (or has started).
 * Without `volume`, it runs on a temporary folder of its own, removed when the process is
 * disposed of (`await using`) or fails to start; `stop()` and `kill()` keep it, for a restart
 * on the same volume (remove it afterwards, or dispose of the last process started on it).
 */
export async function startCartd(options: {
  env: Record<string, string>;
  role?: "all" | "serve" | "worker";
  volume?: string;
  args?: string[];
  /** The module to run instead of {@linkcode ENTRY} (see {@linkcode cartdCommand}). */
  entry?: string;
  /** The soft limit of open descriptors to run it under (see {@linkcode cartdCommand}). */
  fdLimit?: number;
}): Promise<Cartd> {
  const ownVolume = options.volume === undefined;
  const volume = options.volume ?? await Deno.makeTempDir({ prefix: "cartd-test-" });
  const role = options.role ?? "all";
  const args = [
    ...(role === "all" ? [] : [role]),
    ...(role === "worker" ? [] : ["--port", "0"]),
    ...(options.args ?? []),
  ];
  const ready = Promise.withResolvers<string>();
  const cartd = spawnCollecting(
    cartdCommand(args, volume, { ...FAST_ENV, ...options.env }, {
      entry: options.entry,
      fdLimit: options.fdLimit,
    }),
    (text) => {
      const m = /cartd listening on (\S+)/.exec(text);
      if (m) ready.resolve(m[1]);
      else if (role === "worker" && text.includes("cartd started")) ready.resolve("");
    },
  );
  cartd.exited.then(() =>
    ready.reject(new Error(`cartd exited before it was ready:\n${cartd.output()}`))
  );
  const timer = setTimeout(
    () => ready.reject(new Error(`cartd did not start within 20 s:\n${cartd.output()}`)),
    20_000,
  );
  let url: string;
  try {
    url = await ready.promise;
  } catch (e) {
    await cartd.stop("SIGKILL");
    if (ownVolume) await Deno.remove(volume, { recursive: true }).catch(() => {});
    throw e;
  } finally {
    clearTimeout(timer);
  }
  const stop = async (signal: Deno.Signal) => void await cartd.stop(signal);
  return {
    url,
    volume,
    process: cartd.process,
    output: cartd.output,
    stop: () => stop("SIGTERM"),
    kill: () => stop("SIGKILL"),
    async [Symbol.asyncDispose]() {
      await stop("SIGTERM");
      if (ownVolume) await Deno.remove(volume, { recursive: true }).catch(() => {});
    },
  };
}

/** HEAD status of a cart: [HTTP status, X-Pacifica-Status, X-Pacifica-Message]. */
export async function cartStatus(url: string, uid: string): Promise<[number, string, string]> {
  const res = await fetch(url + encodeURIComponent(uid), { method: "HEAD" });
  await res.body?.cancel();
  return [
    res.status,
    res.headers.get("x-pacifica-status") ?? "",
    res.headers.get("x-pacifica-message") ?? "",
  ];
}

/** Polls HEAD until the cart reaches `want` (or a final status); returns the last status. */
export async function waitFor(
  url: string,
  uid: string,
  want: string,
  timeoutMs = 30_000,
): Promise<[number, string, string]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await cartStatus(url, uid);
    if (status[1] === want || status[1] === "ready" || status[1] === "error") return status;
    if (Date.now() > deadline) {
      throw new Error(`cart ${uid} stayed "${status[1]}" for ${timeoutMs} ms (wanted ${want})`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** POSTs a cart document (any JSON value, or raw text) to `uid`. */
export async function postCart(url: string, uid: string, doc: unknown): Promise<Response> {
  return await fetch(url + encodeURIComponent(uid), {
    method: "POST",
    body: typeof doc === "string" ? doc : JSON.stringify(doc),
  });
}

/** Every file below `dir`, as paths relative to it. */
export async function listFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (sub: string) => {
    for await (const e of Deno.readDir(`${dir}/${sub}`)) {
      const rel = sub ? `${sub}/${e.name}` : e.name;
      if (e.isDirectory) await walk(rel);
      else found.push(rel);
    }
  };
  await walk("").catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
  return found.sort();
}
