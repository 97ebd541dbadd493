/**
 * The cart document a client POSTs, and the rules it must follow (SPEC §1 "Cart document").
 *
 * {@linkcode parseCartDocument} turns an untrusted request body into a {@linkcode CartDocument}
 * or throws a {@linkcode CartDocumentError} whose message names the first broken rule, for
 * example `fileids[2].path: ".." is not allowed`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { CartDocumentError, parseCartDocument } from "./document.ts";
 * const doc = parseCartDocument('{"fileids": [{"id": 1, "path": "/a/b.txt"}]}');
 * assert.equal(doc.files[0].path, "a/b.txt"); // the leading "/" is dropped
 * const outside = '{"fileids": [{"id": 1, "path": "../b.txt"}]}';
 * assert.throws(() => parseCartDocument(outside), CartDocumentError);
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { z } from "zod/v4";
import { parseJsonParts } from "../util/json_parts.ts";
import { heapCheckpoint } from "../util/memory.ts";

/** The hash algorithms a cart file may name in `hashtype`. */
export const HASH_TYPES = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"] as const;
/** One of {@linkcode HASH_TYPES}. */
export type HashType = typeof HASH_TYPES[number];

const HEX_LENGTH: Record<HashType, number> = {
  md5: 32,
  sha1: 40,
  sha224: 56,
  sha256: 64,
  sha384: 96,
  sha512: 128,
};

/** Longest bundle path, in UTF-8 bytes. */
export const MAX_PATH_BYTES = 4096;
/** Longest folder or file name in a bundle path (one segment), in UTF-8 bytes: NAME_MAX. */
export const MAX_SEGMENT_BYTES = 255;

/** One file of a validated cart. */
export interface CartFileRequest {
  /** The archive id, always as a string (integers are written in decimal). */
  id: string;
  /** The clean relative path of the file inside the bundle. */
  path: string;
  /** Algorithm of `hashsum`; given together with it or not at all. */
  hashtype?: HashType;
  /** Lowercase hex. */
  hashsum?: string;
}

/** A validated cart document. */
export interface CartDocument {
  /** The files, in the order of `fileids`. */
  files: CartFileRequest[];
  /** Write the tar to disk once while bundling (Pacifica's `bundle` flag). */
  bundle: boolean;
  /** Put a BagIt-style sha256 manifest into the bundle. */
  manifest: boolean;
  /**
   * cartd's own field: the `http(s)` URL to be told when the cart is ready or failed (a
   * webhook), as {@linkcode webhookUrlProblem} accepts it; absent when the document names
   * none (Pacifica clients never do). Whether cartd may call it (its allow-list) is the
   * service's question, not the document's.
   */
  webhook?: string;
}

/** Thrown for a cart document that breaks a rule; the message names the first broken rule. */
export class CartDocumentError extends Error {
  /** Builds the error; `message` names the broken rule. */
  constructor(message: string) {
    super(message);
    this.name = "CartDocumentError";
  }
}

/** Longest webhook URL accepted, in characters. */
export const MAX_WEBHOOK_URL = 2048;

/**
 * Why `raw` cannot be a cart's webhook URL, or null when it can: it must be an absolute
 * `http:` or `https:` URL of at most {@linkcode MAX_WEBHOOK_URL} characters, with a host and
 * without a user name or password (the signature authenticates cartd; a password in the
 * URL would be stored with the cart). Its `#fragment`, which HTTP never sends, is dropped.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { webhookUrlProblem } from "./document.ts";
 * assert.equal(webhookUrlProblem("https://hooks.example.org/cartd"), null);
 * assert.match(webhookUrlProblem("ftp://example.org/")!, /http/);
 * ```
 */
export function webhookUrlProblem(raw: string): string | null {
  if (raw.length > MAX_WEBHOOK_URL) return `is longer than ${MAX_WEBHOOK_URL} characters`;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return "must be an absolute URL such as https://example.org/cartd-events";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return `must be an http: or https: URL, not ${url.protocol}`;
  }
  if (url.hostname === "") return "must name a host";
  if (url.username !== "" || url.password !== "") {
    return "must not carry a user name or password: cartd signs each event instead " +
      "(see docs/api.md, Webhooks)";
  }
  return null;
}

