/**
 * A zip checked by another implementation: Python's `zipfile`, which reads every member and
 * compares its bytes with the CRC-32 the zip names.
 *
 * @example
 * ```ts ignore
 * await assertZipIntact(new Response(bundle.stream()).body!);
 * ```
 * @module
 */
import assert from "node:assert/strict";

/** Writes `zip` to a temporary file and asserts that `zipfile.testzip()` finds no bad member. */
export async function assertZipIntact(
  zip: ReadableStream<Uint8Array> | Uint8Array,
): Promise<void> {
  const path = await Deno.makeTempFile({ suffix: ".zip" });
  try {
    await Deno.writeFile(path, zip);
    const check = await new Deno.Command("python3", {
      args: ["-c", "import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).testzip())", path],
    }).output();
    const said = new TextDecoder().decode(check.stdout).trim();
    assert.equal(said, "None", `zipfile found a bad member: ${said}`);
  } finally {
    await Deno.remove(path);
  }
}
