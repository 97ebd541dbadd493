/**
 * Pacifica's own Python client library against a real cartd (SPEC §1, "What existing clients
 * understand"; issue 12 item 1).
 *
 * `pacifica-downloader`'s `CartAPI.wait_for_cart` polls `HEAD /{uid}` while the answer is a
 * 204 whose `X-Pacifica-Status` is `staging`, raises with `X-Pacifica-Message` on a 500, and
 * otherwise insists on `ready`. The Python script below does exactly that (written from that
 * description, with `requests`), then downloads the tar and reads it with `tarfile`. It runs
 * against carts that wait behind another, that are held in bundling, that stage normally, and
 * that fail; and once with `CARTD_STATUS_WORDS=precise`, which that client cannot follow.
 *
 * Needs python3 with `requests` (Debian: python3-requests; `.ci/run` installs it).
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import { type Cartd, postCart, stagedFirstFile, startCartd } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";

type Archive = ReturnType<typeof startFakeArchive>;

/** The client's loop, a download with requests, and a look into the tar with tarfile. */
const CLIENT = String.raw`
import hashlib, json, sys, tarfile, time
from urllib.parse import quote
import requests


def wait_for_cart(session, cart_url, seen):
    """Pacifica's CartAPI.wait_for_cart: poll while 204 + staging, raise on 500, want ready."""
    while True:
        resp = session.head(cart_url)
        # Not part of the client: what the test wants to know about each answer, as it comes.
        seen.append([resp.status_code, resp.headers.get("X-Pacifica-Status"),
                     resp.headers.get("X-Cartd-State")])
        print(json.dumps({"head": seen[-1]}), flush=True)
        status = resp.headers.get("X-Pacifica-Status")
        if resp.status_code == 204 and status == "staging":
            time.sleep(0.05)
            continue
        break
    if resp.status_code == 500:
        raise RuntimeError(resp.headers.get("X-Pacifica-Message"))
    assert status == "ready", "cart not ready: %s %s" % (resp.status_code, status)


def main(base, uid, name, dest):
    session = requests.Session()
    cart_url = base + quote(uid, safe="")
    seen = []
    report = {"seen": seen}
    try:
        wait_for_cart(session, cart_url, seen)
    except Exception as error:
        report.update(raised=type(error).__name__, message=str(error))
        print(json.dumps(report))
        return
    resp = session.get(cart_url, params={"filename": name}, stream=True)
    resp.raise_for_status()
    with open(dest, "wb") as out:
        for chunk in resp.iter_content(1 << 16):
            out.write(chunk)
    members = {}
    with tarfile.open(dest) as tar:
        for member in tar.getmembers():
            members[member.name] = (hashlib.sha256(tar.extractfile(member).read()).hexdigest()
                                    if member.isfile() else None)
    report["members"] = members
    print(json.dumps(report))


main(*sys.argv[1:])
`;

/** One HEAD answer the client had: [code, X-Pacifica-Status, X-Cartd-State]. */
type Seen = [number, string | null, string | null];

/** What the client script reports. */
interface ClientReport {
  /** Every HEAD answer, in order. */
  seen: Seen[];
  /** The exception `wait_for_cart` raised, if it did. */
  raised?: string;
  message?: string;
  /** Each tar member and, for files, the sha256 of its bytes. */
  members?: Record<string, string | null>;
}

let pythonChecked: Promise<void> | undefined;

/** Fails with what to install when python3 or its requests module is missing. */
function needPythonRequests(): Promise<void> {
  return pythonChecked ??= run("python3", ["-c", "import requests"]).then(
    (r) => {
      if (r.code !== 0) throw new Error(missingRequests(r.stderr));
    },
    (e) => {
      throw new Error(missingRequests(String(e)));
    },
  );
}

function missingRequests(detail: string): string {
  return "tests/e2e/pacifica_client_test.ts runs Pacifica's client loop in python3 with the " +
    "requests module, which is missing here: install Debian's python3-requests " +
    `(apt-get install python3-requests) or \`pip install requests\`.\n${detail}`;
}

