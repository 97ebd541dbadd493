/**
 * The production set-up, end to end: `cartd serve` and `cartd worker` as separate processes
 * sharing the machine's MariaDB (a fresh database per test), RabbitMQ (a queue of each test's
 * own, `CARTD_QUEUE`) and one VOLUME_PATH, with a fake Pacifica archive over HTTP. Faults are
 * real: a worker is killed with SIGKILL, and the database and broker connections are cut
 * through a TCP proxy the test controls ({@linkcode startProxy}); the machine's MariaDB and
 * RabbitMQ are never restarted. The last tests start one server and two workers with exactly
 * the environment compose.yaml gives its containers.
 *
 * `CARTD_TEST_MYSQL_HOST` / `_PORT` and `CARTD_TEST_AMQP_URL` point the tests elsewhere;
 * `CARTD_TEST_MYSQL=off` / `CARTD_TEST_AMQP=off` skip them (see tests/support/services.ts).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import mysql from "mysql2/promise";
import { parse as parseYaml } from "yaml";
import {
  type FakeArchive,
  type FakeFileOptions,
  patternBytes,
  startFakeArchive,
} from "../support/fake_archive.ts";
import {
  type Cartd,
  cartdCommand,
  cartStatus,
  FAST_ENV,
  listFiles,
  postCart,
  ROOT,
  spawnCollecting,
  startCartd,
  waitFor,
} from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { readEvents } from "../support/events.ts";
import { run } from "../support/run.ts";
import {
  AMQP_URL,
  BROKER_HOST,
  BROKER_PORT,
  deleteQueue,
  MYSQL_HOST,
  MYSQL_PORT,
  test,
} from "../support/services.ts";
import { startProxy, type TcpProxy } from "../support/tcp_proxy.ts";

/** How long a cart may take in these tests before the test fails. */
const CART_DEADLINE_MS = 45_000;

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

// ---------------------------------------------------------------------------------------------
// The stack: database, queue, volume, archive, proxies and cartd processes of one test.

interface Stack {
  archive: FakeArchive;
  /** VOLUME_PATH shared by every process of the test. */
  volume: string;
  /** The test's own MariaDB database. */
  database: string;
  /** The test's own RabbitMQ queue. */
  queue: string;
  /** The proxy in front of MariaDB, when the test asked for one. */
  dbProxy: TcpProxy | null;
  /** The proxy in front of RabbitMQ, when the test asked for one. */
  brokerProxy: TcpProxy | null;
  /** DATABASE_URL, BROKER_URL, CARTD_QUEUE and ARCHIVE_INTERFACE_URL for cartd. */
  env: Record<string, string>;
  /** Starts a cartd process of `role` sharing the stack (stopped when the test ends). */
  start(role: "all" | "serve" | "worker", env?: Record<string, string>): Promise<Cartd>;
  /** Runs SQL against the test's database directly (not through a proxy). */
  sql(query: string, params?: unknown[]): Promise<Record<string, unknown>[]>;
  /** The stderr of every process started so far, each headed by its name. */
  logs(): string;
}

function randomName(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 12);
}

async function rootConnection(database?: string): Promise<mysql.Connection> {
  return await mysql.createConnection({
    host: MYSQL_HOST,
    port: MYSQL_PORT,
    user: "root",
    password: "",
    database,
  });
}

async function dropDatabase(name: string): Promise<void> {
  const connection = await rootConnection();
  try {
    await connection.query(`DROP DATABASE IF EXISTS \`${name}\``);
  } finally {
    await connection.end();
  }
}

/**
 * Runs `fn` with a fresh stack; afterwards stops every process, closes the proxies and the
 * archive, and drops the database, the queue and the volume. On failure, prints the logs.
 */
