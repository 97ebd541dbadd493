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
import type { FromDocumentThread, ToDocumentThread } from "./documents.ts";

/**
 * The nice value this thread lowers itself to (lib/util/thread_priority.ts). At 10, Linux
 * gives it about a tenth of a contended core against a thread at 0: checking and storing four
 * 64 MiB documents at once then leaves `GET /` answered within 100 ms, where at 0 the slowest
 * took up to 141 ms.
 */
const DOCUMENT_THREAD_NICE = 10;

let store: CartStore | null = null;
let db: Db | null = null;
let config: Config | null = null;

const post = (message: FromDocumentThread, transfer: Transferable[] = []) =>
  self.postMessage(message, transfer);

async function accept(message: Extract<ToDocumentThread, { type: "accept" }>): Promise<void> {
  const { id, uid } = message;
  let response: Response;
  try {
    // Parsed a piece at a time, each part let go once read: the text is never made whole.
    const accepted = await acceptDocument(
      { store: store!, config: config! },
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
    log.setLevel(config.logLevel);
    log.setFormat(config.logFormat);
    paceHeap({ slackBytes: config.limits.gcSlackBytes });
    // Bulk work: the main thread, which answers requests, goes first when the cores are busy.
    const nice = lowerThisThread(DOCUMENT_THREAD_NICE);
    log.debug("the document thread started", { nice });
    openDb(config.database).then((opened) => {
      db = opened;
      store = new CartStore(db);
      post({ type: "ready" });
    }, (e) => post({ type: "failed", message: errorMessage(e) }));
  } else if (message.type === "accept") {
    void accept(message);
  } else if (message.type === "stop") {
    void db?.close().catch(() => {}).finally(() => {
      post({ type: "closed" });
      self.close();
    });
  }
};
