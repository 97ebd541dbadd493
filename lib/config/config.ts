/**
 * The service's settings, read once from the environment (SPEC §3 names, plus `CARTD_*`
 * settings of cartd's own). A value that cannot be understood stops start-up with a
 * {@linkcode ConfigError} naming the variable.
 *
 * @example
 * ```ts
 * import { loadConfig } from "./config.ts";
 * const config = loadConfig({ VOLUME_PATH: "/srv/cartd" });
 * config.database.kind; // "sqlite"
 * ```
 * @module
 */
import { resolve } from "node:path";
import { z } from "zod";

/** Time limits and retry counts of staging a file (lib/staging/stage_file.ts). All times in milliseconds. */
export interface StageSettings {
  /** First delay between HEAD polls while a file is on tape (default 500). */
  pollInitialMs: number;
  /** Longest delay between HEAD polls (default 30000). */
  pollMaxMs: number;
  /** Re-send the stage POST this often while the file stays on tape (default 300000). */
  restageEveryMs: number;
  /** Give up on a file that stays on tape this long (default 24 h). */
  stageTimeoutMs: number;
  /**
   * Time limit of each archive HTTP call up to its headers, and also the idle limit of a
   * download body (no bytes for this long) (default 60000).
   */
  requestTimeoutMs: number;
  /**
   * Attempts per archive call that fails in a way worth retrying: GETs and stage POSTs
   * (default 3). HEADs are retried by time instead (`missingAfterMs`).
   */
  fetchAttempts: number;
  /** Delay before the first retry; doubles with each further retry (default 2000). */
  retryDelayMs: number;
  /**
   * How long a HEAD that keeps answering 500 (or any 5xx, or not at all) is retried, on a
   * growing delay from `retryDelayMs` up to `pollMaxMs`, before the file counts as missing
   * (default 60000). The archive answers 500 both to a missing file and to a passing failure,
   * so one 500 is not final (SPEC §2). See {@linkcode headFile}.
   */
  missingAfterMs: number;
}

/** Where cart records live. */
export type DatabaseConfig =
  | { kind: "sqlite"; path: string; logging: boolean }
  | {
    kind: "mysql";
    host: string;
    port: number;
    user: string;
    password: string;
    database: string;
    logging: boolean;
    connectAttempts: number;
    waitMs: number;
  };

/** Where work for the workers is queued (`queue`: the RabbitMQ queue's name). */
export type QueueConfig = { kind: "memory" } | { kind: "amqp"; url: string; queue: string };

/** All settings of one cartd process. */
export interface Config {
  /** Root folder of all cart files (absolute). */
  volumePath: string;
  /** Archive base URL, ending in "/". */
  archiveUrl: string;
  /** The database that holds the carts: a SQLite file or a MySQL server. */
  database: DatabaseConfig;
  /** The queue that hands carts to workers: in this process or RabbitMQ. */
  queue: QueueConfig;
  /** How files are brought from the archive (lib/staging/stage_file.ts). */
  staging: StageSettings;
  /** Caps on concurrency and on the size of cart documents. */
  limits: {
    /** Files fetched at once by one worker process, over all its carts. */
    filesInFlight: number;
    /** Files of one cart fetched at once. */
    filesPerCart: number;
    /** Carts one worker process works on at once. */
    cartsInFlight: number;
    /** Web Worker threads that stage and bundle. */
    threads: number;
    /** Most files in one cart document. */
    maxFiles: number;
    /** Largest accepted request body, in bytes. */
    maxBodyBytes: number;
    /** Heap growth (bytes) after which an isolate collects garbage; 0 leaves it to V8 (lib/util/memory.ts). */
    gcSlackBytes: number;
  };
  /** How workers claim carts and how often they retry them. */
  work: {
    /** How long a worker's claim on a cart lasts without renewal. */
    claimTtlMs: number;
    /** How often a cart is tried (worker crashes included) before it fails. */
    maxAttempts: number;
  };
  /** How space under volumePath is capped and reclaimed. */
  space: {
    /** Cap on the bytes cartd may use under volumePath; 0 means the file system's free space only. */
    volumeSize: number;
    /** Time since last use (ms) during which a ready cart is never purged. */
    lruBufferMs: number;
    /** Purge least-recently-used carts when a new one does not fit. */
    purge: boolean;
    /** Delete ready carts this old (0 = keep until purged or deleted). */
    retentionMs: number;
  };
  /** How the HTTP API answers. */
  api: {
    /**
     * Which words `X-Pacifica-Status` uses: `compatible` says `staging` for a waiting or
     * bundling cart, as Pacifica's clients expect (SPEC §1); `precise` says all five states.
     * The precise state is always in `X-Cartd-State`.
     */
    statusWords: "compatible" | "precise";
  };
  /** The lowest level of log messages that is written. */
  logLevel: "debug" | "info" | "warn" | "error";
}

