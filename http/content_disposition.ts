/**
 * The download's name (SPEC §1, Download: `?filename=`): which names a client may ask for, and
 * the `Content-Disposition` header that carries one.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { contentDisposition, filenameProblem } from "./content_disposition.ts";
 * assert.equal(filenameProblem("x.tar"), null);
 * assert.equal(contentDisposition("x.tar"), 'attachment; filename="x.tar"');
 * ```
 * @module
 */

const utf8 = new TextEncoder();

// deno-lint-ignore no-control-regex
const BAD_NAME = /[/\\"\u0000-\u001f\u007f-\u009f]/;
/** Unicode format characters (category Cf): bidi overrides, zero-width spaces, … */
const FORMAT_CHARACTER = /\p{Cf}/u;
/** The ending that makes the rest of the name the bundle's top folder (`topFolder`). */
const ARCHIVE_ENDING = /\.(tar|zip)$/i;

/**
 * Why `name` is not acceptable as a download name, or null when it is: it must name a file
 * (not empty, `.` or `..`) and leave a folder name without its `.tar`/`.zip` ending (that
 * rest is the bundle's top folder: not empty, `.` or `..`); hold no `/`, `\`, quote, `;`,
 * control character or Unicode format character (category Cf: U+202E RIGHT-TO-LEFT OVERRIDE
 * would show `photo\u202Egpj.tar` as `photorat.jpg`, U+200B ZERO WIDTH SPACE hides in a
 * name); and be at most 255 bytes of UTF-8.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { filenameProblem } from "./content_disposition.ts";
 * assert.equal(filenameProblem("données.tar"), null);
 * assert.equal(filenameProblem(".."), "filename must name a file");
 * assert.match(filenameProblem("a/b.tar")!, /may not contain/);
 * assert.match(filenameProblem("..tar")!, /top folder/);
 * assert.match(filenameProblem("photo\u202Egpj.tar")!, /U\+202E/);
 * ```
 */
export function filenameProblem(name: string): string | null {
  if (name === "" || name === "." || name === "..") return "filename must name a file";
  const top = name.replace(ARCHIVE_ENDING, "");
  if (top === "" || top === "." || top === "..") {
    return `filename "${name}" leaves no folder name: without its .tar or .zip ending it is ` +
      'the top folder of the download, which may not be empty, "." or ".."';
  }
  if (BAD_NAME.test(name)) {
    return "filename may not contain /, \\, quotes or control characters";
  }
  if (name.includes(";")) {
    return 'filename may not contain ";", which would read as a new parameter of ' +
      "Content-Disposition to some clients";
  }
  const format = FORMAT_CHARACTER.exec(name);
  if (format) {
    const code = format[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0");
    return `filename may not contain Unicode format characters such as U+${code} ` +
      "(bidirectional controls, zero-width spaces): they change how the name is shown";
  }
  if (!name.isWellFormed()) return "filename may not contain lone UTF-16 surrogates";
  if (utf8.encode(name).length > 255) return "filename is longer than 255 bytes";
  return null;
}

/**
 * `Content-Disposition` per RFC 6266 for a name {@linkcode filenameProblem} accepts: the name
 * quoted, and for a non-ASCII name `filename*` (UTF-8) after an ASCII `filename` fallback, its
 * accents dropped and anything else outside printable ASCII (or a quote, slash or backslash a
 * compatibility form folds to) made `_`. Clients that read only `filename` (curl -J) get the
 * fallback.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { contentDisposition } from "./content_disposition.ts";
 * assert.equal(contentDisposition("x.tar"), 'attachment; filename="x.tar"');
 * assert.equal(
 *   contentDisposition("données.tar"),
 *   `attachment; filename="donnees.tar"; filename*=UTF-8''donn%C3%A9es.tar`,
 * );
 * ```
 */
export function contentDisposition(name: string): string {
  if (/^[\u0020-\u007e]*$/.test(name)) return `attachment; filename="${name}"`;
  const fallback = name.normalize("NFKD").replace(/\p{M}/gu, "")
    .replace(/[^\u0020-\u007e]|["/\\]/g, "_");
  const encoded = encodeURIComponent(name).replace(
    /['()*]/g,
    (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase(),
  );
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`;
}