/** A temporary folder holding the client script, removed when disposed. */
async function clientDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "cartd-pacifica-client-" });
  await Deno.writeTextFile(`${path}/client.py`, CLIENT);
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }).catch(() => {}),
  };
}

/**
 * Starts the client on cart `uid` (already posted); resolves to its report once it has
 * finished. The tar goes to `dir/uid.tar`, downloaded as `name`. `onHead` sees every HEAD
 * answer so far as the client gets it.
 */
async function client(
  dir: string,
  url: string,
  uid: string,
  name = "cart.tar",
  onHead: (seen: Seen[]) => void = () => {},
): Promise<ClientReport> {
  const child = new Deno.Command("python3", {
    args: [`${dir}/client.py`, url, uid, name, `${dir}/${uid}.tar`],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const seen: Seen[] = [];
  let report: ClientReport | undefined;
  let rest = "";
  for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + text).split("\n");
    rest = lines.pop()!;
    for (const line of lines) {
      const parsed = JSON.parse(line);
      if (parsed.head) {
        seen.push(parsed.head);
        onHead(seen);
      } else report = parsed;
    }
  }
  const { code } = await child.status;
  if (code !== 0 || !report) {
    throw new Error(`the client script exited ${code}:\n${await stderr}`);
  }
  await stderr;
  return report;
}

/** Every X-Cartd-State the client saw, once each, in order. */
function states(report: ClientReport): string[] {
  const out: string[] = [];
  for (const [, , state] of report.seen) if (state && out.at(-1) !== state) out.push(state);
  return out;
}

/**
 * Asserts that the client saw states in the cart's order, from `first` to `last`: it polls
 * every 50 ms, so it may miss a short state in between, but never sees one out of order.
 */
function assertSeen(report: ClientReport, first: string, last: string): void {
  const seen = states(report);
  const order = ["waiting", "staging", "bundling", "ready", "error"];
  const ranks = seen.map((s) => order.indexOf(s));
  assert.deepEqual(ranks, [...ranks].sort((a, b) => a - b), `out of order: ${seen.join(", ")}`);
  assert.ok(!ranks.includes(-1), `unknown state in ${seen.join(", ")}`);
  assert.equal(seen[0], first, `first state seen: ${seen.join(", ")}`);
  assert.equal(seen.at(-1), last, `last state seen: ${seen.join(", ")}`);
}

/** The sha256 of each listed archive file, by tar member name (null: a folder). */
async function expectTar(
  archive: Archive,
  members: Record<string, string | null>,
): Promise<Record<string, string | null>> {
  const out: Record<string, string | null> = {};
  for (const [name, id] of Object.entries(members)) {
    out[name] = id === null ? null : await archive.digest(id, "sha256");
  }
  return out;
}

/** One cartd and one fake archive for a test; cartd's log is printed when the test fails. */
async function withCartd(
  env: Record<string, string>,
  fn: (cartd: Cartd, archive: Archive, dir: string) => Promise<void>,
): Promise<void> {
  await needPythonRequests();
  await using archive = startFakeArchive();
  await using dir = await clientDir();
  const cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: archive.url, ...env } });
  try {
    await fn(cartd, archive, dir.path);
  } catch (e) {
    console.error(cartd.output());
    throw e;
  } finally {
    await cartd.stop();
    await Deno.remove(cartd.volume, { recursive: true }).catch(() => {});
  }
}

/** POSTs `doc` to `uid` and expects 201. */
async function post(url: string, uid: string, doc: unknown): Promise<void> {
  const res = await postCart(url, uid, doc);
  assert.equal(res.status, 201, await res.text());
}

