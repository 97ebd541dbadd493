/**
 * The messages between the {@linkcode ./pool.ts} (main thread) and a
 * {@linkcode ./thread.ts} Web Worker.
 *
 * @module
 */
import type { HashType } from "../lib/cart/document.ts";
import type { LocalHashes, StagedFile, StageJob } from "../lib/staging/stage_file.ts";
import type { StageSettings } from "../lib/config/config.ts";
import type { BundleFile } from "../lib/bundle/plan.ts";
import type { BundleCart } from "../lib/bundle/cart_bundle.ts";
import type { StagedColumns } from "../lib/bundle/staged_files.ts";

/**
 * Write the default download of a cart (a tar, planned by `planCartBundle`) to `dest`, via
 * `dest.part`.
 */
export interface BundleJob {
  /** The cart as it becomes ready (its `readyAt` set): what the tar is laid out from. */
  cart: BundleCart;
  /** The staged files, in bundle order: a list, or a cart's files in columns (compact). */
  files: BundleFile[] | StagedColumns;
  /** Absolute path of the bundle to write. */
  dest: string;
}

/** What a written bundle measured. */
export interface WrittenBundle {
  /** Length in bytes. */
  size: number;
  /** The bundle's strong ETag, quoted (the store records it with the ready cart). */
  etag: string;
}

/** Main thread → Web Worker. */
export type ThreadRequest =
  | { type: "stage"; id: number; job: StageJob; settings: StageSettings }
  | { type: "bundle"; id: number; job: BundleJob }
  | { type: "hash"; id: number; path: string; hashtype?: HashType }
  | { type: "cancel"; id: number }
  | { type: "memory"; slackBytes: number };

/** Web Worker → main thread; "ready" once, when the thread's module has loaded. */
export type ThreadReply =
  | { type: "ready" }
  | { type: "done"; id: number; result: StagedFile | WrittenBundle | LocalHashes }
  | { type: "failed"; id: number; error: { name: string; message: string; code?: string } };
