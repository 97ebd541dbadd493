/**
 * Background threads that leave the cores to the API first. On Linux the scheduling
 * priority (the nice value) belongs to each thread, not to the process, so a Web Worker that
 * does bulk work (checking and storing a 64 MiB cart document) can lower its own and leave
 * the main thread, which answers requests, first in line whenever the cores are contended.
 * When they are not, a nicer thread runs exactly as fast.
 *
 * Elsewhere the call would change the whole process (macOS) or means nothing here (Windows),
 * so it is left alone there; without `--allow-sys=getPriority,setPriority` nothing changes
 * either. In both cases cartd works as before, its threads competing as equals.
 *
 * @example
 * ```ts
 * import { lowerThisThread } from "./thread_priority.ts";
 * // At the start of a Web Worker that does bulk work:
 * const nice = lowerThisThread(10); // 10, or null where it could not be lowered
 * ```
 * @module
 */
import { getPriority, setPriority } from "node:os";

/**
 * Lowers the calling thread's priority to nice `nice` (1 to 19; the higher, the more it
 * yields), never raising it: a thread that is already nicer (cartd run under `nice -n 15`)
 * stays as it is. Returns the thread's nice value afterwards, or null where it could not be
 * read or changed (then nothing was).
 */
export function lowerThisThread(nice: number): number | null {
  if (Deno.build.os !== "linux") return null;
  try {
    // Process id 0 is the calling thread: Linux keeps a nice value per thread.
    const now = getPriority(0);
    if (now >= nice) return now;
    setPriority(0, nice);
    return getPriority(0);
  } catch {
    return null; // not permitted (--allow-sys), or refused by the system
  }
}
