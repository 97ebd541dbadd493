/// <reference lib="deno.worker" />
/**
 * The document thread: a Web Worker that reads, checks and stores big cart documents
 * (`POST /{uid}` bodies of 1 MiB or more), one at a time, with its own database connection,
 * so that a 64 MiB document of 100,000 files never holds up a thread that answers requests
 * (app/documents.ts starts it when the first such document comes). It runs at a lower
 * priority than the main thread where the system allows it.
 *
 * @module
 */
import { openDb } from "../lib/db/open.ts";
import type { Db } from "../lib/db/db.ts";
import type { Config } from "../lib/config/config.ts";
import { CartStore } from "../lib/store/store.ts";
import { errorMessage } from "../lib/util/log.ts";
import { log } from "../lib/util/log.ts";
import { heapCheckpoint, paceHeap } from "../lib/util/memory.ts";
import { lowerThisThread } from "../lib/util/thread_priority.ts";
import { acceptDocument, errorAnswer } from "../http/routes.ts";
import {
  claimWanted,
  type FromDocumentThread,
  PART_BYTES,
  type ToDocumentThread,
} from "./documents.ts";

/**
 * The nice value this thread lowers itself to (lib/util/thread_priority.ts) when it is given
 * its first document to check. At 10, Linux gives it about a tenth of a contended core against
 * a thread at 0: checking and storing four 64 MiB documents at once then leaves `GET /`
 * answered within 100 ms, where at 0 the slowest took up to 141 ms. Until then it makes the
 * parts the first bodies are read into ({@linkcode makeParts}) at the main thread's priority:
 * at 10 it made 2 to 5 of their 15 in time. (A thread's priority can only be lowered: it
 * stays at 10 until the thread stops, 5 s after its last document.)
 */
const DOCUMENT_THREAD_NICE = 10;
let lowered = false;

let store: CartStore | null = null;
let db: Db | null = null;
let config: Config | null = null;
let wanted: Int32Array<SharedArrayBuffer> | null = null;
let making = false;

const post = (message: FromDocumentThread, transfer: Transferable[] = []) =>
  self.postMessage(message, transfer);

/** A part parsed: handed back, not copied, for the main thread to read a later body into. */
function handBack(part: Uint8Array): void {
  const buffer = part.buffer as ArrayBuffer;
  if (part.byteOffset === 0) post({ type: "spare", buffer }, [buffer]);
}

/**
 * Makes the parts the main thread asked for, and hands them over: each page written once, so
 * that the kernel maps it here, at this thread's priority, and not while the main thread
 * copies a body into it. One part a turn, so that a document to check is not held up.
 */
async function makeParts(): Promise<void> {
  if (making || !wanted) return;
  making = true;
  try {
    while (claimWanted(wanted)) {
      const part = new Uint8Array(PART_BYTES);
      for (let page = 0; page < part.length; page += 4096) part[page] = 0;
      post({ type: "spare", buffer: part.buffer }, [part.buffer]);
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  } finally {
    making = false;
  }
}

async function accept(message: Extract<ToDocumentThread, { type: "accept" }>): Promise<void> {
  const { id, uid } = message;
  if (!lowered) {
    lowered = true;
    // Bulk work: the main thread, which answers requests, goes first when the cores are busy.
    const nice = lowerThisThread(DOCUMENT_THREAD_NICE);
    log.debug("the document thread checks its first document", { nice });
  }
  let response: Response;
  try {
    // Parsed a piece at a time, each part let go once read: the text is never made whole.
    const accepted = await acceptDocument(
      { store: store!, config: config!, partRead: handBack },
      uid,
      message.parts,
      message.who,
    );
    if (!(accepted instanceof Response)) {
      // The cart's rows (tens of MiB of SQLite log) are copied into the database file here,
      // not by the main thread's next write, which would stop answering meanwhile.
      await db!.checkpoint();
      return post({ type: "accepted", id, accepted });
    }
    response = accepted;
  } catch (e) {
    response = errorAnswer(e, "POST", `/${uid}`);
  } finally {
    heapCheckpoint(); // the document's garbage is the most this thread ever makes
  }
  const body = await response.bytes();
  post({
    type: "refused",
    id,
    status: response.status,
    headers: [...response.headers],
    body,
  }, [body.buffer]);
}

self.onmessage = (event: MessageEvent<ToDocumentThread>) => {
  const message = event.data;
  if (message.type === "start") {
    config = message.config;
    wanted = message.wanted;
    log.setLevel(config.logLevel);
    log.setFormat(config.logFormat);
    paceHeap({ slackBytes: config.limits.gcSlackBytes });
    log.debug("the document thread started");
    openDb(config.database).then((opened) => {
      db = opened;
      store = new CartStore(db);
      post({ type: "ready" });
    }, (e) => post({ type: "failed", message: errorMessage(e) }));
  } else if (message.type === "make") {
    void makeParts();
  } else if (message.type === "accept") {
    void accept(message);
  } else if (message.type === "stop") {
    void db?.close().catch(() => {}).finally(() => {
      post({ type: "closed" });
      self.close();
    });
  }
};
