/**
 * Which file name real download tools take from cartd's `Content-Disposition` (SPEC §1,
 * Download; issue 12 item 4): `curl -O -J`, `wget --content-disposition`, and Python
 * `requests` with the standard library's `email` header parsing, each in a fresh folder, for
 * an ASCII name and a non-ASCII one.
 *
 * cartd sends RFC 6266's form: `filename="NAME"`, and for a non-ASCII name an ASCII fallback
 * in `filename` followed by `filename*=UTF-8''…`. What the tools do with the non-ASCII name:
 *
 * - wget takes `filename*`: `données.tar`.
 * - curl does not read `filename*` at all (its manual says so for `-J`), so it takes the
 *   fallback, `donnees.tar`. No header can give curl the real name without breaking RFC 6266
 *   (raw UTF-8 in `filename` would read as `donnÃ©es.tar` to every Latin-1 parser, Python's
 *   included).
 * - Python's `email.message.Message.get_filename()` (and `EmailMessage`'s) returns the first
 *   `filename` parameter, the fallback, instead of preferring `filename*` as RFC 6266 §4.3
 *   asks; the `filename*` value is there in `get_params()` and decodes with
 *   `email.utils.collapse_rfc2231_value` to `données.tar`.
 *
 * Needs curl, wget, and python3 with `requests` (Debian: python3-requests).
 */
import assert from "node:assert/strict";
import { startFakeArchive } from "../support/fake_archive.ts";
import { postCart, startCartd, waitFor } from "../support/harness.ts";
import { run } from "../support/run.ts";

/** requests for the body, email for the header: prints what each way of reading gives. */
const PYTHON = String.raw`
import json, sys
from email import utils
from email.message import EmailMessage, Message
import requests

resp = requests.get(sys.argv[1])
resp.raise_for_status()
header = resp.headers["Content-Disposition"]
legacy = Message()
legacy["Content-Disposition"] = header
modern = EmailMessage()
modern["Content-Disposition"] = header
# RFC 6266 section 4.3: prefer filename* (which email hands over RFC 2231-split) to filename.
params = legacy.get_params(header="content-disposition")
starred = [value for key, value in params if key == "filename" and isinstance(value, tuple)]
chosen = utils.collapse_rfc2231_value(starred[0]) if starred else legacy.get_filename()
with open(chosen, "wb") as out:
    out.write(resp.content)
print(json.dumps({"message": legacy.get_filename(), "email_message": modern.get_filename(),
                  "rfc6266": chosen}))
`;

/** What the Python script reports: the name each way of reading the header gives. */
interface PythonNames {
  /** `email.message.Message.get_filename()`. */
  message: string;
  /** `email.message.EmailMessage.get_filename()`. */
  email_message: string;
  /** `filename*` when there is one, else `filename`: RFC 6266 §4.3. */
  rfc6266: string;
}

/** Fails with what to install when a tool the test runs is missing. */
async function need(tool: string, args: string[], install: string): Promise<void> {
  const found = await run(tool, args).then((r) => r.code === 0, () => false);
  if (!found) {
    throw new Error(
      `tests/e2e/content_disposition_test.ts runs ${tool} ${args.join(" ")}, which fails here: ` +
        `install ${install}`,
    );
  }
}

/** The files in `dir` (one download's folder), with the bytes of each. */
async function filesIn(dir: string): Promise<Map<string, Uint8Array>> {
  const found = new Map<string, Uint8Array>();
  for await (const entry of Deno.readDir(dir)) {
    found.set(entry.name, await Deno.readFile(`${dir}/${entry.name}`));
  }
  return found;
}

/** Runs `cmd args` in a fresh folder under `root`; returns the files it left there. */
async function downloadIn(
  root: string,
  label: string,
  cmd: string,
  args: string[],
): Promise<{ files: Map<string, Uint8Array>; stdout: string }> {
  const dir = await Deno.makeTempDir({ dir: root, prefix: `${label}-` });
  const r = await run(cmd, args, { cwd: dir });
  assert.equal(r.code, 0, `${cmd} ${args.join(" ")}: ${r.stderr}`);
  return { files: await filesIn(dir), stdout: r.stdout };
}

Deno.test("curl -O -J, wget --content-disposition and Python requests + email take cartd's file names", async () => {
  await need("curl", ["--version"], "curl");
  await need("wget", ["--version"], "wget");
  await need(
    "python3",
    ["-c", "import requests"],
    "python3 with the requests module (Debian: apt-get install python3-requests)",
  );
  await using archive = startFakeArchive();
  archive.put("f", "the file\n");
  const cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: archive.url } });
  const root = await Deno.makeTempDir({ prefix: "cartd-content-disposition-" });
  try {
    const { url } = cartd;
    assert.equal((await postCart(url, "cd", { fileids: [{ id: "f", path: "f" }] })).status, 201);
    assert.deepEqual(await waitFor(url, "cd", "ready"), [204, "ready", ""]);
    await Deno.writeTextFile(`${root}/names.py`, PYTHON);

    const cases = [
      // [asked name, curl's name, Message.get_filename(), EmailMessage.get_filename()]
      ["my_cart.tar", "my_cart.tar", "my_cart.tar", "my_cart.tar"],
      // curl reads only `filename`, the fallback; email's get_filename() does too.
      ["données.tar", "donnees.tar", "donnees.tar", "donnees.tar"],
    ];
    for (const [name, curlName, messageName, emailMessageName] of cases) {
      const link = `${url}cd?filename=${encodeURIComponent(name)}`;
      // The tar's top folder is the name: each tool must get these bytes.
      const expected = new Uint8Array(await (await fetch(link)).arrayBuffer());
      assert.ok(expected.length > 1024, "a tar");
      const curl = await downloadIn(root, "curl", "curl", ["-s", "-S", "-f", "-O", "-J", link]);
      assert.deepEqual([...curl.files.keys()], [curlName], `curl -O -J for ${name}`);
      assert.deepEqual(curl.files.get(curlName), expected);

      const wget = await downloadIn(root, "wget", "wget", ["-q", "--content-disposition", link]);
      assert.deepEqual([...wget.files.keys()], [name], `wget --content-disposition for ${name}`);
      assert.deepEqual(wget.files.get(name), expected);

      const python = await downloadIn(root, "python", "python3", [`${root}/names.py`, link]);
      const names = JSON.parse(python.stdout) as PythonNames;
      assert.deepEqual(names, {
        message: messageName,
        email_message: emailMessageName,
        rfc6266: name,
      }, `Python email for ${name}`);
      assert.deepEqual([...python.files.keys()], [name]);
      assert.deepEqual(python.files.get(name), expected);
    }
  } catch (e) {
    console.error(cartd.output());
    throw e;
  } finally {
    await cartd.stop();
    await Deno.remove(cartd.volume, { recursive: true }).catch(() => {});
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
});
