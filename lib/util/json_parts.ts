/**
 * JSON read from a body's parts without ever making the whole text (issue 15 item 4): a 64 MiB
 * cart document of 100,000 files cost its bytes, its text (twice, while the parts' texts were
 * joined), the parsed value, and garbage of each, all at once. {@linkcode parseJsonParts} reads
 * a top-level object member by member, and each array among its values a batch of elements at
 * a time; each piece is decoded and given to `JSON.parse` on its own, so the text that exists
 * at once is about {@linkcode BATCH_BYTES} long, and each part can be collected once read.
 *
 * The result is what `JSON.parse` of the whole text gives, and text that `JSON.parse` refuses
 * is refused: the pieces, with the structure read around them (`{`, `"key"`, `:`, `[`, `,`,
 * `]`, `}`), are the text, so the whole is JSON exactly when each piece is. The bytes must be
 * UTF-8 (`isUtf8Parts` of ./utf8_parts.ts checks them).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseJsonParts } from "./json_parts.ts";
 * const utf8 = new TextEncoder();
 * const parts = [utf8.encode('{"a": [1, {"b"'), utf8.encode(': "c"}], "d": true}')];
 * assert.deepEqual(parseJsonParts(parts), { a: [1, { b: "c" }], d: true });
 * assert.equal(parts.length, 0); // each part let go once read
 * ```
 * @module
 */

/** About how long the text of one batch of array elements is (each is parsed on its own). */
export const BATCH_BYTES = 1 << 20;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

const isSpace = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;

/** Where the reading stands between bytes. */
const enum At {
  /** Before the top-level value. */
  Start,
  /** After `{`: a key or `}`. */
  FirstKey,
  /** After `,` between members: a key. */
  Key,
  /** Inside a key. */
  InKey,
  /** After a key: `:`. */
  Colon,
  /** After `:`: the value. */
  Value,
  /** Inside a value that is not an array (up to its `,` or `}`). */
  InValue,
  /** Inside an array value (its elements, up to its `]`). */
  InArray,
  /** After a member's value: `,` or `}`. */
  AfterValue,
  /** After the closing `}`: only white space. */
  End,
}

const syntax = (what: string) => new SyntaxError(`JSON: ${what}`);

/**
 * The value of the JSON text in `parts` (UTF-8, a byte order mark at its start ignored, as
 * `TextDecoder` does), or null when it is not an object (for the caller to parse the text
 * whole: only objects are read piece by piece, and nothing has been taken from `parts` then).
 * Otherwise `parts` is emptied as it is read, so that each part can be collected once its
 * bytes are parsed. Throws a `SyntaxError` where `JSON.parse` of the whole would. Arrays are
 * parsed in batches of about `batchBytes`.
 *
 * `read`, when given, is given each part, in order, as soon as nothing that is still to be
 * parsed refers to its bytes: the part is the caller's again (to read more bytes into, to hand
 * to another thread). A part is given once at most; parts not yet given when it throws are
 * not given.
 *
 * @example Parts handed back to be filled again
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseJsonParts } from "./json_parts.ts";
 * const utf8 = new TextEncoder();
 * const parts = [utf8.encode('{"a": "bc'), utf8.encode('d", "e": 1}')];
 * const back: Uint8Array[] = [];
 * assert.deepEqual(parseJsonParts(parts, undefined, (part) => back.push(part)), {
 *   a: "bcd",
 *   e: 1,
 * });
 * assert.equal(back.length, 2);
 * ```
 */
