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
import {
  ConfigError,
  defaultOf,
  type Env,
  readSettings,
  readVariable,
  type Schema,
  schemas,
  type Setting,
  SETTING_TABLE,
  type SettingTable,
  type SettingValues,
} from "./settings.ts";

export {
  ConfigError,
  defaultThreads,
  type Env,
  parseBytes,
  parseDuration,
  SETTING_TABLE,
  SETTINGS,
  settingsMarkdown,
} from "./settings.ts";

/** Time limits and retry counts of staging a file (lib/staging/stage_file.ts). All times in milliseconds. */
export interface StageSettings {
  /** First delay between HEAD polls while a file is on tape (default 500). */
  pollInitialMs: number;
  /** Longest delay between HEAD polls (default 30000). */
  pollMaxMs: number;
  /** Each delay between HEAD polls is the last one times this, 1 to 1.5 (default 1.5). */
  pollFactor: number;
  /** Recalls one worker process has POSTed and not yet seen on disk, at most (default 10000). */
  recallsMax: number;
  /** Most HEAD polls of recalls one worker process sends per second (default 50). */
  headsPerSecond: number;
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
  /**
   * How long the archive may stay unreachable (connection refused or reset, DNS) while calls
   * wait for it instead of failing (default 600000; lib/archive/health.ts).
   */
  outageMaxMs: number;
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
    /**
     * Most folders without a row that one sweep removes; above it, or with no cart rows at
     * all, the sweep refuses (the database may be lost or replaced: worker/sweep.ts).
     */
    sweepMaxRemove: number;
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
    /** Whether HEAD carries the progress headers X-Cartd-Files and X-Cartd-Bytes. */
    progressHeaders: boolean;
    /** Most connections the API keeps open; one more gets 503 and is closed (app/server.ts). */
    maxConnections: number;
    /** Time (ms) a new connection may take to send a whole request head; 0: no limit. */
    headerTimeoutMs: number;
    /** Time (ms) a request may take to send its whole body once reading it began; 0: no limit. */
    bodyTimeoutMs: number;
    /** Time (ms) a connection may wait between requests; 0: no limit. */
    idleTimeoutMs: number;
    /** Least bytes per second a client must read of a download; 0: no limit. */
    minDownloadRate: number;
    /** The window (ms) over which minDownloadRate is measured. */
    rateWindowMs: number;
    /**
     * Time (ms) between the keep-alive comments of an idle event stream (http/events.ts): a
     * client that went away is noticed when one is written.
     */
    eventsKeepAliveMs: number;
    /** Web Worker threads that accept on the API's port and send downloads; 0: main only. */
    httpThreads: number;
  };
  /**
   * Who may do what (issue 17; docs/security.md). Every identity off (the default): cartd
   * asks no credentials and every cart belongs to the empty principal, as before.
   */
  access: {
    /** The tokens file (hashed bearer tokens), or "" for none. */
    tokensFile: string;
    /** The shared secret JWTs are verified with, or "". */
    jwtSecret: string;
    /** The JWKS URL JWTs are verified with, or "". */
    jwksUrl: string;
    /** The `iss` a JWT must carry, or "" for any. */
    jwtIssuer: string;
    /** The `aud` a JWT must carry, or "" for any. */
    jwtAudience: string;
    /** Clock difference (ms) allowed on `exp` and `nbf`. */
    jwtClockSkewMs: number;
    /** CIDRs (comma-separated) of the proxies whose header names the principal, or "". */
    proxyAddresses: string;
    /** The header a trusted proxy names the principal in. */
    proxyHeader: string;
    /** Principals (comma-separated) that are admins whatever their credentials say. */
    admins: string;
    /** The role that sees and manages every cart. */
    adminRole: string;
    /** Signed link keys (comma-separated; the first signs), or "". */
    linkKeys: string;
    /** The longest a signed link may be valid (ms). */
    linkMaxAgeMs: number;
  };
  /** What one principal may hold and ask (with identities on; admins are not limited). */
  quota: {
    /** Live carts. */
    carts: number;
    /** Bytes reserved by its carts before a POST is refused; 0: no limit. */
    bytes: number;
    /** Files in one cart. */
    filesPerCart: number;
    /** Files still to stage in its carts in progress. */
    recalls: number;
    /** Requests per second. */
    requestsPerSecond: number;
  };
  /** Webhooks: the events cartd POSTs when a cart that names a URL is ready or failed. */
  webhooks: {
    /** The HMAC-SHA256 key that signs every event; without it no webhook is accepted. */
    secret: string | undefined;
    /**
     * The allow-list entries (`public`, IP addresses, CIDR ranges), as
     * lib/webhook/allow.ts matches them: every address of a URL's host must be allowed.
     */
    allow: readonly string[];
    /** Time limit (ms) of one delivery attempt, from the name lookup to the answer's status. */
    timeoutMs: number;
    /** First delay (ms) before a failed delivery is tried again; it doubles, up to an hour. */
    retryDelayMs: number;
    /** How long (ms) after its event a delivery is tried again before it is given up. */
    retryForMs: number;
  };
  /** The lowest level of log messages that is written. */
  logLevel: "debug" | "info" | "warn" | "error";
  /** How log lines are written: `key=value` text, or one JSON object a line. */
  logFormat: "text" | "json";
}

