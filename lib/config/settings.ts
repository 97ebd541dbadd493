/**
 * The table of settings: every environment variable cartd reads, once, with its meaning, its
 * schema (zod), its default and the config field it fills. {@linkcode loadConfig} is made from
 * it (lib/config/config.ts), and so are the `Settings` section of `cartd --help`
 * ({@linkcode SETTINGS}) and the table in docs/configuration.md ({@linkcode settingsMarkdown};
 * tests/e2e/readme_test.ts checks that the document shows exactly this table).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readSettings, SETTING_TABLE } from "./settings.ts";
 * assert.equal(SETTING_TABLE.CARTD_POLL_INITIAL.default, "0.5");
 * assert.equal(readSettings({}).CARTD_POLL_INITIAL, 500); // milliseconds
 * assert.equal(readSettings({ CARTD_POLL_INITIAL: "2" }).CARTD_POLL_INITIAL, 2000);
 * ```
 * @module
 */
import { isIP } from "node:net";
import { resolve } from "node:path";
import { z } from "zod/v4";

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

/** What a setting's schema does (every zod schema of {@linkcode schemas} is one). */
export interface Schema<T> {
  /** Reads `input`: its value, or the issues, the first of which says what was expected. */
  safeParse(
    input: unknown,
  ): { success: true; data: T } | { success: false; error: { issues: { message: string }[] } };
}

/**
 * Reads one variable with `schema` (its text trimmed); `fallback` when it is unset or blank.
 * With `secret`, a message never shows the value.
 *
 * @throws {ConfigError} `NAME="value" is not valid: <the schema's first message>`.
 */
export function readVariable<T>(
  env: Env,
  name: string,
  schema: Schema<T>,
  fallback: T,
  secret = false,
): T {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  const parsed = schema.safeParse(raw.trim());
  if (!parsed.success) {
    const shown = secret ? `${name} (its value not shown)` : `${name}=${JSON.stringify(raw)}`;
    throw new ConfigError(`${shown} is not valid: ${parsed.error.issues[0].message}`);
  }
  return parsed.data;
}

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

/**
 * Web Worker threads when `CARTD_THREADS` is not set: a core each, but one core stays with the
 * main thread (the API, the database, the archive's status requests); at least 1, at most 4.
 * On 2 cores that is 1 thread, for memory: a second one costs 14–30 MiB at peak, and the
 * small-file carts' figures are at the 150 MiB bound already. It is not for speed: big files
 * stage faster with 2 (`deno task bench bigfiles --threads 2`, 16 × 64 MiB, paired rounds:
 * 1.27× the plain client against 1.41× with 1), though an earlier run on a loaded machine had
 * it the other way (3.5 s against 2.3 s); docs/benchmarks.md has both.
 */
export function defaultThreads(cores: number = navigator.hardwareConcurrency): number {
  return Math.max(1, Math.min(4, (cores || 2) - 1));
}

/**
 * The connection cap when `CARTD_MAX_CONNECTIONS` is not set: half of the descriptor limit
 * (`ulimit -n`, from /proc/self/limits when this process may read it; else 1,024) less 64 for
 * the database, the threads' files and the archive, since a download holds a connection and a
 * file; at least 16, at most 4,096.
 */
export function defaultMaxConnections(fdLimit: number | null = descriptorLimit()): number {
  return Math.max(16, Math.min(4096, Math.floor(((fdLimit ?? 1024) - 64) / 2)));
}