export function parseJsonParts(
  parts: Uint8Array[],
  batchBytes: number = BATCH_BYTES,
  read?: (part: Uint8Array) => void,
): Record<string, unknown> | null {
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  const result: Record<string, unknown> = {};
  let at = At.Start;
  let first = true; // at the very first byte (where a byte order mark may be)
  let key = "";
  // The bytes of the piece being read (a key, a value, a batch of elements): the earlier
  // parts' ends, then the current part from `pieceStart`.
  let piece: Uint8Array[] = [];
  let pieceStart = -1;
  let pieceBytes = 0;
  let depth = 0; // of brackets and braces inside the value or element being read
  let inString = false;
  let escaped = false;
  let array: unknown[] = [];
  let elements = 0; // of the array being read

  const text = (part: Uint8Array, end: number): string => {
    const tail = part.subarray(pieceStart, end);
    if (!piece.length) return decoder.decode(tail);
    const all = new Uint8Array(pieceBytes + tail.length);
    let n = 0;
    for (const p of piece) {
      all.set(p, n);
      n += p.length;
    }
    all.set(tail, n);
    return decoder.decode(all);
  };
  const endPiece = () => {
    piece = [];
    pieceStart = -1;
    pieceBytes = 0;
  };
  /** Parses the batch of elements that ends before `end` (a `,` or the `]`). */
  const batch = (part: Uint8Array, end: number, last: boolean) => {
    const got = JSON.parse(`[${text(part, end)}]`) as unknown[];
    endPiece();
    if (got.length === 0) {
      // Only white space: `[ ]` when it is the whole array, else a `,` without a value.
      if (!last || elements > 0 || array.length > 0) throw syntax("a value is missing");
      return;
    }
    for (const v of got) array.push(v);
    elements += got.length;
  };
  const member = (value: unknown) => {
    // As JSON.parse makes it: an own property even for "__proto__"; the last one wins.
    Object.defineProperty(result, key, {
      value,
      writable: true,
      enumerable: true,
      configurable: true,
    });
  };

  // Nothing is taken before the first byte that is not white space is known to open an object.
  if (!opensAnObject(parts)) return null;
  return readAll();

  function readAll(): Record<string, unknown> {
    // Parts read whose bytes the piece being read may still refer to (it began in the first).
    let kept: Uint8Array[] = [];
    while (parts.length) {
      const part = parts.shift()!;
      if (pieceStart === -1 && (at === At.InKey || at === At.InValue || at === At.InArray)) {
        pieceStart = 0;
      }
      readPart(part);
      if (pieceStart !== -1) {
        const rest = part.subarray(pieceStart);
        piece.push(rest);
        pieceBytes += rest.length;
        pieceStart = -1;
      }
      if (read) {
        kept.push(part);
        if (!piece.length) kept = giveBack(kept); // no piece open: none refers to them
      }
    }
    if (at !== At.End) throw syntax("the text ends before its value does");
    giveBack(kept);
    return result;
  }

  function giveBack(done: Uint8Array[]): Uint8Array[] {
    for (const part of done) read!(part);
    return [];
  }

  function readPart(part: Uint8Array): void {
    let i = 0;
    let backslash = -1; // the next backslash at or after i, once looked for
    if (first && part[0] === 0xef && part[1] === 0xbb && part[2] === 0xbf) i = 3;
    if (part.length) first = false;
    for (; i < part.length; i++) {
      const b = part[i];
      switch (at) {
        case At.Start:
          if (isSpace(b)) continue;
          if (b !== OPEN_BRACE) throw syntax("expected an object");
          at = At.FirstKey;
          continue;
        case At.FirstKey:
        case At.Key:
          if (isSpace(b)) continue;
          if (b === CLOSE_BRACE && at === At.FirstKey) {
            at = At.End;
            continue;
          }
          if (b !== QUOTE) throw syntax("expected a key");
          at = At.InKey;
          pieceStart = i;
          escaped = false;
          continue;
        case At.InKey:
          if (escaped) escaped = false;
          else if (b === BACKSLASH) escaped = true;
          else if (b === QUOTE) {
            const name = JSON.parse(text(part, i + 1));
            if (typeof name !== "string") throw syntax("a key must be a string");
            key = name;
            endPiece();
            at = At.Colon;
          }
          continue;
        case At.Colon:
          if (isSpace(b)) continue;
          if (b !== COLON) throw syntax("expected a colon");
          at = At.Value;
          continue;
        case At.Value:
          if (isSpace(b)) continue;
          depth = 0;
          inString = false;
          escaped = false;
          if (b === OPEN_BRACKET) {
            at = At.InArray;
            array = [];
            elements = 0;
            pieceStart = i + 1;
          } else {
            at = At.InValue;
            pieceStart = i;
            i--; // its first byte is read as part of it
          }
          continue;
        case At.InValue:
        case At.InArray:
          if (inString) {
            if (escaped) {
              escaped = false;
              continue;
            }
            // Straight to the string's next quote or backslash (most strings have none).
            if (backslash < i) {
              backslash = part.indexOf(BACKSLASH, i);
              if (backslash === -1) backslash = part.length;
            }
            const quote = part.indexOf(QUOTE, i);
            const stop = quote === -1 ? part.length : quote;
            if (backslash < stop) {
              i = backslash;
              escaped = true;
            } else if (quote === -1) {
              i = part.length; // still inside the string at the end of the part
            } else {
              i = quote;
              inString = false;
            }
            continue;
          }
          if (b === QUOTE) inString = true;
          else if (b === OPEN_BRACE || b === OPEN_BRACKET) depth++;
          else if (depth > 0 && (b === CLOSE_BRACE || b === CLOSE_BRACKET)) depth--;
          else if (depth === 0 && at === At.InValue && (b === COMMA || b === CLOSE_BRACE)) {
            member(JSON.parse(text(part, i)));
            endPiece();
            at = b === COMMA ? At.Key : At.End;
          } else if (depth === 0 && at === At.InArray && b === COMMA) {
            if (pieceBytes + i - pieceStart >= batchBytes) {
              batch(part, i, false);
              pieceStart = i + 1;
            }
          } else if (depth === 0 && at === At.InArray && b === CLOSE_BRACKET) {
            batch(part, i, true);
            member(array);
            array = [];
            at = At.AfterValue;
          } else if (depth === 0 && (b === CLOSE_BRACE || b === CLOSE_BRACKET)) {
            throw syntax("a bracket closes what was not opened");
          }
          continue;
        case At.AfterValue:
          if (isSpace(b)) continue;
          if (b === COMMA) at = At.Key;
          else if (b === CLOSE_BRACE) at = At.End;
          else throw syntax("expected a comma or the end of the object");
          continue;
        case At.End:
          if (isSpace(b)) continue;
          throw syntax("text after the end of the object");
      }
    }
  }
}

/** Whether the first byte of `parts` that is not white space (nor a byte order mark) is `{`. */
function opensAnObject(parts: readonly Uint8Array[]): boolean {
  let offset = 0;
  for (const part of parts) {
    for (let i = 0; i < part.length; i++, offset++) {
      if (offset === 0 && part[0] === 0xef && part[1] === 0xbb && part[2] === 0xbf) {
        i += 2;
        offset += 2;
        continue;
      }
      if (!isSpace(part[i])) return part[i] === OPEN_BRACE;
    }
  }
  return false;
}
