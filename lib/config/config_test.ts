import assert from "node:assert/strict";
import {
  ConfigError,
  defaultThreads,
  loadConfig,
  parseBytes,
  parseDuration,
  SETTINGS,
} from "./config.ts";

Deno.test("defaults: SQLite in VOLUME_PATH, in-process queue, the archive on 127.0.0.1:8080", () => {
  const c = loadConfig({ VOLUME_PATH: "/srv/cartd" });
  assert.equal(c.volumePath, "/srv/cartd");
  assert.deepEqual(c.database, {
    kind: "sqlite",
    path: "/srv/cartd/cartd.sqlite3",
    logging: false,
  });
  assert.deepEqual(c.queue, { kind: "memory" });
  assert.equal(c.archiveUrl, "http://127.0.0.1:8080/");
  assert.equal(c.space.lruBufferMs, 0);
  assert.equal(c.staging.pollInitialMs, 500);
  assert.equal(c.staging.pollMaxMs, 30_000);
});

Deno.test("the archive URL: explicit (a / is added), or from the container link names", () => {
  assert.equal(
    loadConfig({ ARCHIVE_INTERFACE_URL: "http://archive:8080" }).archiveUrl,
    "http://archive:8080/",
  );
  assert.equal(
    loadConfig({ ARCHIVEI_PORT_8080_TCP_ADDR: "10.0.0.5", ARCHIVEI_PORT_8080_TCP_PORT: "9000" })
      .archiveUrl,
    "http://10.0.0.5:9000/",
  );
});

Deno.test("MySQL from link-style names, or from a mysql:// URL", () => {
  const linked = loadConfig({
    MYSQL_ENV_MYSQL_USER: "cartd",
    MYSQL_ENV_MYSQL_PASSWORD: "s3cret",
    MYSQL_ENV_MYSQL_DATABASE: "pacifica_cart",
    MYSQL_PORT_3306_TCP_ADDR: "db",
    MYSQL_PORT_3306_TCP_PORT: "3307",
    DATABASE_CONNECT_ATTEMPTS: "5",
    DATABASE_WAIT: "2",
  }).database;
  assert.deepEqual(linked, {
    kind: "mysql",
    host: "db",
    port: 3307,
    user: "cartd",
    password: "s3cret",
    database: "pacifica_cart",
    logging: false,
    connectAttempts: 5,
    waitMs: 2000,
  });
  const url = loadConfig({ DATABASE_URL: "mysql://u:p%40ss@h:3306/carts", DATABASE_LOGGING: "1" })
    .database;
  assert.equal(url.kind, "mysql");
  if (url.kind === "mysql") {
    assert.deepEqual([url.user, url.password, url.host, url.database, url.logging], [
      "u",
      "p@ss",
      "h",
      "carts",
      true,
    ]);
  }
});

Deno.test("RabbitMQ from link-style names, or from BROKER_URL", () => {
  assert.deepEqual(
    loadConfig({
      AMQP_USER: "cart",
      AMQP_PASS: "pw",
      AMQP_VHOST: "/",
      AMQP_PORT_5672_TCP_ADDR: "rabbit",
      AMQP_PORT_5672_TCP_PORT: "5673",
    }).queue,
    { kind: "amqp", url: "amqp://cart:pw@rabbit:5673/%2F", queue: "cartd.carts" },
  );
  assert.deepEqual(
    loadConfig({ BROKER_URL: "amqp://guest:guest@127.0.0.1:5672", CARTD_QUEUE: "carts.test" })
      .queue,
    { kind: "amqp", url: "amqp://guest:guest@127.0.0.1:5672", queue: "carts.test" },
  );
});

Deno.test("a setting that cannot be understood names the variable", () => {
  const bad: [Record<string, string>, RegExp][] = [
    [{ LRU_BUFFER_TIME: "soon" }, /^LRU_BUFFER_TIME="soon" is not valid/],
    [{ LRU_BUFFER_TIME: "-1" }, /^LRU_BUFFER_TIME="-1" is not valid: must not be negative/],
    [{ DATABASE_CONNECT_ATTEMPTS: "0" }, /^DATABASE_CONNECT_ATTEMPTS="0"/],
    [
      { DATABASE_LOGGING: "maybe" },
      /^DATABASE_LOGGING="maybe" is not valid: expected true or false/,
    ],
    [{ ARCHIVE_INTERFACE_URL: "ftp://x/" }, /^ARCHIVE_INTERFACE_URL="ftp:\/\/x\/"/],
    [{ BROKER_URL: "redis://x" }, /^BROKER_URL=/],
    [{ DATABASE_URL: "postgres://x/y" }, /^DATABASE_URL=/],
    [{ CARTD_VOLUME_SIZE: "lots" }, /^CARTD_VOLUME_SIZE="lots" is not valid: expected bytes/],
    [{ CARTD_THREADS: "1.5" }, /^CARTD_THREADS="1.5" is not valid: expected a whole number/],
    [{ CARTD_LOG_LEVEL: "loud" }, /^CARTD_LOG_LEVEL="loud"/],
    [{ CARTD_QUEUE: "two words" }, /^CARTD_QUEUE="two words" is not valid/],
  ];
  for (const [env, message] of bad) {
    assert.throws(() => loadConfig(env), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, message);
      return true;
    });
  }
});

Deno.test("bytes and durations", () => {
  assert.equal(parseBytes("1073741824"), 1073741824);
  assert.equal(parseBytes("512K"), 512 * 1024);
  assert.equal(parseBytes("2G"), 2 * 1024 ** 3);
  assert.equal(parseBytes("1.5MiB"), 1.5 * 1024 ** 2);
  assert.equal(parseBytes("x"), null);
  assert.equal(parseDuration("90"), 90_000);
  assert.equal(parseDuration("15m"), 900_000);
  assert.equal(parseDuration("7d"), 7 * 86_400_000);
  assert.equal(parseDuration("soon"), null);
});

Deno.test("the defaults that --help and the README show are the ones loadConfig uses", () => {
  const defaults = loadConfig({ VOLUME_PATH: "/v" });
  for (const [name, , fallback] of SETTINGS) {
    if (!/^[\d.]+$|^(true|false|info|cartd\.carts|64M)$/.test(fallback)) continue;
    assert.deepEqual(loadConfig({ VOLUME_PATH: "/v", [name]: fallback }), defaults, name);
  }
});

Deno.test("the default thread count leaves the main thread a core: 1 to 4", () => {
  assert.equal(defaultThreads(1), 1);
  assert.equal(defaultThreads(2), 1);
  assert.equal(defaultThreads(3), 2);
  assert.equal(defaultThreads(16), 4);
  assert.equal(loadConfig({}).limits.threads, defaultThreads());
  assert.equal(loadConfig({ CARTD_THREADS: "3" }).limits.threads, 3);
});