/** A field of {@linkcode Config} that one setting fills as it is (see settings.ts `fills`). */
type Plain = Omit<Config, "database" | "queue" | "archiveUrl">;
/** `volumePath`, `staging.pollInitialMs`, …: each field that a plain setting fills. */
type Field = {
  [K in keyof Plain & string]: Plain[K] extends object ? `${K}.${keyof Plain[K] & string}` : K;
}[keyof Plain & string];
/** The type of the field at path `F`. */
type FieldValue<F> = F extends `${infer S extends keyof Plain}.${infer K}`
  ? K extends keyof Plain[S] ? Plain[S][K] : never
  : F extends keyof Plain ? Plain[F]
  : never;
/** The rows that fill one field as it is, by name. */
type PlainRows = {
  [K in keyof SettingTable as SettingTable[K] extends { combined: true } ? never : K]:
    SettingTable[K];
};
/** Each plain row's field, checked: its path exists in Config and its value type fits. */
type Checked = {
  [K in keyof PlainRows]: PlainRows[K] extends { fills: infer F; schema: Schema<infer T> }
    ? F extends Field ? T extends FieldValue<F> ? F : never : never
    : never;
};
/** Fields of Config that no setting fills (none: `loadConfig` fills every one). */
type Unfilled = Exclude<Field, Checked[keyof Checked]>;
const EVERY_FIELD_FILLED: [Unfilled] extends [never] ? true : Unfilled = true;
void EVERY_FIELD_FILLED;

function archiveUrl(env: Env, explicit: string | undefined): string {
  const base = explicit ||
    `http://${env.ARCHIVEI_PORT_8080_TCP_ADDR || "127.0.0.1"}:${
      env.ARCHIVEI_PORT_8080_TCP_PORT || "8080"
    }/`;
  return base.endsWith("/") ? base : base + "/";
}

function database(env: Env, v: SettingValues): DatabaseConfig {
  const logging = v.DATABASE_LOGGING;
  const connectAttempts = v.DATABASE_CONNECT_ATTEMPTS;
  const waitMs = v.DATABASE_WAIT;
  const dbUrl = v.DATABASE_URL;
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
      port: readVariable(env, "MYSQL_PORT_3306_TCP_PORT", schemas.positiveInt, 3306),
      user: env.MYSQL_ENV_MYSQL_USER || "cartd",
      password: env.MYSQL_ENV_MYSQL_PASSWORD ?? "cartd",
      database: env.MYSQL_ENV_MYSQL_DATABASE || "pacifica_cart",
      logging,
      connectAttempts,
      waitMs,
    };
  }
  const path = v.CARTD_SQLITE_PATH || `${v.VOLUME_PATH}/cartd.sqlite3`;
  return { kind: "sqlite", path: resolve(path), logging };
}

function queue(env: Env, v: SettingValues): QueueConfig {
  const broker = v.BROKER_URL;
  const name = v.CARTD_QUEUE;
  if (broker) {
    return broker === "memory:" ? { kind: "memory" } : { kind: "amqp", url: broker, queue: name };
  }
  if (env.AMQP_PORT_5672_TCP_ADDR || env.AMQP_USER) {
    const user = encodeURIComponent(env.AMQP_USER || "guest");
    const pass = encodeURIComponent(env.AMQP_PASS ?? "guest");
    const host = env.AMQP_PORT_5672_TCP_ADDR || "127.0.0.1";
    const port = readVariable(env, "AMQP_PORT_5672_TCP_PORT", schemas.positiveInt, 5672);
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
 * Reads every setting from `env` (defaults to the process environment): each row of
 * {@linkcode SETTING_TABLE} fills its field, and the database, the queue and the archive URL
 * are worked out from their settings and container-link names (SPEC §3).
 *
 * @throws {ConfigError} naming the first variable that cannot be understood.
 */
export function loadConfig(env: Env = Deno.env.toObject()): Config {
  const values = readSettings(env);
  const sections: Record<string, Record<string, unknown>> = {};
  const top: Record<string, unknown> = {};
  for (const [name, row] of Object.entries(SETTING_TABLE) as [string, Setting][]) {
    if (row.combined) continue;
    const [section, key] = row.fills.split(".");
    const value = (values as Record<string, unknown>)[name];
    if (key === undefined) top[section] = value;
    else (sections[section] ??= {})[key] = value;
  }
  // The type check above (EVERY_FIELD_FILLED) makes sure that every field is filled.
  return {
    ...top,
    ...sections,
    archiveUrl: archiveUrl(env, values.ARCHIVE_INTERFACE_URL),
    database: database(env, values),
    queue: queue(env, values),
  } as unknown as Config;
}

/**
 * The defaults of one section of {@linkcode Config} (such as `staging`), from the table: what
 * `loadConfig({})` gives that section, without reading anything else.
 */
export function sectionDefaults<
  S extends "staging" | "limits" | "work" | "space" | "api" | "access" | "quota" | "webhooks",
>(
  section: S,
): Config[S] {
  const defaults: Record<string, unknown> = {};
  for (const [name, row] of Object.entries(SETTING_TABLE) as [string, Setting][]) {
    const [of, key] = row.fills.split(".");
    if (!row.combined && of === section && key) defaults[key] = defaultOf(name, row);
  }
  return defaults as Config[S];
}
