/**
 * Shared pieces of the benchmarks: archive ids and cart documents, the fake archive process,
 * client processes (curl, a Deno fetch reader), and memory / CPU readings of a process from
 * `/proc`.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { defaultThreads, SETTINGS } from "../lib/config/config.ts";

/** The folder of the benchmarks. */
export const BENCH_DIR: string = fileURLToPath(new URL("./", import.meta.url));

export const MiB = 1 << 20;
export const GiB = 1 << 30;

/**
 * cartd's settings in every benchmark run: the shipped defaults, written out (the test harness
 * would otherwise apply its fast test settings), and the threads this machine gets by default.
 */
export function benchEnv(): Record<string, string> {
  const env: Record<string, string> = Object.fromEntries(
    [
      "CARTD_POLL_INITIAL",
      "CARTD_POLL_MAX",
      "CARTD_RESTAGE_EVERY",
      "CARTD_RETRY_DELAY",
      "CARTD_REQUEST_TIMEOUT",
      "CARTD_CLAIM_TTL",
      "CARTD_FILES_PER_CART",
      "CARTD_FILES_IN_FLIGHT",
      "CARTD_CARTS_IN_FLIGHT",
      "CARTD_LOG_LEVEL",
    ].map((name) => [name, SETTINGS.find(([n]) => n === name)![2]]),
  );
  env.CARTD_THREADS = String(defaultThreads());
  return env;
}

/** `count` archive ids: `prefix000000`, `prefix000001`, … */
export function benchIds(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${String(i).padStart(6, "0")}`);
}

/** A cart document for the ids, 1,000 files per folder. */
export function cartDoc(
  ids: string[],
  folder: string,
): { fileids: { id: string; path: string }[] } {
  return {
    fileids: ids.map((id, i) => ({
      id,
      path: `${folder}/${String(Math.floor(i / 1000)).padStart(3, "0")}/${id}.dat`,
    })),
  };
}

/** The fake archive, running in its own process (bench/archive_server.ts). */
export interface ArchiveProcess {
  url: string;
  control: string;
  pid: number;
  put(spec: {
    prefix: string;
    count: number;
    size: number;
    kind: "pattern" | "bytes" | "path";
    path?: string;
    options?: Record<string, unknown>;
  }): Promise<void>;
  counts(id: string): Promise<{ head: number; post: number; get: number }>;
  stop(): Promise<void>;
}

/** Starts bench/archive_server.ts as a child process. */
export async function startArchiveProcess(): Promise<ArchiveProcess> {
  const { child, line } = await spawnAnnouncing(
    "the archive process",
    Deno.execPath(),
    ["run", "--allow-net", "--allow-read", `${BENCH_DIR}archive_server.ts`],
  );
  const { archive, control } = JSON.parse(line);
  const call = async (path: string, init?: RequestInit) => {
    const res = await fetch(control + path, init);
    const body = await res.json();
    if (!res.ok) throw new Error(`archive control ${path}: ${body.message}`);
    return body;
  };
  return {
    url: archive,
    control,
    pid: child.pid,
    async put(spec) {
      await call("put", { method: "POST", body: JSON.stringify(spec) });
    },
    counts: (id) => call(`counts?id=${encodeURIComponent(id)}`),
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      await child.status;
    },
  };
}

/**
 * Starts a helper process that prints where it listens as its first line: the process and that
 * line. The rest of its output is read and dropped, so that it never blocks on a full pipe.
 */
export async function spawnAnnouncing(
  what: string,
  command: string,
  args: string[],
): Promise<{ child: Deno.ChildProcess; line: string }> {
  const child = new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${what} exited before it printed where it listens: ${text}`);
    text += value;
  }
  (async () => {
    while (!(await reader.read()).done) { /* dropped */ }
  })().catch(() => {});
  return { child, line: text.split("\n")[0] };
}

/** Runs a command to its end; returns exit code and output. */
export async function exec(
  cmd: string,
  args: string[],
  env?: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, env, stdin: "null" }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** One download by a client: bytes received and wall seconds. */
export interface Transfer {
  bytes: number;
  seconds: number;
  status: number;
}

/** `curl -s -o /dev/null`, with an optional `Range: bytes=a-b`. */
export async function curlGet(url: string, range?: [number, number]): Promise<Transfer> {
  const args = ["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"];
  if (range) args.push("-r", `${range[0]}-${range[1]}`);
  const r = await exec("curl", [...args, url]);
  const [status, bytes, seconds] = r.stdout.trim().split(" ").map(Number);
  return { status, bytes, seconds };
}