/** A setting that cannot be understood; the message names the variable. */
export class ConfigError extends Error {
  /** Builds the error; `message` names the variable. */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Environment variables by name (an unset variable is undefined). */
export type Env = Record<string, string | undefined>;

function read<T>(
  env: Env,
  name: string,
  schema: z.ZodType<T, z.ZodTypeDef, unknown>,
  fallback: T,
): T {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  const parsed = schema.safeParse(raw.trim());
  if (!parsed.success) {
    throw new ConfigError(
      `${name}=${JSON.stringify(raw)} is not valid: ${parsed.error.issues[0].message}`,
    );
  }
  return parsed.data;
}

const seconds = z.coerce.number({ invalid_type_error: "expected a number of seconds" })
  .finite("expected a number of seconds").nonnegative("must not be negative");
const positiveInt = z.coerce.number({ invalid_type_error: "expected a whole number" })
  .int("expected a whole number").positive("must be at least 1");
const bytes = z.string().transform((s, ctx) => {
  const n = parseBytes(s);
  if (n === null) {
    ctx.addIssue({ code: "custom", message: "expected bytes such as 1073741824, 512M or 2G" });
    return z.NEVER;
  }
  return n;
});
const flag = z.string().transform((s, ctx) => {
  const v = s.toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  ctx.addIssue({ code: "custom", message: "expected true or false" });
  return z.NEVER;
});
const url = (protocols: string[]) =>
  z.string().refine((s) => {
    try {
      return protocols.includes(new URL(s).protocol);
    } catch {
      return false;
    }
  }, `expected a URL starting with ${protocols.map((p) => p + "//").join(" or ")}`);

/** Parses "1073741824", "512K", "512M", "2G", "1T" (powers of 1024) into bytes. */
export function parseBytes(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$/i.exec(text.trim());
  if (!m) return null;
  const power = " kmgtp".indexOf(m[2].toLowerCase() || " ");
  return Math.floor(Number(m[1]) * 1024 ** power);
}

/** Parses a duration such as "90", "90s", "15m", "12h" or "7d" into milliseconds. */
export function parseDuration(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$/i.exec(text.trim());
  if (!m) return null;
  const unit = { ms: 1, s: 1e3, m: 6e4, h: 36e5, d: 864e5, w: 6048e5 }[
    (m[2] ?? "s").toLowerCase() as "s"
  ];
  return Number(m[1]) * unit;
}

function archiveUrl(env: Env): string {
  const explicit = read(env, "ARCHIVE_INTERFACE_URL", url(["http:", "https:"]), "");
  const base = explicit ||
    `http://${env.ARCHIVEI_PORT_8080_TCP_ADDR || "127.0.0.1"}:${
      env.ARCHIVEI_PORT_8080_TCP_PORT || "8080"
    }/`;
  return base.endsWith("/") ? base : base + "/";
}

function database(env: Env, volumePath: string): DatabaseConfig {
  const logging = read(env, "DATABASE_LOGGING", flag, false);
  const connectAttempts = read(env, "DATABASE_CONNECT_ATTEMPTS", positiveInt, 3);
  const waitMs = read(env, "DATABASE_WAIT", seconds, 10) * 1000;
  const dbUrl = read(env, "DATABASE_URL", url(["mysql:", "sqlite:"]), "");
  if (dbUrl) {
    const u = new URL(dbUrl);
    if (u.protocol === "sqlite:") {
      const path = decodeURIComponent(u.host + u.pathname);
      if (!path) throw new ConfigError("DATABASE_URL: a sqlite: URL needs a file path");
      return { kind: "sqlite", path: resolve(path), logging };
    }
    const name = decodeURIComponent(u.pathname.replace(/^\//, ""));
    if (!name) throw new ConfigError("DATABASE_URL: name the database, as in mysql://host/cartd");
    return {
      kind: "mysql",
      host: u.hostname,
      port: Number(u.port || 3306),
      user: decodeURIComponent(u.username || "root"),
      password: decodeURIComponent(u.password),
      database: name,
      logging,
      connectAttempts,
      waitMs,
    };
  }
  const linked = ["MYSQL_PORT_3306_TCP_ADDR", "MYSQL_ENV_MYSQL_USER", "MYSQL_ENV_MYSQL_DATABASE"]
    .some((n) => env[n]);
  if (linked) {
    return {
      kind: "mysql",
      host: env.MYSQL_PORT_3306_TCP_ADDR || "127.0.0.1",
      port: read(env, "MYSQL_PORT_3306_TCP_PORT", positiveInt, 3306),
      user: env.MYSQL_ENV_MYSQL_USER || "cartd",
      password: env.MYSQL_ENV_MYSQL_PASSWORD ?? "cartd",
      database: env.MYSQL_ENV_MYSQL_DATABASE || "pacifica_cart",
      logging,
      connectAttempts,
      waitMs,
    };
  }
  const path = env.CARTD_SQLITE_PATH || `${volumePath}/cartd.sqlite3`;
  return { kind: "sqlite", path: resolve(path), logging };
}

const queueName = z.string().regex(
  /^[\w.:-]{1,255}$/,
  "expected a queue name of letters, digits, '.', ':', '_' or '-' (at most 255)",
);

function queue(env: Env): QueueConfig {
  const broker = read(env, "BROKER_URL", url(["amqp:", "amqps:", "memory:"]), "");
  const name = read(env, "CARTD_QUEUE", queueName, "cartd.carts");
  if (broker) {
    return broker === "memory:" ? { kind: "memory" } : { kind: "amqp", url: broker, queue: name };
  }
  if (env.AMQP_PORT_5672_TCP_ADDR || env.AMQP_USER) {
    const user = encodeURIComponent(env.AMQP_USER || "guest");
    const pass = encodeURIComponent(env.AMQP_PASS ?? "guest");
    const host = env.AMQP_PORT_5672_TCP_ADDR || "127.0.0.1";
    const port = read(env, "AMQP_PORT_5672_TCP_PORT", positiveInt, 5672);
    const vhost = encodeURIComponent(env.AMQP_VHOST || "/");
    return {
      kind: "amqp",
      url: `amqp://${user}:${pass}@${host}:${port}/${vhost}`,
      queue: name,
    };
  }
  return { kind: "memory" };
}

/**
 * Web Worker threads when `CARTD_THREADS` is not set: a core each, but one core stays with the
 * main thread (the API, the database, the archive's status requests); at least 1, at most 4.
 * On 2 cores that is 1 thread: a second one cost about 30 MiB of memory at peak, for about
 * 25 % faster staging of big files (1 GiB: 3.2 → 2.4 s) and 10–15 % of many small ones
 * (see bench/). Set CARTD_THREADS=2 there to trade the memory for that speed.
 */
export function defaultThreads(cores: number = navigator.hardwareConcurrency): number {
  return Math.max(1, Math.min(4, (cores || 2) - 1));
}

/** Reads every setting from `env` (defaults to the process environment). */
export function loadConfig(env: Env = Deno.env.toObject()): Config {
  const volumePath = resolve(env.VOLUME_PATH || "var/volume");
  const s = (name: string, fallback: number) => read(env, name, seconds, fallback) * 1000;
  const n = (name: string, fallback: number) => read(env, name, positiveInt, fallback);
  return {
    volumePath,
    archiveUrl: archiveUrl(env),
    database: database(env, volumePath),
    queue: queue(env),
    staging: {
      pollInitialMs: s("CARTD_POLL_INITIAL", 0.5),
      pollMaxMs: s("CARTD_POLL_MAX", 30),
      restageEveryMs: s("CARTD_RESTAGE_EVERY", 300),
      stageTimeoutMs: s("CARTD_STAGE_TIMEOUT", 86400),
      requestTimeoutMs: s("CARTD_REQUEST_TIMEOUT", 60),
      fetchAttempts: n("CARTD_FETCH_ATTEMPTS", 3),
      retryDelayMs: s("CARTD_RETRY_DELAY", 2),
      missingAfterMs: s("CARTD_MISSING_AFTER", 60),
    },
    limits: {
      filesInFlight: n("CARTD_FILES_IN_FLIGHT", 16),
      filesPerCart: n("CARTD_FILES_PER_CART", 8),
      cartsInFlight: n("CARTD_CARTS_IN_FLIGHT", 16),
      threads: n("CARTD_THREADS", defaultThreads()),
      maxFiles: n("CARTD_MAX_FILES", 100_000),
      maxBodyBytes: read(env, "CARTD_MAX_BODY", bytes, 64 * 1024 * 1024),
      gcSlackBytes: read(env, "CARTD_GC_SLACK", bytes, 8 * 1024 * 1024),
    },
    work: {
      claimTtlMs: s("CARTD_CLAIM_TTL", 30),
      maxAttempts: n("CARTD_MAX_ATTEMPTS", 5),
    },
    space: {
      volumeSize: read(env, "CARTD_VOLUME_SIZE", bytes, 0),
      lruBufferMs: s("LRU_BUFFER_TIME", 0),
      purge: read(env, "CARTD_LRU_PURGE", flag, true),
      retentionMs: s("CARTD_RETENTION", 0),
    },
    api: {
      statusWords: read(env, "CARTD_STATUS_WORDS", z.enum(["compatible", "precise"]), "compatible"),
    },
    logLevel: read(env, "CARTD_LOG_LEVEL", z.enum(["debug", "info", "warn", "error"]), "info"),
  };
}

/** One row of the configuration table that `--help` and the README show. */
export const SETTINGS: ReadonlyArray<[name: string, meaning: string, fallback: string]> = [
  ["VOLUME_PATH", "root folder for all cart files", "var/volume"],
  ["ARCHIVE_INTERFACE_URL", "archive base URL, ending in /", "http://127.0.0.1:8080/"],
  ["LRU_BUFFER_TIME", "seconds a used cart is safe from LRU purge", "0"],
  ["DATABASE_URL", "mysql://user:pass@host:port/db or sqlite:///path", "SQLite in VOLUME_PATH"],
  ["MYSQL_ENV_MYSQL_USER …", "MySQL by container-link names (see README)", ""],
  ["DATABASE_LOGGING", "print every database query", "false"],
  ["DATABASE_CONNECT_ATTEMPTS", "tries to reach the database", "3"],
  ["DATABASE_WAIT", "seconds between those tries", "10"],
  ["BROKER_URL", "amqp://user:pass@host:port/vhost (RabbitMQ)", "in-process queue"],
  ["AMQP_USER …", "RabbitMQ by container-link names (see README)", ""],
  ["CARTD_QUEUE", "RabbitMQ queue the servers and workers share", "cartd.carts"],
  ["CARTD_SQLITE_PATH", "SQLite file when no MySQL is configured", "VOLUME_PATH/cartd.sqlite3"],
  ["CARTD_POLL_INITIAL", "first delay (s) between archive status polls", "0.5"],
  ["CARTD_POLL_MAX", "longest delay (s) between polls", "30"],
  ["CARTD_RESTAGE_EVERY", "re-send the stage request this often (s)", "300"],
  ["CARTD_STAGE_TIMEOUT", "give up on a file still on tape after (s)", "86400"],
  ["CARTD_REQUEST_TIMEOUT", "time limit of one archive request (s)", "60"],
  ["CARTD_FETCH_ATTEMPTS", "download attempts per file", "3"],
  ["CARTD_RETRY_DELAY", "first delay (s) before a download retry", "2"],
  ["CARTD_MISSING_AFTER", "seconds HEAD 500s are retried before a file counts as missing", "60"],
  ["CARTD_FILES_IN_FLIGHT", "files fetched at once per worker process", "16"],
  ["CARTD_FILES_PER_CART", "files of one cart fetched at once", "8"],
  ["CARTD_CARTS_IN_FLIGHT", "carts one worker process works on at once", "16"],
  ["CARTD_THREADS", "Web Worker threads for staging and bundling", "cores - 1 (1 to 4)"],
  ["CARTD_MAX_FILES", "most files in one cart", "100000"],
  ["CARTD_MAX_BODY", "largest cart document (bytes, K/M/G)", "64M"],
  ["CARTD_GC_SLACK", "heap growth that starts a collection (0 = V8 decides)", "8M"],
  ["CARTD_CLAIM_TTL", "seconds a worker's claim on a cart lasts unrenewed", "30"],
  ["CARTD_MAX_ATTEMPTS", "tries of one cart (worker crashes included)", "5"],
  ["CARTD_VOLUME_SIZE", "cap on bytes used under VOLUME_PATH (K/M/G/T)", "free space"],
  ["CARTD_LRU_PURGE", "purge least-recently-used carts to make room", "true"],
  ["CARTD_RETENTION", "delete ready carts older than this (s; 0 = never)", "0"],
  [
    "CARTD_STATUS_WORDS",
    "X-Pacifica-Status words: compatible (Pacifica's three) or precise (all five)",
    "compatible",
  ],
  ["CARTD_LOG_LEVEL", "debug, info, warn or error", "info"],
];
