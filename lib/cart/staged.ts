/**
 * What staging learns about one file of a cart: the facts the worker records in the store
 * (lib/store) once lib/staging has written and verified the file, and that a bundle's tar
 * and zip headers are made from. One type for both layers, which may not import each other.
 *
 * @example
 * ```ts
 * import type { StagedFacts } from "./staged.ts";
 * const facts: StagedFacts = { size: 3, mtime: 1_700_000_000, sha256: "ba7816bf…", crc32: 0 };
 * ```
 * @module
 */

/** What staging learned about one file. */
export interface StagedFacts {
  /** Length in bytes. */
  size: number;
  /** Modification time in seconds since the epoch, as the archive reported it (`Last-Modified`). */
  mtime: number;
  /**
   * Lowercase hex SHA-256 of the bytes; null when staging did not measure it (it does only
   * for a cart that asked for a manifest, or that checks a sha256 of its own): a manifest
   * asked for later measures it then (`StagedFiles.measure`, lib/bundle/staged_files.ts).
   */
  sha256: string | null;
  /**
   * Unsigned CRC-32 of the bytes (as zlib and zip tools compute it); null when staging did not
   * measure it (a big file piped to disk is not read back only for it): a zip measures it
   * then, or the pass after the cart is ready (`StagedFiles.measure`).
   */
  crc32: number | null;
}

/**
 * The content key of a staged file's bytes: its device, inode and birth time (hard links to
 * the same bytes share it; see worker/shares.ts). The staging thread takes it from the file it
 * wrote, the worker from a link it made, so both layers compute it here.
 */
export function contentKey(info: Pick<Deno.FileInfo, "dev" | "ino" | "birthtime">): string {
  return `${info.dev}:${info.ino ?? 0}:${info.birthtime?.getTime() ?? 0}`;
}
