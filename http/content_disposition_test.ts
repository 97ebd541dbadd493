/** Tests of the download name rules (`?filename=`): each refused case, and names still taken. */
import assert from "node:assert/strict";
import { contentDisposition, filenameProblem } from "./content_disposition.ts";

Deno.test("names whose top folder would be empty, . or .. are refused, naming the rule", () => {
  for (const name of [".tar", "..tar", "...tar", "..zip", ".ZIP", "...zip"]) {
    assert.equal(
      filenameProblem(name),
      `filename "${name}" leaves no folder name: without its .tar or .zip ending it is the top ` +
        'folder of the download, which may not be empty, "." or ".."',
      name,
    );
  }
  for (const name of ["a.tar", ".a.tar", "....tar", "tar", ".tar.gz", "x.tar.zip"]) {
    assert.equal(filenameProblem(name), null, name);
  }
});

Deno.test("Unicode format characters are refused, naming the one found", () => {
  const cases: [string, string][] = [
    ["photo\u202egpj.tar", "202E"], // RIGHT-TO-LEFT OVERRIDE
    ["a\u200b.tar", "200B"], // ZERO WIDTH SPACE
    ["\u2066a.tar", "2066"], // LEFT-TO-RIGHT ISOLATE
    ["a\ufeff.tar", "FEFF"], // ZERO WIDTH NO-BREAK SPACE (BOM)
    ["a\u{e0041}.tar", "E0041"], // TAG LATIN CAPITAL LETTER A
  ];
  for (const [name, code] of cases) {
    assert.equal(
      filenameProblem(name),
      `filename may not contain Unicode format characters such as U+${code} ` +
        "(bidirectional controls, zero-width spaces): they change how the name is shown",
    );
  }
});

Deno.test('";" is refused: it would start a new Content-Disposition parameter', () => {
  assert.match(filenameProblem(`a.tar; filename*=UTF-8''evil.sh`)!, /may not contain ";"/);
  assert.match(filenameProblem("a;b.tar")!, /may not contain ";"/);
});

Deno.test("C1 controls and lone surrogates are refused; other names are sent as before", () => {
  assert.match(filenameProblem("a\u0085.tar")!, /control characters/);
  assert.match(filenameProblem("a\ud800.tar")!, /lone UTF-16 surrogates/);
  assert.equal(filenameProblem("données ü 写真.tar"), null);
  assert.equal(contentDisposition("x y.tar"), 'attachment; filename="x y.tar"');
});