const utf8 = new TextEncoder();
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;
const LONE_SURROGATE = 'lone UTF-16 surrogates (a "\\ud800" escape without its pair) are not ' +
  "allowed: they have no UTF-8 form";

/** Checks one path and returns it without its leading "/" (or throws the broken rule). */
function cleanPath(raw: string): string {
  const path = raw.replace(/^\/+/, "");
  if (path === "") return fail("must name a file, not be empty");
  if (CONTROL.test(path)) return fail("control characters (including NUL) are not allowed");
  if (!path.isWellFormed()) return fail(LONE_SURROGATE);
  // A UTF-16 code unit never takes more than 3 bytes of UTF-8: most paths need no encoding.
  if (path.length * 3 > MAX_PATH_BYTES && utf8.encode(path).length > MAX_PATH_BYTES) {
    return fail(`is longer than ${MAX_PATH_BYTES} bytes`);
  }
  if (path.includes("\\")) return fail('"\\" is not allowed; separate folders with "/"');
  for (const segment of path.split("/")) {
    if (segment === "") return fail('empty segments ("//" or a trailing "/") are not allowed');
    if (segment === "..") return fail('".." is not allowed');
    if (segment === ".") return fail('"." is not allowed');
    if (segment.length * 3 > MAX_SEGMENT_BYTES) {
      const bytes = utf8.encode(segment).length;
      if (bytes > MAX_SEGMENT_BYTES) {
        const shown = segment.length > 40 ? `${segment.slice(0, 40)}…` : segment;
        return fail(
          `the name "${shown}" is ${bytes} bytes long; a folder or file name may have at most ` +
            `${MAX_SEGMENT_BYTES} bytes (UTF-8), more than file systems and tar tools can make`,
        );
      }
    }
  }
  return path;
}

function fail(rule: string): never {
  throw new PathRuleError(rule);
}

class PathRuleError extends Error {}

const fileSchema = z.looseObject({
  id: z.union([
    z.string().min(1, "must not be empty").max(1024, "is longer than 1024 characters")
      .refine((s) => !CONTROL.test(s), "control characters are not allowed")
      .refine((s) => s.isWellFormed(), LONE_SURROGATE),
    z.number().int("must be an integer").nonnegative("must not be negative"),
  ], {
    // A string or a number that breaks a rule of its own says which; any other type gets this.
    error: (issue) =>
      (issue.code === "invalid_union" &&
        issue.errors.map((member) => member[0]).find((first) =>
          first && (first.code !== "invalid_type" || first.expected === "int")
        )?.message) || "must be a string or a non-negative integer",
  }),
  path: z.string({
    error: (issue) => issue.input === undefined ? "is required" : "must be a string",
  }).transform((raw, ctx) => {
    try {
      return cleanPath(raw);
    } catch (e) {
      if (!(e instanceof PathRuleError)) throw e;
      ctx.issues.push({ code: "custom", message: e.message, input: raw });
      return z.NEVER;
    }
  }),
  hashtype: z.enum(HASH_TYPES, { error: `must be one of ${HASH_TYPES.join(", ")}` }).optional(),
  hashsum: z.string({ error: "must be a hex string" })
    .regex(/^[0-9a-fA-F]+$/, "must be hexadecimal").optional(),
}, { error: "must be an object with an id and a path" }).check((ctx) => {
  const file = ctx.value;
  if ((file.hashtype === undefined) !== (file.hashsum === undefined)) {
    ctx.issues.push({
      code: "custom",
      path: [file.hashtype === undefined ? "hashtype" : "hashsum"],
      message: "hashtype and hashsum go together: give both or neither",
      input: file,
    });
  } else if (file.hashtype && file.hashsum && file.hashsum.length !== HEX_LENGTH[file.hashtype]) {
    ctx.issues.push({
      code: "custom",
      path: ["hashsum"],
      message: `a ${file.hashtype} sum has ${
        HEX_LENGTH[file.hashtype]
      } hex digits, not ${file.hashsum.length}`,
      input: file,
    });
  }
});

/** Limits applied while parsing; both are configurable in the service. */
export interface CartDocumentLimits {
  /** Most files one cart may hold. */
  maxFiles: number;
}

