/// <reference lib="deno.worker" />
/**
 * A Web Worker thread that stages files and writes bundles, so hashing and file I/O never
 * block the API's event loop. It runs many tasks at once (they mostly wait on the network);
 * the {@linkcode ./pool.ts} decides how many.
 *
 * @module
 */
import { hashLocalFile, StageError, stageFile } from "../lib/staging/stage_file.ts";
import { ArchiveError } from "../lib/archive/client.ts";
import { planCartBundle } from "../lib/bundle/cart_bundle.ts";
import { StagedFiles } from "../lib/bundle/staged_files.ts";
import { isNoSpace } from "../lib/util/fs_errors.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { paceHeap } from "../lib/util/memory.ts";
import type { BundleJob, ThreadReply, ThreadRequest, WrittenBundle } from "./messages.ts";

const running = new Map<number, AbortController>();

async function writeBundle(job: BundleJob, signal: AbortSignal): Promise<WrittenBundle> {
  const files = Array.isArray(job.files) ? job.files : new StagedFiles(job.files);
  const bundle = planCartBundle(job.cart, files);
  const part = `${job.dest}.part`;
  try {
    const file = await Deno.open(part, { write: true, create: true, truncate: true });
    await bundle.stream(0, bundle.size - 1, signal).pipeTo(file.writable, { signal });
    await Deno.rename(part, job.dest);
    return { size: bundle.size, etag: bundle.etag };
  } catch (e) {
    await Deno.remove(part).catch((removeError) => {
      // NotFound: the open itself failed, there is nothing to remove. Any other leftover is
      // truncated by the next write of this bundle, or removed with the cart's folder.
      if (removeError instanceof Deno.errors.NotFound) return;
      log.warn("could not remove a partial bundle", {
        path: part,
        error: errorMessage(removeError),
      });
    });
    throw e;
  }
}

/**
 * A task's error as it crosses to the main thread. A {@linkcode StageError} keeps its own code,
 * and an {@linkcode ArchiveError} has none: their messages may quote the archive (whose own
 * disk may be full), which says nothing of ours. Only a raw file-system error is classified
 * here, by {@linkcode isNoSpace}: a full disk becomes `"nospace"`.
 */
function describe(error: unknown): { name: string; message: string; code?: string } {
  if (error instanceof StageError) {
    return { name: error.name, message: error.message, code: error.code };
  }
  if (error instanceof ArchiveError) return { name: error.name, message: error.message };
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      name: error.name,
      message: error.message,
      code: isNoSpace(error) ? "nospace" : typeof code === "string" ? code : undefined,
    };
  }
  return { name: "Error", message: String(error) };
}

self.onmessage = async (event: MessageEvent<ThreadRequest>) => {
  const request = event.data;
  if (request.type === "memory") {
    paceHeap({ slackBytes: request.slackBytes });
    return;
  }
  if (request.type === "cancel") {
    running.get(request.id)?.abort(new DOMException("The task was cancelled", "AbortError"));
    return;
  }
  const controller = new AbortController();
  running.set(request.id, controller);
  let reply: ThreadReply;
  try {
    const result = request.type === "stage"
      ? await stageFile(request.job, request.settings, controller.signal)
      : request.type === "hash"
      ? await hashLocalFile(request.path, request.hashtype)
      : await writeBundle(request.job, controller.signal);
    reply = { type: "done", id: request.id, result };
  } catch (error) {
    reply = { type: "failed", id: request.id, error: describe(error) };
  } finally {
    running.delete(request.id);
  }
  self.postMessage(reply);
};

self.postMessage({ type: "ready" } satisfies ThreadReply);