/**
 * Posts `behind` while `ahead` (its download stalled) takes the only place in flight, so
 * `behind` waits. (A cart waiting for tape would free its place: worker/dispatcher.ts.)
 * `ahead`'s archive is well again once the client of `behind` has had three answers, or has
 * finished: the next try of its download (after `CARTD_REQUEST_TIMEOUT` of silence) succeeds.
 * Returns both clients' reports.
 */
async function aheadAndBehind(
  { url }: Cartd,
  archive: Archive,
  dir: string,
): Promise<{ ahead: ClientReport; behind: ClientReport }> {
  archive.put("a1", "ahead\n", { stallGets: Infinity });
  archive.put("w1", "behind\n");
  await post(url, "ahead", { fileids: [{ id: "a1", path: "a.txt" }] });
  await eventually("ahead is downloading", () => archive.counts("a1").get > 0);
  await post(url, "behind", { fileids: [{ id: "w1", path: "w/w.txt" }] });
  const offTape = () => archive.put("a1", "ahead\n");
  const [ahead, behind] = await Promise.all([
    client(dir, url, "ahead", "ahead.tar"),
    client(dir, url, "behind", "behind.tar", (seen) => seen.length >= 3 && offTape())
      .finally(offTape),
  ]);
  return { ahead, behind };
}

Deno.test("Pacifica's client: a cart waiting behind CARTD_CARTS_IN_FLIGHT is followed to ready", async () => {
  await withCartd(
    { CARTD_CARTS_IN_FLIGHT: "1", CARTD_FETCH_ATTEMPTS: "10" },
    async (cartd, archive, dir) => {
      const { ahead, behind } = await aheadAndBehind(cartd, archive, dir);
      assert.equal(behind.raised, undefined, behind.message ?? "");
      assertSeen(behind, "waiting", "ready");
      const waiting = behind.seen.filter(([, , state]) => state === "waiting");
      // More than one: the client went on polling a waiting cart (as it did not before).
      assert.ok(waiting.length >= 2, `HEADs while waiting: ${JSON.stringify(behind.seen)}`);
      for (const [code, status] of behind.seen.slice(0, -1)) {
        assert.deepEqual([code, status], [204, "staging"]);
      }
      assert.deepEqual(
        behind.members,
        await expectTar(archive, { "behind": null, "behind/w": null, "behind/w/w.txt": "w1" }),
      );
      assert.equal(ahead.raised, undefined, ahead.message ?? "");
      assertSeen(ahead, "staging", "ready");
      assert.deepEqual(
        ahead.members,
        await expectTar(archive, { "ahead": null, "ahead/a.txt": "a1" }),
      );
    },
  );
});

Deno.test('Pacifica\'s client: a "bundle": true cart held in bundling is followed to ready', async () => {
  await withCartd({}, async ({ url, volume }, archive, dir) => {
    archive.put("b1", { size: 300_000 });
    archive.put("b2", "from tape\n", { tapeMs: Infinity });
    const doc = { fileids: [{ id: "b1", path: "d/b1.bin" }, { id: "b2", path: "b2.txt" }] };
    await post(url, "bundled", { ...doc, bundle: true });
    const polling = Promise.withResolvers<void>();
    const report = client(dir, url, "bundled", "bundled.tar", (seen) => {
      if (seen.length >= 2) polling.resolve();
    });
    // b1 is staged while b2 is on tape; its staged copy then goes, and fetching it again at
    // bundling takes two seconds: the client polls a bundling cart all that time. b2 leaves
    // the tape once the client is polling.
    const staged = await stagedFirstFile(volume, 300_000, "b1 is staged");
    archive.put("b1", { size: 300_000 }, { getDelayMs: 2000 });
    await Deno.remove(staged);
    await Promise.race([polling.promise, report]);
    archive.put("b2", "from tape\n");
    const done = await report;
    assert.equal(done.raised, undefined, done.message ?? "");
    assertSeen(done, states(done)[0], "ready");
    assert.deepEqual(states(done).slice(-2), ["bundling", "ready"]);
    const bundling = done.seen.filter(([, , state]) => state === "bundling");
    assert.ok(bundling.length >= 2, `HEADs while bundling: ${JSON.stringify(done.seen)}`);
    for (const [code, status] of bundling) assert.deepEqual([code, status], [204, "staging"]);
    // A bundle cart's top folder is its uid, whatever the download's name (SPEC, Download).
    const top = "bundled";
    assert.deepEqual(
      done.members,
      await expectTar(archive, {
        [top]: null,
        [`${top}/b2.txt`]: "b2",
        [`${top}/d`]: null,
        [`${top}/d/b1.bin`]: "b1",
      }),
    );
  });
});

