/**
 * The status page for people (issue 16 item 3) in a real headless Chromium (Debian's
 * `chromium`, driven by `playwright-core`): a cart on tape, whose bar moves with the event
 * stream and whose download button appears at ready; a failed cart, whose failed files and
 * their reasons are listed; no content-security-policy violation, nothing fetched from
 * elsewhere. A screenshot of each is saved (its path printed). `GET /{uid}/status` without a
 * browser's `Accept` stays JSON.
 *
 * `CARTD_TEST_CHROMIUM` names another Chromium binary (default `/usr/bin/chromium`).
 *
 * @module
 */
import assert from "node:assert/strict";
import { chromium, type Page } from "playwright-core";
import { startFakeArchive } from "../support/fake_archive.ts";
import { postCart, startCartd, tempDir, withCartd } from "../support/harness.ts";
import { tokenDigest } from "../../http/access.ts";

/** The Chromium the test drives. */
const CHROMIUM = Deno.env.get("CARTD_TEST_CHROMIUM") ?? "/usr/bin/chromium";

/** A cart document of `ids`. */
function cartOf(ids: string[]) {
  return { fileids: ids.map((id) => ({ id, path: `data/${id}.txt` })) };
}

/**
 * Runs `fn` with a page of a fresh headless Chromium (an empty profile in a temporary folder),
 * collecting the console's errors and every URL the page asked for.
 */
async function withPage(
  fn: (page: Page, seen: { errors: string[]; urls: string[] }) => Promise<void>,
): Promise<void> {
  await Deno.stat(CHROMIUM).catch(() => {
    throw new Error(
      `no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CARTD_TEST_CHROMIUM)`,
    );
  });
  await using profile = await tempDir("cartd-chromium-");
  const context = await chromium.launchPersistentContext(profile.path, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = await context.newPage();
    const seen = { errors: [] as string[], urls: [] as string[] };
    page.on("console", (m) => {
      if (m.type() === "error") seen.errors.push(m.text());
    });
    page.on("pageerror", (e) => seen.errors.push(String(e)));
    page.on("request", (r) => seen.urls.push(r.url()));
    await fn(page, seen);
  } finally {
    await context.close();
  }
}