/** The soft limit on open files of this process (Linux), or null when it cannot be read. */
export function descriptorLimit(): number | null {
  const path = "/proc/self/limits";
  try {
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return null;
    const m = /^Max open files\s+(\d+)/m.exec(Deno.readTextFileSync(path));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** The schemas of the settings' kinds of value; each message says what was expected. */
export const schemas = {
  /** Seconds (a fraction allowed), read as milliseconds. */
  seconds: z.coerce.number({ error: "expected a number of seconds" })
    .nonnegative("must not be negative").transform((s) => s * 1000),
  /** A whole number, at least 1. */
  positiveInt: z.coerce.number({ error: "expected a whole number" })
    .int("expected a whole number").positive("must be at least 1"),
  /** A whole number, 0 or more. */
  count: z.coerce.number({ error: "expected a whole number" })
    .int("expected a whole number").nonnegative("must not be negative"),
  /** Bytes, or a number with K, M, G or T. */
  bytes: z.string().transform((s, ctx) => {
    const n = parseBytes(s);
    if (n === null) {
      ctx.addIssue({ code: "custom", message: "expected bytes such as 1073741824, 512M or 2G" });
      return z.NEVER;
    }
    return n;
  }),
  /** A switch: true/false, 1/0, yes/no, on/off. */
  flag: z.string().transform((s, ctx) => {
    const v = s.toLowerCase();
    if (["1", "true", "yes", "on"].includes(v)) return true;
    if (["0", "false", "no", "off"].includes(v)) return false;
    ctx.addIssue({ code: "custom", message: "expected true or false" });
    return z.NEVER;
  }),
  /** A URL with one of `protocols` (each as "http:"). */
  url: (protocols: readonly string[]) =>
    z.string().refine((s) => {
      try {
        return protocols.includes(new URL(s).protocol);
      } catch {
        return false;
      }
    }, `expected a URL starting with ${protocols.map((p) => p + "//").join(" or ")}`),
  /** One of `words`. */
  oneOf: <const W extends readonly [string, ...string[]]>(words: W) =>
    z.enum(words, {
      error: (issue) =>
        `Invalid enum value. Expected ${words.map((w) => `'${w}'`).join(" | ")}, received '${
          String(issue.input)
        }'`,
    }),
  /** A RabbitMQ queue name. */
  queueName: z.string().regex(
    /^[\w.:-]{1,255}$/,
    "expected a queue name of letters, digits, '.', ':', '_' or '-' (at most 255)",
  ),
  /** A path, as given. */
  path: z.string(),
  /** A path, made absolute. */
  absolutePath: z.string().transform((p) => resolve(p)),
  /** A secret of at least 16 characters (its value never shown in a message). */
  secret: z.string().min(16, "expected at least 16 characters (32 random ones are better)"),
  /**
   * The webhook allow-list: entries separated by commas or spaces, each `public`, an IP
   * address or a CIDR range (`127.0.0.1`, `10.1.0.0/16`, `fd00::/8`); read into the entries,
   * lowercased. Matching them is lib/webhook/allow.ts's work.
   */
  allowList: z.string().transform((text, ctx) => {
    const entries = text.split(/[\s,]+/).filter((e) => e !== "").map((e) => e.toLowerCase());
    for (const entry of entries) {
      const problem = allowEntryProblem(entry);
      if (problem) {
        ctx.addIssue({ code: "custom", message: `"${entry}" ${problem}` });
        return z.NEVER;
      }
    }
    return entries as readonly string[];
  }),
} as const;

/** Why `entry` cannot be an entry of `CARTD_WEBHOOK_ALLOW`, or null when it can. */
function allowEntryProblem(entry: string): string | null {
  if (entry === "public") return null;
  const [address, bits, ...rest] = entry.split("/");
  const family = isIP(address);
  const expected = "is not public, an IP address or a CIDR range such as 10.1.0.0/16";
  if (family === 0 || rest.length) return expected;
  if (bits === undefined) return null;
  const max = family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) {
    return `has a prefix length that is not a whole number from 0 to ${max}`;
  }
  return null;
}

/** A default that is not one value written as in the environment: worked out, and described. */
export interface WorkedOutDefault<T> {
  /** How docs/configuration.md and `--help` describe it (Markdown code spans allowed). */
  shown: string;
  /** The value; `undefined` leaves it to the code that combines settings (see `fills`). */
  value: () => T;
}

/** One row of {@linkcode SETTING_TABLE}. */
export interface Setting<T = unknown> {
  /** What the setting means, as docs/configuration.md says it (Markdown code spans allowed). */
  readonly meaning: string;
  /** Reads the variable's (trimmed) text. A group row ({@linkcode Setting.group}) has none. */
  readonly schema?: Schema<T>;
  /** The default, written as in the environment (parsed by `schema`), or worked out. */
  readonly default: string | WorkedOutDefault<T>;
  /**
   * The field of `Config` (lib/config/config.ts) the setting fills: a path such as
   * `staging.pollInitialMs`, which `loadConfig` fills by itself; or the name of a field
   * (`database`, `queue`, `archiveUrl`) that `loadConfig` works out from several settings.
   */
  readonly fills: string;
  /**
   * True when `loadConfig` combines the value with other settings into `fills` (a database, a
   * queue, the archive URL) rather than putting it there as it is.
   */
  readonly combined?: boolean;
  /** A row that stands for a group of container-link names (SPEC §3), read together. */
  readonly group?: readonly string[];
  /** True for a secret: no message or listing ever shows its value. */
  readonly secret?: boolean;
}

/** A row whose value `loadConfig` puts into one field, `fills`, as it is. */
function field<F extends string, T>(
  fills: F,
  schema: z.ZodType<T>,
  fallback: string | WorkedOutDefault<T>,
  meaning: string,
): Setting<T> & { fills: F; schema: z.ZodType<T> } {
  return { fills, schema, default: fallback, meaning };
}

/** A row whose value `loadConfig` combines with other settings into `fills`. */
function input<T>(
  fills: string,
  schema: z.ZodType<T>,
  fallback: string | WorkedOutDefault<T>,
  meaning: string,
): Setting<T> & { schema: z.ZodType<T> } {
  return { fills, schema, default: fallback, meaning, combined: true };
}

/**
 * A row that `loadConfig` combines with other settings into `fills`; unset, it is undefined
 * and the other settings decide (`shown` says what that comes to).
 */
function part<T>(
  fills: string,
  schema: z.ZodType<T>,
  shown: string,
  meaning: string,
): Setting<T | undefined> & { schema: z.ZodType<T> } {
  return input<T | undefined>(fills, schema, { shown, value: () => undefined }, meaning) as
    & Setting<T | undefined>
    & { schema: z.ZodType<T> };
}

/** A row for a group of container-link names that `loadConfig` reads into `fills`. */
function group(fills: string, names: readonly string[], meaning: string): Setting<never> {
  return {
    fills,
    group: names,
    default: { shown: "", value: () => undefined as never },
    meaning,
    combined: true,
  };
}

const {
  seconds,
  positiveInt,
  count,
  bytes,
  flag,
  url,
  oneOf,
  queueName,
  path,
  absolutePath,
  secret,
  allowList,
} = schemas;

/**
 * Every setting, in the order docs/configuration.md and `--help` show them: the name (the
 * key), its meaning, schema, default and the config field it fills.
 */
export const SETTING_TABLE = {
  VOLUME_PATH: field(
    "volumePath",
    absolutePath,
    "var/volume",
    "the folder for all cart files (and the SQLite file, unless configured otherwise)",
  ),
  ARCHIVE_INTERFACE_URL: part(
    "archiveUrl",
    url(["http:", "https:"]),
    "`http://127.0.0.1:8080/`",
    "the archive's base URL, ending in `/`",
  ),
  LRU_BUFFER_TIME: field(
    "space.lruBufferMs",
    seconds,
    "0",
    "seconds after its last use during which a cart is never deleted to make room",
  ),
  DATABASE_URL: part(
    "database",
    url(["mysql:", "sqlite:"]),
    "SQLite in `VOLUME_PATH`",
    "the database: `mysql://user:pass@host:port/db` or `sqlite:///path/file`",
  ),
  "MYSQL_ENV_MYSQL_USER …": group("database", [
    "MYSQL_ENV_MYSQL_USER",
    "MYSQL_ENV_MYSQL_PASSWORD",
    "MYSQL_ENV_MYSQL_DATABASE",
    "MYSQL_PORT_3306_TCP_ADDR",
    "MYSQL_PORT_3306_TCP_PORT",
  ], "MySQL in container-link names, see [below](#container-link-names)"),
  DATABASE_LOGGING: input("database.logging", flag, "false", "print every database query"),
  DATABASE_CONNECT_ATTEMPTS: input(
    "database.connectAttempts",
    positiveInt,
    "3",
    "tries to reach MySQL at start before giving up",
  ),
  DATABASE_WAIT: input("database.waitMs", seconds, "10", "seconds between those tries"),
  BROKER_URL: part(
    "queue",
    url(["amqp:", "amqps:", "memory:"]),
    "the in-process queue",
    "the RabbitMQ broker: `amqp://user:pass@host:port/vhost`",
  ),
  "AMQP_USER …": group("queue", [
    "AMQP_USER",
    "AMQP_PASS",
    "AMQP_VHOST",
    "AMQP_PORT_5672_TCP_ADDR",
    "AMQP_PORT_5672_TCP_PORT",
  ], "RabbitMQ in container-link names, see [below](#container-link-names)"),
  CARTD_QUEUE: input(
    "queue.queue",
    queueName,
    "cartd.carts",
    "the RabbitMQ queue that servers and workers share",
  ),
  CARTD_SQLITE_PATH: part(
    "database.path",
    path,
    "`VOLUME_PATH/cartd.sqlite3`",
    "the SQLite file, when no MySQL is configured",
  ),
  CARTD_POLL_INITIAL: field(
    "staging.pollInitialMs",
    seconds,
    "0.5",
    "first delay (s) before asking the archive again about a file on tape",
  ),
  CARTD_POLL_MAX: field(
    "staging.pollMaxMs",
    seconds,
    "30",
    "longest delay (s) between those questions; the delay grows by `CARTD_POLL_FACTOR` up to it",
  ),
  CARTD_POLL_FACTOR: field(
    "staging.pollFactor",
    z.coerce.number({ error: "expected a number from 1 to 1.5" })
      .min(1, "must be at least 1").max(1.5, "must be at most 1.5"),
    "1.5",
    "each delay between two questions about a file on tape is the last one times this (1 to 1.5)",
  ),
  CARTD_RECALLS_MAX: field(
    "staging.recallsMax",
    positiveInt,
    "10000",
    "tape recalls one worker process has asked for and not yet seen on disk; more wait, in " +
      "turn by cart ([how recalls work](operations.md#tape-recalls))",
  ),
  CARTD_HEADS_PER_SECOND: field(
    "staging.headsPerSecond",
    positiveInt,
    "500",
    "most `HEAD` requests per second one worker process sends the archive (recall polls, and its carts' size `HEAD`s)",
  ),
  CARTD_RESTAGE_EVERY: field(
    "staging.restageEveryMs",
    seconds,
    "300",
    "how often (s) the recall of a file still on tape is asked for again",
  ),
  CARTD_STAGE_TIMEOUT: field(
    "staging.stageTimeoutMs",
    seconds,
    "86400",
    "seconds a file may stay on tape before its cart fails",
  ),
  CARTD_REQUEST_TIMEOUT: field(
    "staging.requestTimeoutMs",
    seconds,
    "60",
    "time limit (s) of one archive request, and the longest silence inside a download",
  ),
  CARTD_FETCH_ATTEMPTS: field(
    "staging.fetchAttempts",
    positiveInt,
    "3",
    "tries to download one file",
  ),
  CARTD_RETRY_DELAY: field(
    "staging.retryDelayMs",
    seconds,
    "2",
    "first delay (s) before a download is tried again; it grows from there",
  ),
  CARTD_MISSING_AFTER: field(
    "staging.missingAfterMs",
    seconds,
    "60",
    "seconds a `HEAD` that answers `500` is asked again before the file counts as missing",
  ),
  CARTD_ARCHIVE_OUTAGE_MAX: field(
    "staging.outageMaxMs",
    seconds,
    "600",
    "seconds the archive may be unreachable (connection refused or reset) while carts wait " +
      "for it; longer, and their files fail ([archive outages](operations.md#archive-outages))",
  ),
  CARTD_FILES_IN_FLIGHT: field(
    "limits.filesInFlight",
    positiveInt,
    "16",
    "files one worker process fetches at once, over all its carts",
  ),
  CARTD_FILES_PER_CART: field(
    "limits.filesPerCart",
    positiveInt,
    "8",
    "files of one cart fetched at once",
  ),
  CARTD_CARTS_IN_FLIGHT: field(
    "limits.cartsInFlight",
    positiveInt,
    "16",
    "carts one worker process works on at once; further carts wait",
  ),
  CARTD_THREADS: field(
    "limits.threads",
    positiveInt,
    { shown: "one per core but one (1 to 4)", value: () => defaultThreads() },
    "threads that stage and bundle files",
  ),
  CARTD_MAX_FILES: field("limits.maxFiles", positiveInt, "100000", "most files in one cart"),
  CARTD_MAX_BODY: field("limits.maxBodyBytes", bytes, "64M", "largest cart document accepted"),
  CARTD_GC_SLACK: field(
    "limits.gcSlackBytes",
    bytes,
    "8M",
    "heap growth after which memory is collected (`0`: the runtime decides)",
  ),
  CARTD_CLAIM_TTL: field(
    "work.claimTtlMs",
    seconds,
    "30",
    "seconds a worker's claim on a cart lasts without being renewed",
  ),
  CARTD_MAX_ATTEMPTS: field(
    "work.maxAttempts",
    positiveInt,
    "5",
    "times one cart is tried (worker crashes included) before it fails",
  ),
  CARTD_SWEEP_MAX_REMOVE: field(
    "work.sweepMaxRemove",
    positiveInt,
    "20",
    "cart folders without a row one sweep may remove; more, or any while the database has " +
      "no carts, and it refuses ([why](operations.md#a-lost-database))",
  ),
  CARTD_VOLUME_SIZE: field(
    "space.volumeSize",
    bytes,
    { shown: "the file system's free space", value: () => 0 },
    "the most bytes carts may take under `VOLUME_PATH`",
  ),
  CARTD_LRU_PURGE: field(
    "space.purge",
    flag,
    "true",
    "delete the least recently used ready carts to make room for a new one",
  ),
  CARTD_RETENTION: field(
    "space.retentionMs",
    seconds,
    "0",
    "seconds a ready cart is kept at most (`0`: no limit)",
  ),
  CARTD_STATUS_WORDS: field(
    "api.statusWords",
    oneOf(["compatible", "precise"]),
    "compatible",
    "the words of `X-Pacifica-Status`: `compatible` (Pacifica's three) or `precise` (all five)",
  ),
  CARTD_PROGRESS_HEADERS: field(
    "api.progressHeaders",
    flag,
    "true",
    "send cartd's progress headers `X-Cartd-Files` and `X-Cartd-Bytes` on `HEAD /{uid}` (`false`: Pacifica's headers and `X-Cartd-State` only)",
  ),
  CARTD_MAX_CONNECTIONS: field(
    "api.maxConnections",
    positiveInt,
    {
      shown: "(`ulimit -n` − 64) / 2, from 16 to 4096",
      value: () => defaultMaxConnections(),
    },
    "connections the API keeps open at once; one more gets `503` and is closed",
  ),
  CARTD_HTTP_THREADS: field(
    "api.httpThreads",
    count,
    "0",
    "threads that serve the API and send downloads, each accepting on the port " +
      "([how](operations.md#downloads-on-every-core)); `0`: the main thread alone. Opt-in: " +
      "each thread costs about 22 MiB, and on 2 cores two threads sent ten downloads no faster",
  ),
  CARTD_HEADER_TIMEOUT: field(
    "api.headerTimeoutMs",
    seconds,
    "10",
    "seconds a new connection may take to send a whole request head before it is closed (`0`: no limit)",
  ),
  CARTD_BODY_TIMEOUT: field(
    "api.bodyTimeoutMs",
    seconds,
    "60",
    "seconds a request may take to send its whole body (a cart document) once its head is read; then it gets `408` (`0`: no limit)",
  ),
  CARTD_IDLE_TIMEOUT: field(
    "api.idleTimeoutMs",
    seconds,
    "30",
    "seconds a connection may wait between requests before it is closed (`0`: no limit)",
  ),
  CARTD_MIN_DOWNLOAD_RATE: field(
    "api.minDownloadRate",
    bytes,
    "16K",
    "bytes per second a client must read of a download, over `CARTD_RATE_WINDOW`, or it is cut (`0`: no limit)",
  ),
  CARTD_RATE_WINDOW: field(
    "api.rateWindowMs",
    seconds,
    "60",
    "seconds over which `CARTD_MIN_DOWNLOAD_RATE` is measured",
  ),
  CARTD_ACCESS_TOKENS: field(
    "access.tokensFile",
    path,
    { shown: "none", value: () => "" },
    "a file of bearer tokens, stored as SHA-256 digests with a principal and its roles, re-read " +
      "when it changes ([access](security.md#identities)); set, every request needs credentials",
  ),
  CARTD_ACCESS_JWT_SECRET: field(
    "access.jwtSecret",
    z.string(),
    { shown: "none", value: () => "" },
    "the shared secret (HS256/384/512) that JWTs are verified with; set, JWTs are accepted",
  ),
  CARTD_ACCESS_JWKS_URL: field(
    "access.jwksUrl",
    z.union([z.literal(""), url(["http:", "https:"])]),
    { shown: "none", value: () => "" },
    "a JWKS URL whose keys JWTs are verified with (fetched and cached); set, JWTs are accepted",
  ),
  CARTD_ACCESS_JWT_ISSUER: field(
    "access.jwtIssuer",
    z.string(),
    { shown: "any", value: () => "" },
    "the `iss` a JWT must carry",
  ),
  CARTD_ACCESS_JWT_AUDIENCE: field(
    "access.jwtAudience",
    z.string(),
    { shown: "any", value: () => "" },
    "the `aud` a JWT must carry",
  ),
  CARTD_ACCESS_JWT_CLOCK_SKEW: field(
    "access.jwtClockSkewMs",
    seconds,
    "30",
    "seconds of clock difference allowed when a JWT's `exp` and `nbf` are checked",
  ),
  CARTD_ACCESS_PROXY_ADDRESSES: field(
    "access.proxyAddresses",
    z.string(),
    { shown: "none", value: () => "" },
    "the addresses (CIDRs, comma-separated) whose `CARTD_ACCESS_PROXY_HEADER` is believed; " +
      "set, that header is an identity; from any other address it is ignored",
  ),
  CARTD_ACCESS_PROXY_HEADER: field(
    "access.proxyHeader",
    z.string().regex(/^[A-Za-z0-9-]{1,64}$/, "expected a header name"),
    "X-Remote-User",
    "the header in which a trusted proxy names the principal",
  ),
  CARTD_ACCESS_ADMINS: field(
    "access.admins",
    z.string(),
    { shown: "none", value: () => "" },
    "principals (comma-separated) that have the admin role whatever their credentials say",
  ),
  CARTD_ACCESS_ADMIN_ROLE: field(
    "access.adminRole",
    z.string(),
    "admin",
    "the role that sees and manages every cart",
  ),
  CARTD_LINK_KEYS: field(
    "access.linkKeys",
    z.string(),
    { shown: "none", value: () => "" },
    "keys (comma-separated, at least 16 characters each) of signed download links: the first " +
      "signs, every one verifies; unset, `GET /{uid}/link` answers `404`",
  ),
  CARTD_LINK_MAX_AGE: field(
    "access.linkMaxAgeMs",
    seconds,
    "604800",
    "the longest a signed download link may be valid (s); `GET /{uid}/link` defaults to an hour",
  ),
  CARTD_QUOTA_CARTS: field(
    "quota.carts",
    positiveInt,
    "1000",
    "live carts one principal may have (with identities on; admins have no quotas)",
  ),
  CARTD_QUOTA_BYTES: field(
    "quota.bytes",
    bytes,
    { shown: "no limit (`0`)", value: () => 0 },
    "bytes one principal's carts may hold reserved before its next `POST` is refused (`0`: no limit)",
  ),
  CARTD_QUOTA_FILES: field(
    "quota.filesPerCart",
    positiveInt,
    "100000",
    "files in one cart of one principal (besides `CARTD_MAX_FILES`)",
  ),
  CARTD_QUOTA_RECALLS: field(
    "quota.recalls",
    positiveInt,
    "100000",
    "files one principal's carts in progress may have still to stage (each a possible tape recall)",
  ),
  CARTD_QUOTA_RATE: field(
    "quota.requestsPerSecond",
    positiveInt,
    "100",
    "requests per second of one principal (a burst of as many is allowed)",
  ),
  CARTD_WEBHOOK_SECRET: {
    ...field(
      "webhooks.secret",
      secret.optional(),
      { shown: "none: webhooks are off", value: () => undefined },
      "the key (at least 16 characters) that signs [webhook](api.md#webhooks) events " +
        "(HMAC-SHA256); unset, a cart that names a webhook gets `400`",
    ),
    secret: true,
  },
  CARTD_WEBHOOK_ALLOW: field(
    "webhooks.allow",
    allowList,
    "public",
    "where webhooks may go: `public` (addresses of no special-purpose range: not loopback, " +
      "private, link-local … [the list](#webhook-addresses)), IP addresses and " +
      "CIDR ranges, separated by commas; every address of a URL's host must be allowed",
  ),
  CARTD_WEBHOOK_TIMEOUT: field(
    "webhooks.timeoutMs",
    seconds,
    "10",
    "time limit (s) of one webhook delivery, from resolving the host to the answer's status",
  ),
  CARTD_WEBHOOK_RETRY_DELAY: field(
    "webhooks.retryDelayMs",
    seconds,
    "10",
    "first delay (s) before a failed webhook delivery is tried again; it doubles, up to an hour",
  ),
  CARTD_WEBHOOK_RETRY_FOR: field(
    "webhooks.retryForMs",
    seconds,
    "86400",
    "seconds after the event during which a webhook delivery is tried again; then it is given up",
  ),
  CARTD_EVENTS_KEEPALIVE: field(
    "api.eventsKeepAliveMs",
    seconds.refine((ms) => ms >= 100, "must be at least 0.1"),
    "15",
    "seconds between the keep-alive comments of an idle event stream (`GET /{uid}/events`); " +
      "a client that went away is noticed at the next one",
  ),
  CARTD_LOG_LEVEL: field(
    "logLevel",
    oneOf(["debug", "info", "warn", "error"]),
    "info",
    "the lowest level logged: `debug`, `info`, `warn` or `error`",
  ),
  CARTD_LOG_FORMAT: field(
    "logFormat",
    oneOf(["text", "json"]),
    "text",
    "how log lines are written: `text` (`key=value` fields) or `json` (one object a line; " +
      "[fields](operations.md#json-logs))",
  ),
} as const;

/** The table's rows. */
export type SettingTable = typeof SETTING_TABLE;

/** The name of a setting that has a value of its own (group rows left out). */
export type SettingName = {
  [K in keyof SettingTable]: SettingTable[K] extends { schema: Schema<unknown> } ? K : never;
}[keyof SettingTable];

/** The value of each setting, by name, after reading (defaults filled in). */
export type SettingValues = {
  [K in SettingName]: SettingTable[K] extends Setting<infer T> ? T : never;
};

/** The value a row's default stands for (`name` is the row's key, for a message). */
export function defaultOf<T>(name: string, row: Setting<T>): T {
  if (typeof row.default !== "string") return row.default.value();
  return readVariable({ [name]: row.default }, name, row.schema!, undefined as T);
}

/**
 * Reads every setting of the table from `env`: each variable by its schema, or its default.
 *
 * @throws {ConfigError} naming the first variable that cannot be understood.
 */
export function readSettings(env: Env): SettingValues {
  const values: Record<string, unknown> = {};
  for (const [name, row] of Object.entries(SETTING_TABLE) as [string, Setting][]) {
    if (!row.schema) continue;
    values[name] = readVariable(env, name, row.schema, defaultOf(name, row), row.secret);
  }
  return values as SettingValues;
}

/** A row's default as a person reads it: Markdown in the docs, plain text in `--help`. */
function shownDefault(row: Setting, markdown: boolean): string {
  if (typeof row.default === "string") return markdown ? `\`${row.default}\`` : row.default;
  return markdown ? row.default.shown : plain(row.default.shown);
}

/**
 * Markdown as plain text: code spans lose their backquotes; a link to a section of
 * docs/configuration.md becomes that section's address, a link elsewhere its words.
 */
function plain(markdown: string): string {
  return markdown.replaceAll("`", "")
    .replace(/\[[^\]]*\]\((#[^)]*)\)/g, "docs/configuration.md$1")
    .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1");
}

/** The table as `--help` shows it: name, meaning and default of each row, in plain text. */
export const SETTINGS: ReadonlyArray<[name: string, meaning: string, fallback: string]> = Object
  .entries(SETTING_TABLE).map((
    [name, row],
  ) => [name, plain(row.meaning), shownDefault(row as Setting, false)]);

/**
 * The table as docs/configuration.md shows it under "Every setting": a Markdown table of
 * variable, meaning and default, its columns padded as `deno fmt` pads them.
 */
export function settingsMarkdown(): string {
  const rows = [
    ["variable", "meaning", "default"],
    ...Object.entries(SETTING_TABLE).map(([name, row]) => [
      `\`${name}\``,
      row.meaning,
      shownDefault(row as Setting, true),
    ]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => [...r[c]].length)));
  const line = (cells: string[]) =>
    `| ${cells.map((cell, c) => cell + " ".repeat(widths[c] - [...cell].length)).join(" | ")} |`;
  return [line(rows[0]), line(widths.map((w) => "-".repeat(w))), ...rows.slice(1).map(line)]
    .join("\n") + "\n";
}