async function withStack(
  options: { dbProxy?: boolean; brokerProxy?: boolean },
  fn: (stack: Stack) => Promise<void>,
): Promise<void> {
  const archive = startFakeArchive({ pathIds: true }); // its ids are path-like
  const volume = await Deno.makeTempDir({ prefix: "cartd-prod-" });
  const database = `cartd_e2e_${randomName()}`;
  const queue = `cartd.e2e.${randomName()}`;
  const dbProxy = options.dbProxy ? await startProxy(MYSQL_HOST, MYSQL_PORT) : null;
  const brokerProxy = options.brokerProxy ? await startProxy(BROKER_HOST, BROKER_PORT) : null;
  const broker = new URL(AMQP_URL);
  if (brokerProxy) {
    broker.hostname = "127.0.0.1";
    broker.port = String(brokerProxy.port);
  }
  const dbHost = dbProxy ? `127.0.0.1:${dbProxy.port}` : `${MYSQL_HOST}:${MYSQL_PORT}`;
  const env = {
    DATABASE_URL: `mysql://root@${dbHost}/${database}`,
    BROKER_URL: broker.toString(),
    CARTD_QUEUE: queue,
    ARCHIVE_INTERFACE_URL: archive.url,
  };
  const processes: [string, Cartd][] = [];
  const counts = new Map<string, number>();
  const stack: Stack = {
    archive,
    volume,
    database,
    queue,
    dbProxy,
    brokerProxy,
    env,
    async start(role, extra = {}) {
      const n = (counts.get(role) ?? 0) + 1;
      counts.set(role, n);
      const cartd = await startCartd({ role, volume, env: { ...env, ...extra } });
      processes.push([`${role} #${n}`, cartd]);
      return cartd;
    },
    async sql(query, params = []) {
      const connection = await rootConnection(database);
      try {
        const [rows] = await connection.query(query, params);
        return rows as Record<string, unknown>[];
      } finally {
        await connection.end();
      }
    },
    logs: () => processes.map(([name, p]) => `----- ${name}\n${p.output()}`).join("\n"),
  };
  try {
    await fn(stack);
  } catch (e) {
    console.error(stack.logs());
    throw e;
  } finally {
    // Restore the lines first, so the processes shut down cleanly.
    await dbProxy?.restore().catch(() => {});
    await brokerProxy?.restore().catch(() => {});
    await Promise.all(processes.map(([, p]) => p.stop()));
    await dbProxy?.close();
    await brokerProxy?.close();
    await archive.close();
    await dropDatabase(database);
    await deleteQueue(queue);
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Carts with known bytes, and checks of what comes back.

/** A cart document and the bytes each of its paths must hold in the tar. */
interface TestCart {
  uid: string;
  doc: {
    fileids: { id: string; path: string; hashtype?: string; hashsum?: string }[];
    bundle?: boolean;
  };
  expected: Map<string, Uint8Array>;
}

/**
 * Puts `files` distinct files into the archive and returns a cart of them. Every other file
 * carries a sha256 the worker must check.
 */
function makeCart(
  archive: FakeArchive,
  uid: string,
  files: number,
  options: FakeFileOptions = {},
  bundle = false,
): TestCart {
  const fileids: TestCart["doc"]["fileids"] = [];
  const expected = new Map<string, Uint8Array>();
  for (let i = 0; i < files; i++) {
    const id = `${uid}/file-${i}`;
    const bytes = patternBytes(700 + ((i * 997) % 5000), 0x1000 + i * 7919 + uid.length * 31);
    archive.put(id, bytes, options);
    const path = `dir-${i % 7}/sub-${i % 3}/file-${i}.dat`;
    fileids.push(
      i % 2 ? { id, path, hashtype: "sha256", hashsum: sha256(bytes) } : { id, path },
    );
    expected.set(path, bytes);
  }
  return { uid, doc: { fileids, bundle }, expected };
}

async function post(url: string, cart: TestCart): Promise<void> {
  const res = await postCart(url, cart.uid, cart.doc);
  const body = await res.text();
  assert.equal(res.status, 201, `POST ${cart.uid}: ${res.status} ${body}`);
}

/**
 * Downloads the cart's tar and checks it: every path of the cart exactly once, with exactly
 * the archive's bytes, and nothing else.
 */
async function checkTar(url: string, cart: TestCart): Promise<void> {
  const res = await fetch(`${url}${encodeURIComponent(cart.uid)}?filename=cart.tar`);
  assert.equal(res.status, 200, `GET ${cart.uid}`);
  const tar = new Uint8Array(await res.arrayBuffer());
  const listing = await run("tar", ["-tf", "-"], { stdin: tar });
  assert.equal(listing.code, 0, listing.stderr);
  const entries = listing.stdout.trim().split("\n").filter((e) => !e.endsWith("/"));
  // A "bundle": true cart's tar is made before any name is known: its top folder is the uid.
  const top = cart.doc.bundle ? cart.uid : "cart";
  assert.equal(entries.length, new Set(entries).size, `${cart.uid}: a file appears twice`);
  assert.deepEqual(
    entries.sort(),
    [...cart.expected.keys()].map((p) => `${top}/${p}`).sort(),
    `${cart.uid}: the tar's files`,
  );
  const dir = await Deno.makeTempDir({ prefix: "cartd-prod-untar-" });
  try {
    const r = await run("tar", ["-xf", "-", "-C", dir], { stdin: tar });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "", "GNU tar printed a warning");
    for (const [path, bytes] of cart.expected) {
      const got = await Deno.readFile(`${dir}/${top}/${path}`);
      assert.equal(sha256(got), sha256(bytes), `${cart.uid}: ${path} differs from the archive`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function waitReady(url: string, uid: string): Promise<void> {
  const status = await waitFor(url, uid, "ready", CART_DEADLINE_MS);
  assert.deepEqual(status, [204, "ready", ""], `cart ${uid}`);
}

/** GETs the archive served for a cart's files, summed. */
function gets(archive: FakeArchive, cart: TestCart): number {
  return cart.doc.fileids.reduce((sum, f) => sum + archive.counts(f.id).get, 0);
}

/** True while the process runs. */
async function running(cartd: Cartd): Promise<boolean> {
  const exited = await Promise.race([
    cartd.process.status.then(() => true),
    new Promise<false>((r) => setTimeout(() => r(false), 0)),
  ]);
  return !exited;
}

/** How often `pattern` occurs in `text`. */
function occurrences(text: string, pattern: RegExp): number {
  return [...text.matchAll(new RegExp(pattern.source, "g"))].length;
}

/** A cart's precise state (`X-Cartd-State`); `X-Pacifica-Status` says `staging` for waiting. */
async function cartdState(url: string, uid: string): Promise<string> {
  const res = await fetch(url + encodeURIComponent(uid), { method: "HEAD" });
  await res.body?.cancel();
  return res.headers.get("x-cartd-state") ?? "";
}

/** A log-line pattern for `message` about cart `uid` (fields follow the message). */
function logLine(message: string, uid: string): RegExp {
  return new RegExp(`${message} uid=${uid.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} `);
}

// ---------------------------------------------------------------------------------------------
// Event streams: served by an API process from the database, whichever worker stages.

test.mysqlAndAmqp("an event stream from the API process shows the worker's progress, to ready", async () => {
  await withStack({}, async (stack) => {
    // Four files whose recalls end one after the other: four steps of progress.
    const cart = makeCart(stack.archive, "events", 4);
    for (const [i, f] of cart.doc.fileids.entries()) {
      stack.archive.put(f.id, cart.expected.get(f.path)!, { tapeMs: 1000 + i * 1200 });
    }
    const server = await stack.start("serve");
    await stack.start("worker");
    await post(server.url, cart);
    const { status, events, ended } = await readEvents(server.url, cart.uid, {
      timeoutMs: CART_DEADLINE_MS,
    });
    assert.equal(status, 200);
    assert.ok(ended, "the stream ends at ready");
    const steps = events.map((e) =>
      `${e.event}:${e.data.state}:${(e.data.files as Record<string, number>).staged}`
    );
    assert.equal(events.at(-1)!.data.state, "ready", steps.join(" "));
    const staged = new Set(events.map((e) => (e.data.files as Record<string, number>).staged));
    assert.ok(staged.size >= 3, `progress in steps: ${steps.join(" ")}`);
    assert.ok(events.some((e) => e.data.state === "staging"), steps.join(" "));
    // The serving process stages nothing: what it streamed came from the database.
    assert.doesNotMatch(server.output(), /cart claimed/);
    await checkTar(server.url, cart);
  });
});

// ---------------------------------------------------------------------------------------------
// The fault tests.

test.mysqlAndAmqp("kill -9 of a worker in the middle of a 200-file cart: another worker finishes it, every file once", async () => {
  await withStack({}, async (stack) => {
    const { archive } = stack;
    // Slow enough that staging takes a few seconds: 200 files, 4 at a time, 40 ms each.
    const cart = makeCart(archive, "crash200", 200, { getDelayMs: 40 });
    const slow = { CARTD_FILES_PER_CART: "4", CARTD_FILES_IN_FLIGHT: "4" };
    const server = await stack.start("serve");
    const doomed = await stack.start("worker", slow);
    await post(server.url, cart);

    await eventually("the first worker has fetched 50 files", () => gets(archive, cart) >= 50);
    await doomed.kill();
    const fetchedBeforeKill = gets(archive, cart);
    assert.ok(fetchedBeforeKill < 200, `the worker finished before it was killed`);
    assert.equal((await cartStatus(server.url, cart.uid))[1], "staging");
    const [before] = await stack.sql("SELECT id, claim_owner, attempts FROM carts");
    assert.equal(before.attempts, 1);
    assert.ok(before.claim_owner, "the dead worker's claim is still in the database");

    // The second worker takes the cart over once the dead worker's claim (2 s) expires.
    const heir = await stack.start("worker", slow);
    await waitReady(server.url, cart.uid);
    await checkTar(server.url, cart);

    const [after] = await stack.sql("SELECT claim_owner, attempts FROM carts");
    assert.equal(after.attempts, 2, "claimed by the dead worker, then by the heir");
    assert.equal(after.claim_owner, null);
    assert.match(heir.output(), logLine("cart claimed", cart.uid));
    // The heir resumed: files the dead worker had staged were not fetched again (at most the
    // ones in flight at the kill were).
    const total = gets(archive, cart);
    assert.ok(total <= 200 + 4, `the archive served ${total} GETs for 200 files`);
    // Every file sits once on the volume, and nothing half-written is left.
    const files = await listFiles(`${stack.volume}/carts/${before.id}/files`);
    assert.equal(files.length, 200, files.filter((f) => f.endsWith(".part")).join(", "));
  });
});

test.mysqlAndAmqp("admin fixit on MariaDB + RabbitMQ: the fixed cart is queued at once, not left to the sweep", async () => {
  await withStack({}, async (stack) => {
    const { archive } = stack;
    // A 10 s claim period: a sweep looks every 5 s and would take a quiet cart after 50 s.
    const ttl = { CARTD_CLAIM_TTL: "10" };
    const cart = makeCart(archive, "fixme", 3);
    const broken = cart.doc.fileids[2].id;
    archive.put(broken, cart.expected.get(cart.doc.fileids[2].path)!, { failGets: Infinity });
    const server = await stack.start("serve", ttl);
    await stack.start("worker", ttl);
    await post(server.url, cart);
    assert.equal((await waitFor(server.url, cart.uid, "error", CART_DEADLINE_MS))[1], "error");

    archive.put(broken, cart.expected.get(cart.doc.fileids[2].path)!);
    const fixing = Date.now();
    const fixit = await cartdCommand(
      ["admin", "fixit", cart.uid],
      stack.volume,
      { ...FAST_ENV, ...stack.env, ...ttl },
      { stdout: "piped" },
    ).output();
    const said = new TextDecoder().decode(fixit.stdout);
    assert.equal(fixit.code, 0, new TextDecoder().decode(fixit.stderr));
    assert.match(said, /"fixme": .*2 staged files kept, 1 to fetch again/);
    assert.match(said, /Queued 1 cart\./);
    assert.deepEqual(await waitFor(server.url, cart.uid, "ready", 5_000), [204, "ready", ""]);
    console.log(`fixit → ready: ${Date.now() - fixing} ms (a sweep would wait 50 s)`);
    await checkTar(server.url, cart);
  });
});

test.mysqlAndAmqp("the broker connection cut: carts in progress finish, carts posted meanwhile are not lost", async () => {
  await withStack({ brokerProxy: true }, async (stack) => {
    const { archive } = stack;
    const proxy = stack.brokerProxy!;
    const server = await stack.start("serve");
    const worker = await stack.start("worker", { CARTD_FILES_PER_CART: "2" });
    const first = makeCart(archive, "before", 5);
    await post(server.url, first);
    await waitReady(server.url, first.uid);

    // Carts in progress when the line goes down (6 files, 2 at a time, 400 ms each).
    const inFlight = [0, 1, 2].map((i) =>
      makeCart(archive, `inflight${i}`, 6, { getDelayMs: 400 })
    );
    for (const cart of inFlight) await post(server.url, cart);
    for (const cart of inFlight) {
      await eventually(`${cart.uid} is staging`, async () => {
        return (await cartStatus(server.url, cart.uid))[1] === "staging";
      });
    }
    const acceptedBefore = proxy.accepted;
    await proxy.cut();
    await eventually(
      "both processes noticed the lost broker",
      () =>
        [server, worker].every((p) =>
          p.output().includes("lost the connection to the message broker")
        ),
    );

    // Carts posted while the broker is away are stored; their POSTs answer once it is back.
    const during = [0, 1, 2].map((i) => makeCart(archive, `during${i}`, 3));
    const posts = during.map((cart) => post(server.url, cart));
    for (const cart of during) {
      await eventually(`${cart.uid} is stored`, async () => {
        return (await cartdState(server.url, cart.uid)) === "waiting";
      });
    }
    // The carts already claimed go on: the database is there, only the queue is not.
    for (const cart of inFlight) await waitReady(server.url, cart.uid);
    assert.equal(proxy.connections, 0, "nothing reached the broker during the cut");
    assert.ok(await running(server) && await running(worker));
    for (const cart of during) {
      assert.equal(await cartdState(server.url, cart.uid), "waiting", "no message, no work");
    }

    await proxy.restore();
    await Promise.all(posts);
    for (const cart of [first, ...inFlight, ...during]) {
      await waitReady(server.url, cart.uid);
      await checkTar(server.url, cart);
    }
    await eventually(
      "both processes reconnected",
      () => [server, worker].every((p) => p.output().includes("reconnected to the message broker")),
    );
    assert.ok(proxy.accepted > acceptedBefore);
    // Every file was fetched once: the redelivered messages of finished carts did no work.
    for (const cart of [first, ...inFlight, ...during]) {
      assert.equal(gets(archive, cart), cart.expected.size, `GETs of ${cart.uid}`);
    }
  });
});

test.mysqlAndAmqp("the database connection cut: the API answers 503 JSON, nothing crashes, and work resumes", async () => {
  await withStack({ dbProxy: true }, async (stack) => {
    const { archive } = stack;
    const proxy = stack.dbProxy!;
    const server = await stack.start("serve");
    const worker = await stack.start("worker");
    const done = makeCart(archive, "done", 3);
    await post(server.url, done);
    await waitReady(server.url, done.uid);

    // A cart mid-staging when the database goes away (20 files, 200 ms each, 8 at a time).
    const busy = makeCart(archive, "busy", 20, { getDelayMs: 200 });
    await post(server.url, busy);
    await eventually("the busy cart has fetched a file", () => gets(archive, busy) > 0);
    await proxy.cut();

    for (
      const [method, path, body] of [
        ["GET", done.uid, undefined],
        ["POST", "newcart", JSON.stringify(makeCart(archive, "newcart", 2).doc)],
        ["DELETE", done.uid, undefined],
      ] as const
    ) {
      const res = await fetch(server.url + path, { method, body });
      assert.equal(res.status, 503, `${method} /${path} during the cut`);
      assert.equal(res.headers.get("content-type"), "application/json");
      const json = await res.json();
      assert.equal(typeof json.message, "string");
      assert.doesNotMatch(json.message, /\n\s+at /, "no stack trace");
    }
    const head = await fetch(server.url + done.uid, { method: "HEAD" });
    assert.equal(head.status, 503, "HEAD during the cut");
    const up = await fetch(server.url);
    assert.equal(up.status, 200, "GET / needs no database");
    await up.body?.cancel();
    // The worker notices the lost database on its next write, and keeps running.
    await eventually(
      "the worker noticed the lost database",
      () => /database lost during cart work|sweep failed/.test(worker.output()),
    );
    assert.ok(await running(server), "the API server is still running");
    assert.ok(await running(worker), "the worker is still running");

    await proxy.restore();
    const [code] = await cartStatus(server.url, done.uid);
    assert.equal(code, 204, "the ready cart is back");
    const late = makeCart(archive, "late", 3);
    await post(server.url, late);
    for (const cart of [done, busy, late]) {
      await waitReady(server.url, cart.uid);
      await checkTar(server.url, cart);
    }
  });
});

test.mysqlAndAmqp("two workers racing over 50 carts: each cart is claimed and bundled exactly once", async () => {
  await withStack({}, async (stack) => {
    const { archive } = stack;
    // Few carts per worker at once, so most wait in the queue while the sweeps run (every
    // second): the sweep queues unclaimed carts again, and duplicates must do no harm.
    const env = { CARTD_CARTS_IN_FLIGHT: "3" };
    const server = await stack.start("serve");
    const workers = [await stack.start("worker", env), await stack.start("worker", env)];
    const carts = Array.from(
      { length: 50 },
      (_, i) => makeCart(archive, `race${i}`, 3, { getDelayMs: 60 }, true),
    );
    await Promise.all(carts.map((cart) => post(server.url, cart)));
    for (const cart of carts) await waitReady(server.url, cart.uid);

    const logs = workers.map((w) => w.output()).join("\n");
    for (const cart of carts) {
      assert.equal(occurrences(logs, logLine("cart claimed", cart.uid)), 1, `${cart.uid} claims`);
      assert.equal(occurrences(logs, logLine("cart ready", cart.uid)), 1, `${cart.uid} bundles`);
      assert.equal(gets(archive, cart), 3, `${cart.uid}: each file fetched once`);
    }
    for (const [i, w] of workers.entries()) {
      assert.ok(/cart claimed/.test(w.output()), `worker ${i + 1} took no cart`);
    }
    const rows = await stack.sql("SELECT attempts, COUNT(*) AS n FROM carts GROUP BY attempts");
    assert.deepEqual(rows.map((r) => [Number(r.attempts), Number(r.n)]), [[1, 50]]);
    for (const cart of carts) await checkTar(server.url, cart);
  });
});

test.mysqlAndAmqp("two workers, two carts with 20 files in common: each common file recalled and fetched once, stored once", async () => {
  await withStack({}, async (stack) => {
    const { archive } = stack;
    const ids = Array.from({ length: 40 }, (_, i) => `s/${i}`);
    for (const id of ids) {
      archive.put(id, `bytes of ${id}\n`.repeat(64), { tapeMs: 400, getDelayMs: 30 });
    }
    const server = await stack.start("serve");
    const workers = [await stack.start("worker"), await stack.start("worker")];
    const a = ids.slice(0, 30), b = ids.slice(10, 40), common = ids.slice(10, 30);
    const doc = (list: string[]) => ({ fileids: list.map((id) => ({ id, path: id })) });
    for (const [uid, list] of [["share-a", a], ["share-b", b]] as const) {
      const res = await fetch(server.url + uid, {
        method: "POST",
        body: JSON.stringify(doc(list)),
      });
      assert.equal(res.status, 201, await res.text());
    }
    await waitReady(server.url, "share-a");
    await waitReady(server.url, "share-b");
    for (const id of common) {
      assert.equal(archive.counts(id).get, 1, `${id} fetched once over both workers`);
      assert.equal(archive.counts(id).post, 1, `${id} recalled once over both workers`);
    }
    const rows = await stack.sql(
      `SELECT archive_id, COUNT(DISTINCT content_key) AS keys_, SUM(counted) AS counted
         FROM cart_files WHERE status = 'staged' GROUP BY archive_id`,
    );
    for (const row of rows) {
      assert.equal(Number(row.keys_), 1, `${row.archive_id}: one stored copy`);
      assert.equal(Number(row.counted), 1, `${row.archive_id}: counted once`);
    }
    // The broker hands the two carts one to each worker: the sharing was across processes.
    assert.deepEqual(workers.map((w) => occurrences(w.output(), /cart claimed/)), [1, 1]);
    const [claims] = await stack.sql("SELECT COUNT(*) AS n FROM file_claims");
    assert.equal(Number(claims.n), 0, "every file claim given up");
  });
});

test.mysql("start-up with the database unreachable honours DATABASE_CONNECT_ATTEMPTS and DATABASE_WAIT", async () => {
  const proxy = await startProxy(MYSQL_HOST, MYSQL_PORT);
  const volume = await Deno.makeTempDir({ prefix: "cartd-prod-" });
  const database = `cartd_e2e_${randomName()}`;
  try {
    await proxy.cut();
    const env = {
      DATABASE_URL: `mysql://root@127.0.0.1:${proxy.port}/${database}`,
      DATABASE_CONNECT_ATTEMPTS: "2",
      DATABASE_WAIT: "0.2",
    };
    const started = Date.now();
    const result = await runCartd(["serve", "--port", "0"], volume, env, 15_000);
    const ms = Date.now() - started;
    assert.notEqual(result.code, 0, result.stderr);
    assert.match(result.stderr, new RegExp(`127\\.0\\.0\\.1:${proxy.port}`));
    assert.match(result.stderr, /after 2 tries/);
    assert.equal(occurrences(result.stderr, /cannot reach the database/), 2, result.stderr);
    assert.ok(ms >= 200, `gave up after ${ms} ms, before DATABASE_WAIT`);
    assert.ok(ms < 10_000, `took ${ms} ms to give up`);

    // With enough tries, a database that comes back in time is used.
    const cartd = runCartdInBackground(["serve", "--port", "0"], volume, {
      ...env,
      DATABASE_CONNECT_ATTEMPTS: "50",
    });
    try {
      await eventually("a failed try is logged", () => cartd.stderr().includes("attempt=2"));
      await proxy.restore();
      await eventually("cartd serves", () => /cartd listening on/.test(cartd.stderr()));
    } finally {
      await cartd.stop();
    }
  } finally {
    await proxy.close();
    await dropDatabase(database);
    await Deno.remove(volume, { recursive: true });
  }
});

/** Runs `cartd ARGS` to its end (killed after `timeoutMs`); returns its exit code and stderr. */
async function runCartd(
  args: string[],
  volume: string,
  env: Record<string, string>,
  timeoutMs: number,
): Promise<{ code: number; stderr: string }> {
  const child = runCartdInBackground(args, volume, env);
  const timer = setTimeout(() => child.stop(), timeoutMs);
  try {
    const code = await child.code;
    return { code, stderr: child.stderr() };
  } finally {
    clearTimeout(timer);
  }
}

function runCartdInBackground(args: string[], volume: string, env: Record<string, string>) {
  const cartd = spawnCollecting(cartdCommand(args, volume, env));
  return {
    code: cartd.exited,
    stderr: cartd.output,
    stop: async () => void await cartd.stop(),
  };
}

// ---------------------------------------------------------------------------------------------
// compose.yaml: its environment, proved on this machine's MariaDB and RabbitMQ.

interface ComposeService {
  command?: string[];
  environment?: Record<string, string>;
  healthcheck?: Record<string, unknown>;
}

const compose = parseYaml(await Deno.readTextFile(`${ROOT}compose.yaml`), { merge: true }) as {
  services: Record<string, ComposeService>;
};

/**
 * The environment compose.yaml gives `service`, with the container host names mapped to this
 * machine. Only these differ from the file:
 *
 * - `cartmysql` → MariaDB on 127.0.0.1, and the user, password and database: this machine's
 *   MariaDB has `root` without a password rather than the `cartd` user the compose stack's
 *   MySQL container makes, and each test run uses a fresh database of its own;
 * - `cartrabbit` → RabbitMQ on 127.0.0.1 (same guest user and vhost);
 * - `archiveinterface:8080` → the test's fake archive;
 * - `VOLUME_PATH` → a temporary folder standing in for the shared `carts` volume;
 * - `CARTD_QUEUE`, which compose leaves at its default, → the test's own queue, so that
 *   parallel test runs do not take each other's messages.
 */
function composeEnvironment(
  service: string,
  stack: { database: string; queue: string; volume: string; archive: FakeArchive },
): Record<string, string> {
  const env = { ...compose.services[service].environment };
  const mapped: Record<string, [from: string, to: string]> = {
    MYSQL_PORT_3306_TCP_ADDR: ["cartmysql", MYSQL_HOST],
    MYSQL_PORT_3306_TCP_PORT: ["3306", String(MYSQL_PORT)],
    MYSQL_ENV_MYSQL_USER: ["cartd", "root"],
    MYSQL_ENV_MYSQL_PASSWORD: ["cartd", ""],
    MYSQL_ENV_MYSQL_DATABASE: ["pacifica_cart", stack.database],
    AMQP_PORT_5672_TCP_ADDR: ["cartrabbit", BROKER_HOST],
    AMQP_PORT_5672_TCP_PORT: ["5672", String(BROKER_PORT)],
    ARCHIVEI_PORT_8080_TCP_ADDR: ["archiveinterface", "127.0.0.1"],
    ARCHIVEI_PORT_8080_TCP_PORT: ["8080", String(stack.archive.port)],
    VOLUME_PATH: ["/srv/cartd", stack.volume],
  };
  for (const [name, [from, to]] of Object.entries(mapped)) {
    assert.equal(String(env[name]), from, `compose.yaml: ${service} ${name}`);
    env[name] = to;
  }
  assert.equal(env.CARTD_QUEUE, undefined, "compose.yaml sets CARTD_QUEUE; map it here too");
  env.CARTD_QUEUE = stack.queue;
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]));
}

Deno.test("compose.yaml: the server and the workers share one environment; its commands are cartd roles", () => {
  const { cartserver, cartworkers } = compose.services;
  assert.ok(cartserver && cartworkers, "compose.yaml has cartserver and cartworkers");
  assert.deepEqual(cartserver.environment, cartworkers.environment);
  assert.equal(cartserver.command?.[0], "serve");
  assert.deepEqual(cartworkers.command, ["worker"]);
  // The image's health check asks the API; a worker has none, so it must not be marked sick.
  assert.deepEqual(cartworkers.healthcheck, { disable: true });
  const env = cartserver.environment ?? {};
  // Link-style names only (SPEC §3): no URL that would shadow them.
  for (const name of ["DATABASE_URL", "BROKER_URL", "ARCHIVE_INTERFACE_URL"]) {
    assert.equal(env[name], undefined, `${name} would override the link-style names`);
  }
});

test.mysqlAndAmqp("compose.yaml's environment on this machine: one server and two workers run carts through", async () => {
  const archive = startFakeArchive({ pathIds: true }); // its ids are path-like
  const volume = await Deno.makeTempDir({ prefix: "cartd-compose-" });
  const database = `cartd_e2e_${randomName()}`;
  const queue = `cartd.e2e.${randomName()}`;
  const stack = { archive, volume, database, queue };
  const processes: Cartd[] = [];
  try {
    const serverArgs = compose.services.cartserver.command!.slice(1);
    assert.deepEqual(serverArgs, ["--address", "0.0.0.0", "--port", "8081"]);
    // Started by the harness on 127.0.0.1 and a free port instead of 0.0.0.0:8081.
    const server = await startCartd({
      role: "serve",
      volume,
      env: composeEnvironment("cartserver", stack),
    });
    processes.push(server);
    for (let i = 0; i < 2; i++) {
      processes.push(
        await startCartd({ role: "worker", volume, env: composeEnvironment("cartworkers", stack) }),
      );
    }
    const carts = Array.from({ length: 12 }, (_, i) => makeCart(archive, `compose${i}`, 5));
    for (const cart of carts) await post(server.url, cart);
    for (const cart of carts) {
      await waitReady(server.url, cart.uid);
      await checkTar(server.url, cart);
    }
    for (const [i, w] of processes.slice(1).entries()) {
      assert.match(w.output(), /cart claimed/, `worker ${i + 1} took no cart`);
      assert.match(w.output(), /database=mysql queue=amqp/);
    }
    const connection = await rootConnection(database);
    try {
      const [rows] = await connection.query(
        "SELECT COUNT(*) AS n FROM carts WHERE status = 'ready'",
      );
      assert.equal(Number((rows as { n: number }[])[0].n), 12, "the carts are in MariaDB");
    } finally {
      await connection.end();
    }
  } catch (e) {
    for (const p of processes) console.error(p.output());
    throw e;
  } finally {
    await Promise.all(processes.map((p) => p.stop()));
    await archive.close();
    await dropDatabase(database);
    await deleteQueue(queue);
    await Deno.remove(volume, { recursive: true }).catch(() => {});
  }
});