/** bench/fetch_client.ts in its own process: a Deno fetch that reads into nothing. */
export async function fetchGet(url: string, range?: [number, number]): Promise<Transfer> {
  const r = await exec(Deno.execPath(), [
    "run",
    "--allow-net",
    `${BENCH_DIR}fetch_client.ts`,
    url,
    ...(range ? [`${range[0]}-${range[1]}`] : []),
  ]);
  if (r.code !== 0) throw new Error(`fetch_client failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Wall seconds of a shell pipeline (e.g. the GNU tar baseline). */
export async function timeShell(script: string): Promise<number> {
  const t0 = performance.now();
  const r = await exec("bash", ["-c", `set -o pipefail; ${script}`]);
  const seconds = (performance.now() - t0) / 1000;
  if (r.code !== 0) throw new Error(`"${script}" failed: ${r.stderr}`);
  return seconds;
}

function statusField(pid: number, field: string): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text);
  return m ? Number(m[1]) * 1024 : NaN;
}

/** User + system CPU seconds of a process (all its threads) so far. */
export function cpuSeconds(pid: number): number {
  const { user, sys } = readStat(`/proc/${pid}/stat`).cpu;
  return user + sys;
}

/** The name and CPU seconds in a `/proc/…/stat` file (of a process, or of one of its threads). */
function readStat(path: string): { name: string; cpu: Cpu } {
  const stat = Deno.readTextFileSync(path);
  const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime, in clock ticks
  return { name, cpu: { user: Number(fields[11]) / 100, sys: Number(fields[12]) / 100 } };
}

/** User and system CPU seconds. */
export interface Cpu {
  user: number;
  sys: number;
}

/**
 * CPU seconds of a process so far, by the kind of thread that spent them: `main` (the
 * JavaScript main thread: routes, streams, and the kernel's work for its socket writes), `gc`
 * (V8's helper threads: concurrent marking and sweeping), `io` (tokio's blocking pool: file
 * reads and other file system calls), `workers` (the Web Worker threads) and `other`.
 */
export function threadCpu(pid: number): Record<string, Cpu> {
  const out: Record<string, Cpu> = {};
  for (const entry of Deno.readDirSync(`/proc/${pid}/task`)) {
    let thread: { name: string; cpu: Cpu };
    try {
      thread = readStat(`/proc/${pid}/task/${entry.name}/stat`);
    } catch {
      continue; // the thread ended
    }
    const { name } = thread;
    const kind = entry.name === String(pid)
      ? "main"
      : name.startsWith("V8 ")
      ? "gc"
      : name.startsWith("tokio-runtime")
      ? "io"
      : name.startsWith("worker-")
      ? "workers"
      : "other";
    const cpu = out[kind] ??= { user: 0, sys: 0 };
    cpu.user += thread.cpu.user;
    cpu.sys += thread.cpu.sys;
  }
  return out;
}

/** What each kind of thread spent between two {@linkcode threadCpu} readings. */
export function cpuSince(
  before: Record<string, Cpu>,
  after: Record<string, Cpu>,
): Record<string, Cpu> {
  const out: Record<string, Cpu> = {};
  for (const [kind, cpu] of Object.entries(after)) {
    const b = before[kind] ?? { user: 0, sys: 0 };
    out[kind] = { user: cpu.user - b.user, sys: cpu.sys - b.sys };
  }
  return out;
}

/**
 * Peak resident memory of a process (all threads, Web Workers included) over a stretch of
 * time: the kernel's high-water mark VmHWM, reset at the start through
 * `/proc/PID/clear_refs` ("5"), together with VmRSS sampled every 25 ms (the higher wins;
 * without the reset only the samples count).
 */
export class PeakRss {
  #pid: number;
  #timer: ReturnType<typeof setInterval>;
  #max = 0;
  #hwmReset: boolean;

  constructor(pid: number) {
    this.#pid = pid;
    try {
      Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
      this.#hwmReset = true;
    } catch {
      this.#hwmReset = false;
    }
    this.#sample();
    this.#timer = setInterval(() => this.#sample(), 25);
  }

  #sample(): void {
    try {
      this.#max = Math.max(this.#max, statusField(this.#pid, "VmRSS"));
    } catch { /* the process is gone */ }
  }

  /** Stops sampling; returns the peak in bytes. */
  stop(): number {
    clearInterval(this.#timer);
    this.#sample();
    let hwm = 0;
    if (this.#hwmReset) {
      try {
        hwm = statusField(this.#pid, "VmHWM");
      } catch { /* gone */ }
    }
    return Math.max(this.#max, hwm || 0);
  }
}

/** Resident memory now, in bytes. */
export function rssNow(pid: number): number {
  return statusField(pid, "VmRSS");
}

/** The median of some numbers. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** One row of the benchmark table that bench/run.ts prints. */
export interface Row {
  figure: string;
  cartd: string;
  baseline?: string;
  ratio?: string;
  target?: string;
  /** true: meets the target; false: misses it; undefined: no target. */
  ok?: boolean;
}

/** Rows under their section titles, as `printRows` takes them. */
export interface Section {
  title: string;
  rows: Row[];
}

/**
 * Prints `rows` as one aligned table (figure, cartd, baseline, ratio, target, ok/MISS), with a
 * rule under the head. Rows given in sections get their section's title above them, indented.
 */
export function printRows(rows: Row[] | Section[]): void {
  const head = ["figure", "cartd", "baseline", "ratio", "target", ""];
  const cells = (r: Row, indent: string) => [
    indent + r.figure,
    r.cartd,
    r.baseline ?? "",
    r.ratio ?? "",
    r.target ?? "",
    r.ok === undefined ? "" : r.ok ? "ok" : "MISS",
  ];
  const lines: string[][] = [];
  for (const item of rows) {
    if ("title" in item) {
      lines.push([`[${item.title}]`, "", "", "", "", ""]);
      for (const r of item.rows) lines.push(cells(r, "  "));
    } else lines.push(cells(item, ""));
  }
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (line: string[]) =>
    line.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join("  ")
      .trimEnd();
  console.log(fmt(head));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const l of lines) console.log(fmt(l));
}
