/**
 * Stage requests sent ahead of a cart's size HEADs once the cart is found on tape (issue 14).
 *
 * A cart's files are HEADed for their sizes (the room is reserved before anything is
 * fetched, and a cart that does not fit fails before a tape turns), and those HEADs pass the
 * process's HEAD ceiling (`CARTD_HEADS_PER_SECOND`): 1,000 files take two seconds at 500 a
 * second. A stage request needs no HEAD before it (SPEC §2: `POST {base}{id}` asks for the
 * file, and one for a file on disk changes nothing), so once one HEAD of the cart says `tape`,
 * {@linkcode EarlyStages} sends the stage request of every file not asked yet at once, through
 * the process's `RecallManager` (`stageEarly`: up to `CARTD_RECALLS_MAX`, and only while no
 * recall waits for that cap), and the tape library sees the whole cart instead of the files
 * trickling in at the HEAD pace. The HEADs still come, and decide: one that says `tape` makes
 * the recall of that early request (its first poll at the typical recall time after the POST,
 * not after the HEAD); one that says anything else drops it. Files that another live cart may
 * hold staged (they are linked, not fetched) get no early request, and with database claims
 * (several workers) none is sent: each file's recall is its leading worker's. The price: a cart found on
 * tape that then fails (it does not fit, a file is missing) has had its files asked for, and a
 * file of it that was on disk got a stage request that changes nothing.
 *
 * @module
 */
import { errorMessage, log } from "../lib/util/log.ts";
import type { CartRun } from "./context.ts";
import { sharesOf } from "./shares.ts";

/** The early stage requests of one cart's staging attempt. */
export class EarlyStages {
  readonly #run: CartRun;
  readonly #asked: (idx: number) => boolean;
  #sending: Promise<void> | undefined;
  #stopped = false;

  /**
   * For `run`'s cart; `asked(idx)` says whether file `idx` has had its HEAD already (it gets
   * no early request).
   */
  constructor(run: CartRun, asked: (idx: number) => boolean) {
    this.#run = run;
    this.#asked = asked;
  }

  /**
   * A HEAD of the cart said `tape`: sends the early stage requests (the first call only). Not
   * with database claims (several workers on one database): there a file is recalled only by
   * the worker whose cart leads it (worker/shares.ts), which its HEAD decides, so a request
   * sent ahead would recall a file another worker is recalling.
   */
  onTape(): void {
    if (this.#sending || this.#stopped || sharesOf(this.#run.deps).claims) return;
    this.#sending = this.#send();
  }

  /** A HEAD of `archiveId` said it is not on tape (or it is linked): its early request goes. */
  notOnTape(archiveId: string): void {
    if (this.#sending) this.#run.deps.recalls.dropEarly(archiveId);
  }

  /** Stops sending; the early requests that no HEAD took over are forgotten. */
  async end(): Promise<void> {
    this.#stopped = true;
    if (!this.#sending) return;
    await this.#sending;
    this.#run.deps.recalls.endEarly(this.#run.cart.id);
  }

  async #send(): Promise<void> {
    const { cart, deps: { store, recalls } } = this.#run;
    let sent = 0;
    try {
      const files = sharesOf(this.#run.deps).withHints(store.eachFile(cart.id, "unsized"), cart.id);
      for await (const { file, stored } of files) {
        if (this.#stopped) break;
        if (stored || this.#asked(file.idx)) continue;
        if (!recalls.stageEarly(file.archiveId, cart.id)) break; // the cap: HEADs do the rest
        sent++;
      }
    } catch (e) {
      // Only a head start: each file's own HEAD still recalls it.
      log.debug("early stage requests stopped", { cart: cart.id, error: errorMessage(e) });
    }
    if (sent) log.debug("stage requests sent ahead of their HEADs", { cart: cart.id, files: sent });
  }
}