const schemas = new Map<number, ReturnType<typeof buildDocumentSchema>>();

/** The document schema for these limits (built once per limit: building costs more than a parse). */
function documentSchema(limits: CartDocumentLimits) {
  let schema = schemas.get(limits.maxFiles);
  if (!schema) schemas.set(limits.maxFiles, schema = buildDocumentSchema(limits));
  return schema;
}

function buildDocumentSchema(limits: CartDocumentLimits) {
  return z.looseObject({
    fileids: z.array(fileSchema, {
      error: (issue) =>
        issue.input === undefined
          ? "is required: a list of {id, path} objects"
          : "must be a list of {id, path} objects",
    }).min(1, "must list at least one file").max(
      limits.maxFiles,
      `must list at most ${limits.maxFiles} files`,
    ),
    bundle: z.boolean({ error: "must be true or false" }).optional(),
    manifest: z.boolean({ error: "must be true or false" }).optional(),
    webhook: z.string({ error: "must be a URL string, such as https://example.org/cartd-events" })
      .check((ctx) => {
        const problem = webhookUrlProblem(ctx.value);
        if (problem) ctx.issues.push({ code: "custom", message: problem, input: ctx.value });
      }).transform((raw) => {
        const url = new URL(raw);
        url.hash = "";
        return url.href;
      }).optional(),
  }, { error: "the cart document must be a JSON object" });
}