Deno.test("Pacifica's client: a cart with a file on tape and a hashed file is followed to ready", async () => {
  await withCartd({}, async ({ url }, archive, dir) => {
    archive.put("tape", "tape bytes\n", { tapeMs: Infinity });
    archive.put("disk", "disk bytes\n");
    const sha1 = await archive.digest("disk", "sha1");
    await post(url, "normal", {
      fileids: [
        { id: "tape", path: "/1/2/tape.txt" },
        { id: "disk", path: "disk.ini", hashtype: "sha1", hashsum: sha1 },
      ],
    });
    // The file leaves the tape once the client has had three answers.
    const report = await client(dir, url, "normal", "my_cart.tar", (seen) => {
      if (seen.length === 3) archive.put("tape", "tape bytes\n");
    });
    assert.equal(report.raised, undefined, report.message ?? "");
    assertSeen(report, states(report)[0], "ready");
    const staging = report.seen.filter(([, , state]) => state === "staging");
    assert.ok(staging.length >= 2, `HEADs while on tape: ${JSON.stringify(report.seen)}`);
    for (const [code, status] of report.seen.slice(0, -1)) {
      assert.deepEqual([code, status], [204, "staging"]);
    }
    assert.deepEqual(
      report.members,
      await expectTar(archive, {
        "my_cart": null,
        "my_cart/1": null,
        "my_cart/1/2": null,
        "my_cart/1/2/tape.txt": "tape",
        "my_cart/disk.ini": "disk",
      }),
    );
  });
});

Deno.test("Pacifica's client: a failed cart raises with the cart's message", async () => {
  await withCartd({}, async ({ url }, archive, dir) => {
    archive.put("fine", "fine\n", { tapeMs: 500 });
    archive.put("broken", "x", { error: true, message: "tape library offline" });
    await post(url, "failing", {
      fileids: [{ id: "fine", path: "fine" }, { id: "broken", path: "broken" }],
    });
    const report = await client(dir, url, "failing");
    assert.equal(report.raised, "RuntimeError", JSON.stringify(report));
    assert.match(report.message ?? "", /^fileids\[1\] \(id broken\): .*tape library offline/);
    assert.deepEqual(report.seen.at(-1), [500, "error", "error"]);
    assert.equal(report.members, undefined);
  });
});

Deno.test("Pacifica's client cannot follow CARTD_STATUS_WORDS=precise: it stops at waiting", async () => {
  await withCartd(
    { CARTD_CARTS_IN_FLIGHT: "1", CARTD_STATUS_WORDS: "precise", CARTD_FETCH_ATTEMPTS: "10" },
    async (cartd, archive, dir) => {
      const { ahead, behind } = await aheadAndBehind(cartd, archive, dir);
      // Why the default is "compatible": the first HEAD says waiting, and the client gives up.
      assert.equal(behind.raised, "AssertionError", JSON.stringify(behind));
      assert.equal(behind.message, "cart not ready: 204 waiting");
      assert.deepEqual(behind.seen, [[204, "waiting", "waiting"]]);
      // A cart already staging when the client starts may still end in "bundling" for it.
      assert.ok(
        ahead.raised === undefined || ahead.message === "cart not ready: 204 bundling",
        JSON.stringify(ahead),
      );
    },
  );
});
