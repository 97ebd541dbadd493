import assert from "node:assert/strict";
import { getPriority } from "node:os";

/** Runs `code` in a Web Worker of this process; resolves with what it posts. */
function inWorker(code: string): Promise<unknown> {
  const module = new URL("./thread_priority.ts", import.meta.url).href;
  const source = `import { lowerThisThread } from ${JSON.stringify(module)};\n${code}`;
  const worker = new Worker(`data:text/javascript,${encodeURIComponent(source)}`, {
    type: "module",
  });
  return new Promise<unknown>((resolve, reject) => {
    worker.onmessage = (event) => resolve(event.data);
    worker.onerror = (event) => {
      event.preventDefault();
      reject(new Error(event.message));
    };
  }).finally(() => worker.terminate());
}

/** The nice value the kernel reports in `stat`, a /proc/…/stat line. */
function niceIn(stat: string): number {
  // Field 19 is the nice value; field 2 (the name) is in parentheses and may hold spaces.
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
}

Deno.test({
  name:
    "a thread lowers its own priority, and only its own: the process's other threads keep theirs",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const mainNice = getPriority(0);
    const seen = await inWorker(`
      const first = lowerThisThread(10);
      const again = lowerThisThread(5); // never raised: it stays at 10
      postMessage({ first, again, stat: Deno.readTextFileSync("/proc/thread-self/stat") });
    `) as { first: number; again: number; stat: string };
    const expected = Math.max(10, mainNice);
    assert.equal(seen.first, expected);
    assert.equal(seen.again, expected);
    assert.equal(niceIn(seen.stat), expected, "the kernel's own record of the worker's thread");
    assert.equal(getPriority(0), mainNice, "the main thread's priority did not change");
    assert.equal(niceIn(Deno.readTextFileSync("/proc/thread-self/stat")), mainNice);
  },
});

Deno.test("without --allow-sys for it, nothing changes and the answer is null", async () => {
  const module = new URL("./thread_priority.ts", import.meta.url).href;
  const dir = await Deno.makeTempDir();
  try {
    const script = `${dir}/lower.ts`;
    await Deno.writeTextFile(
      script,
      `import { lowerThisThread } from ${JSON.stringify(module)};\n` +
        `console.log(JSON.stringify(lowerThisThread(10)));\n`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--no-prompt", "--allow-read", script],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "null");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