function issuePath(path: PropertyKey[]): string {
  return path.map((p, i) =>
    typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`
  ).join("");
}

/** Why a body that is not JSON is refused. */
const NOT_JSON = "The request body is not valid JSON: send a cart document such as " +
  '{"fileids": [{"id": "foo.txt", "path": "1/2/3/foo.txt"}]}';

/**
 * Parses and validates a cart document from the raw request body.
 * Throws {@linkcode CartDocumentError} naming the first broken rule.
 */
export function parseCartDocument(
  body: string,
  limits: CartDocumentLimits = { maxFiles: 100_000 },
): CartDocument {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new CartDocumentError(NOT_JSON);
  }
  return cartDocumentOf(json, limits);
}

/**
 * As {@linkcode parseCartDocument}, from a body read in `parts` whose bytes are UTF-8 (the
 * caller checks them): the document is parsed a piece at a time (lib/util/json_parts.ts), so
 * that its whole text never exists, and `parts` is emptied as it is read (each part can be
 * collected once parsed, or is given to `read` as soon as it is: see `parseJsonParts`). A 64
 * MiB document of 100,000 files costs about its size once parsed.
 */
export function parseCartDocumentParts(
  parts: Uint8Array[],
  limits: CartDocumentLimits = { maxFiles: 100_000 },
  read?: (part: Uint8Array) => void,
): CartDocument {
  let json: unknown;
  try {
    // Not an object (null): not a cart document, but refused as the whole text would be.
    json = parseJsonParts(parts, undefined, read) ?? JSON.parse(decodeWhole(parts.splice(0)));
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    throw new CartDocumentError(NOT_JSON);
  }
  // Collected now, not after the whole check: the parts and the text of every batch are
  // garbage, and this is synchronous work of seconds, which the pacing's timer cannot see.
  heapCheckpoint();
  return cartDocumentOf(json, limits, heapCheckpoint);
}

function decodeWhole(parts: Uint8Array[]): string {
  const decoder = new TextDecoder();
  return parts.map((p) => decoder.decode(p, { stream: true })).join("") + decoder.decode();
}

/** The cart document of the JSON value `json`, or the {@linkcode CartDocumentError} refusing it. */
function cartDocumentOf(
  json: unknown,
  limits: CartDocumentLimits,
  checkpoint = () => {},
): CartDocument {
  const parsed = documentSchema(limits).safeParse(json);
  json = undefined; // as large as the document: not kept while the files are checked
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issuePath(issue.path);
    throw new CartDocumentError(where ? `${where}: ${issue.message}` : issue.message);
  }
  const files: CartFileRequest[] = parsed.data.fileids.map((f) => ({
    id: String(f.id),
    path: f.path,
    ...(f.hashtype && f.hashsum ? { hashtype: f.hashtype, hashsum: f.hashsum.toLowerCase() } : {}),
  }));
  checkpoint(); // the schema's copies of the files
  checkLayout(files);
  const { bundle = false, manifest = false, webhook } = parsed.data;
  return { files, bundle, manifest, ...(webhook === undefined ? {} : { webhook }) };
}

/**
 * The fingerprint of a validated document by which an identical re-POST is recognised: the
 * sha256 of `JSON.stringify(doc)`, hashed a thousand files at a time, so that the text of a
 * 100,000-file document (as long as the document) is never made whole.
 */
export function documentHash(doc: CartDocument): string {
  const hash = createHash("sha256");
  // The keys in the order JSON.stringify writes them (those of a CartDocument as made above).
  const { files, ...rest } = doc;
  hash.update('{"files":[');
  for (let i = 0; i < files.length; i += 1000) {
    hash.update((i ? "," : "") + files.slice(i, i + 1000).map((f) => JSON.stringify(f)).join(","));
  }
  hash.update("]");
  for (const [key, value] of Object.entries(rest)) {
    if (value !== undefined) hash.update(`,${JSON.stringify(key)}:${JSON.stringify(value)}`);
  }
  hash.update("}");
  return hash.digest("hex");
}

/**
 * The form of `path` under which names that some file system or tar tool takes for one are
 * equal: Unicode NFC (macOS and bsdtar merge the NFC and NFD forms of `café`) and lower case
 * (case-insensitive file systems merge `A.txt` and `a.txt`). Folding keeps every "/".
 */
function foldedPath(path: string): string {
  // deno-lint-ignore no-control-regex
  if (/^[\u0000-\u007f]*$/.test(path)) return path.toLowerCase();
  return path.normalize("NFC").toLowerCase().normalize("NFC");
}

/** `path` up to (not including) its `count`-th "/". */
function folderOf(path: string, count: number): string {
  return path.split("/").slice(0, count).join("/");
}

/**
 * Two entries may not share a path, even one written another way ({@linkcode foldedPath}:
 * the NFC and NFD forms of a name, or names that differ only by case), and no file may sit
 * where another needs a folder (compared the same way).
 */
function checkLayout(files: CartFileRequest[]): void {
  const fileAt = new Map<string, number>(); // by folded path
  const folded = files.map((f, i) => {
    const key = foldedPath(f.path);
    const earlier = fileAt.get(key);
    if (earlier !== undefined) throw twinError(i, f.path, earlier, files[earlier].path);
    fileAt.set(key, i);
    return key;
  });
  const folders = new Set<string>(); // checked already
  folded.forEach((key, i) => {
    for (let slash = key.indexOf("/"), n = 1; slash > 0; slash = key.indexOf("/", slash + 1), n++) {
      const folder = key.slice(0, slash);
      if (folders.has(folder)) continue;
      const clash = fileAt.get(folder);
      if (clash !== undefined) {
        const asked = folderOf(files[i].path, n);
        const other = files[clash].path;
        throw new CartDocumentError(
          `fileids[${i}].path: "${asked}" is a file (fileids[${clash}]) and cannot also be a ` +
            "folder" +
            (asked === other ? "" : ` (the file is "${other}": ${sameNameWhy(asked, other)})`),
        );
      }
      folders.add(folder);
    }
  });
}

/** Why the two different spellings `a` and `b`, equal once folded, are one name. */
function sameNameWhy(a: string, b: string): string {
  return a.normalize("NFC") === b.normalize("NFC")
    ? "the same name in another Unicode normalisation form (NFC, NFD), which tar tools and " +
      "file systems merge"
    : "the names differ only by case, which case-insensitive file systems merge";
}

/** The error for `fileids[i]` whose path `path` is the same name as `fileids[earlier]`'s. */
function twinError(i: number, path: string, earlier: number, other: string): CartDocumentError {
  if (path === other) {
    return new CartDocumentError(
      `fileids[${i}].path: "${path}" is already the path of fileids[${earlier}]`,
    );
  }
  return new CartDocumentError(
    `fileids[${i}].path: "${path}" is the path of fileids[${earlier}] ("${other}") written ` +
      `another way: ${sameNameWhy(path, other)}; one of the files would be lost: rename one`,
  );
}