/** Saves a screenshot of `page` as `name` in a folder that outlives the test, and says where. */
async function screenshot(page: Page, name: string): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cartd-status-page-" });
  const path = `${dir}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

Deno.test("status page: a cart on tape, its bar moving live, then the download button", async () => {
  await using archive = startFakeArchive();
  const ids = ["a", "b", "c", "d", "e"];
  for (const [i, id] of ids.entries()) {
    archive.put(id, id.repeat(2000), { tapeMs: 2000 + i * 1500 });
  }
  await withCartd({ archive }, async (c) => {
    await withPage(async (page, seen) => {
      // The browser is up before the cart is posted: the recalls' time is all the page's.
      assert.equal((await postCart(c.url, "tape cart", cartOf(ids))).status, 201);
      // Without a browser's Accept, the route stays JSON.
      const plain = await fetch(`${c.url}tape%20cart/status`, { headers: { Accept: "*/*" } });
      assert.equal(plain.headers.get("content-type"), "application/json");
      assert.equal((await plain.json()).uid, "tape cart");
      const answer = await page.goto(`${c.url}tape%20cart/status`);
      assert.equal(answer?.status(), 200);
      assert.match(answer!.headers()["content-type"], /^text\/html/);
      assert.match(answer!.headers()["content-security-policy"], /default-src 'none'/);
      assert.equal(await page.textContent("h1"), "Cart tape cart");
      assert.equal(await page.isVisible("#download"), false, "no button before ready");
      // The bar, read every 100 ms until the button appears: it must move in steps.
      const values: number[] = [];
      const deadline = Date.now() + 30_000;
      while (!(await page.isVisible("#download"))) {
        assert.ok(Date.now() < deadline, `no download button after 30 s; bar: ${values}`);
        const bar = await page.$eval("#bar", (e) => {
          const p = e as unknown as { value: number; max: number };
          return p.value / p.max;
        });
        if (values.at(-1) !== bar) values.push(bar);
        await new Promise((r) => setTimeout(r, 100));
      }
      const between = values.filter((v) => v > 0 && v < 1);
      assert.ok(between.length >= 2, `the bar moved in steps: ${values.join(" → ")}`);
      for (let i = 1; i < values.length; i++) assert.ok(values[i] >= values[i - 1], `${values}`);
      assert.equal(await page.textContent("#state"), "ready");
      assert.equal(
        await page.$eval("#bar", (e) => (e as unknown as { value: number; max: number }).value),
        await page.$eval("#bar", (e) => (e as unknown as { max: number }).max),
      );
      assert.match((await page.textContent("#figures"))!, /5 of 5 files staged/);
      // The button downloads the cart.
      const href = await page.getAttribute("#download-link", "href");
      assert.equal(href, "../tape%20cart");
      const tar = await fetch(new URL(href!, `${c.url}tape%20cart/status`));
      assert.equal(tar.status, 200);
      assert.equal((await tar.arrayBuffer()).byteLength > 5 * 2000, true);
      await screenshot(page, "ready");
      assert.deepEqual(seen.errors, [], "no console errors (a CSP violation would be one)");
      const foreign = seen.urls.filter((u) => !u.startsWith(c.url));
      assert.deepEqual(foreign, [], "nothing fetched from elsewhere");
      assert.ok(seen.urls.some((u) => u.endsWith("/events")), "the page followed the stream");
    });
  });
});

Deno.test("status page: a failed cart lists its failed files and why, on a phone's width", async () => {
  await using archive = startFakeArchive();
  archive.put("fine", "fine");
  // Every GET of it fails: the file fails its cart after CARTD_FETCH_ATTEMPTS, marked so.
  archive.put("broken", "x", { failGets: 1000 });
  await withCartd({ archive }, async (c) => {
    assert.equal((await postCart(c.url, "bad", cartOf(["fine", "broken"]))).status, 201);
    // The list the page reads: the files of one state; a state that is none is a 400.
    const bogus = await fetch(`${c.url}bad/files?state=broken`);
    assert.equal(bogus.status, 400);
    assert.match((await bogus.json()).message, /^state must be one of pending, staged, error/);
    await withPage(async (page, seen) => {
      await page.setViewportSize({ width: 360, height: 740 });
      await page.goto(`${c.url}bad/status`);
      await page.waitForSelector("#failed-rows tr", { timeout: 20_000 });
      assert.equal(await page.textContent("#state"), "error");
      const rows = await page.$$eval(
        "#failed-rows tr",
        (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)),
      );
      assert.equal(rows.length, 1, JSON.stringify(rows));
      assert.equal(rows[0][0], "data/broken.txt");
      assert.match(rows[0][1]!, /500/);
      assert.equal(await page.isVisible("#download"), false);
      const failed = await (await fetch(`${c.url}bad/files?state=error`)).json();
      assert.deepEqual(failed.files.map((f: { id: string }) => f.id), ["broken"]);
      // Nothing wider than the screen.
      const width = await page.$eval(
        "html",
        (e) => (e as unknown as { scrollWidth: number }).scrollWidth,
      );
      assert.ok(width <= 360, `the page is ${width} px wide on a 360 px screen`);
      await screenshot(page, "failed");
      assert.deepEqual(seen.errors, []);
    });
  });
});

Deno.test("status page through a signed link, identities on: no credentials, the stream and the download follow the link", async () => {
  await using archive = startFakeArchive();
  const ids = ["p", "q", "r"];
  for (const [i, id] of ids.entries()) {
    archive.put(id, id.repeat(3000), { tapeMs: 1500 + i * 1000 });
  }
  await using dir = await tempDir("cartd-link-page-");
  const token = "tok-of-dana-for-the-page-test";
  await Deno.writeTextFile(`${dir.path}/tokens`, `${tokenDigest(token)} dana\n`);
  const env = {
    CARTD_ACCESS_TOKENS: `${dir.path}/tokens`,
    CARTD_LINK_KEYS: "link-key-of-the-page-test-0123456789",
  };
  // The tokens file in the volume, which cartd may read.
  await using c = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: archive.url, ...env },
    volume: dir.path,
  });
  {
    await withPage(async (page, seen) => {
      const auth = { authorization: `Bearer ${token}` };
      const posted = await fetch(`${c.url}linked`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify(cartOf(ids)),
      });
      assert.equal(posted.status, 201);
      const link = await (await fetch(`${c.url}linked/link?expires=600`, { headers: auth })).json();
      // Without the link, the browser (no token) is refused.
      const bare = await fetch(`${c.url}linked/status`, { headers: { accept: "text/html" } });
      assert.equal(bare.status, 401);
      await bare.body?.cancel();
      const answer = await page.goto(link.status_url);
      assert.equal(answer?.status(), 200);
      assert.match(answer!.headers()["content-type"], /^text\/html/);
      await page.waitForSelector("#download", { state: "visible", timeout: 30_000 });
      assert.equal(await page.textContent("#state"), "ready");
      assert.match((await page.textContent("#figures"))!, /3 of 3 files staged/);
      const query = new URL(link.url).search;
      const stream = seen.urls.find((u) => new URL(u).pathname === "/linked/events");
      assert.ok(stream, "the page followed the stream");
      assert.equal(new URL(stream).search, query, "the stream carried the link");
      const href = await page.getAttribute("#download-link", "href");
      const tar = await fetch(new URL(href!, link.status_url));
      assert.equal(tar.status, 200, "the download button is the signed link");
      assert.equal((await tar.arrayBuffer()).byteLength > 3 * 3000, true);
      assert.deepEqual(seen.errors, [], "no console errors");
    });
  }
});
