/**
 * Assembles a cartd process from its parts: database and store, queue, volume, and, by role,
 * the HTTP API (`serve`), the worker with its thread pool (`worker`), or both (`all`).
 *
 * @example
 * ```ts
 * import { loadConfig } from "../lib/config/config.ts";
 * import { startService } from "./service.ts";
 * const service = await startService(loadConfig(), { role: "all", port: 0 });
 * console.log(service.url);
 * await service.close();
 * ```
 * @module
 */
import { ArchiveClient } from "../lib/archive/client.ts";
import type { Config } from "../lib/config/config.ts";
import { openDb } from "../lib/db/open.ts";
import { listenFailure } from "../lib/util/listen.ts";
import { watchRecalls } from "../lib/util/metrics.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { canCollect, paceHeap } from "../lib/util/memory.ts";
import { openQueue } from "../lib/queue/open.ts";
import { syncSchema } from "../lib/store/schema.ts";
import { Cancellations } from "../lib/space/cancellations.ts";
import { diskInfo, Space } from "../lib/space/space.ts";
import { RecallManager, recallOptions } from "../lib/staging/recalls.ts";
import { FileShares } from "../worker/shares.ts";
import { hostname as osHostname } from "node:os";
import { CartStore } from "../lib/store/store.ts";
import { Volume } from "../lib/volume/volume.ts";
import { WebhookOutbox } from "../lib/store/webhooks.ts";
import { AllowList } from "../lib/webhook/allow.ts";
import { WebhookSender } from "../lib/webhook/sender.ts";
import type { EventHub } from "../http/events.ts";
import { cartRoutes, type Submitter } from "../http/routes.ts";
import { LinkSigner, parseLinkKeys } from "../http/links.ts";
import { Access } from "../http/access.ts";
import { CartWorker } from "../worker/dispatcher.ts";
import { ThreadPool } from "../threads/pool.ts";
import { copiesChunks, type LimitedServer, serveLimited, type ServerLimits } from "./server.ts";
import { canShareThePort, ProcessHolds, startHttpThreads } from "./http_threads.ts";
import { Documents } from "./documents.ts";

/** Which parts a process runs. */
export type Role = "all" | "serve" | "worker";

/** Where the API listens. */
export interface ServiceOptions {
  /** Which parts to run. */
  role: Role;
  /** The API's port (default 8081; 0 picks a free one). */
  port?: number;
  /** The address the API listens on (default 127.0.0.1). */
  hostname?: string;
}

/** A running cartd process. */
export interface Service {
  /** The API's base URL (null for a worker-only process). */
  url: string | null;
  /** The process's cart store. */
  store: CartStore;
  /** Stops the API and the worker, and closes connections. */
  close(): Promise<void>;
}

/** The API server's limits, from the settings (CARTD_MAX_CONNECTIONS …). */
function serverLimits({ api }: Config): ServerLimits {
  return {
    maxConnections: api.maxConnections,
    headerTimeoutMs: api.headerTimeoutMs,
    idleTimeoutMs: api.idleTimeoutMs,
    minRate: api.minDownloadRate,
    rateWindowMs: api.rateWindowMs,
  };
}

/**
 * Starts the worker's webhook delivery loop (lib/webhook/sender.ts) when webhooks are on
 * (`CARTD_WEBHOOK_SECRET` set); without a secret, says so when events wait in the outbox.
 */
async function startWebhooks(
  config: Config,
  outbox: WebhookOutbox,
  opened: (() => Promise<void> | void)[],
): Promise<void> {
  const { secret, allow, timeoutMs, retryDelayMs, retryForMs } = config.webhooks;
  if (!secret) {
    const waiting = await outbox.pending();
    if (waiting > 0) {
      log.warn(
        "webhook events wait in the outbox, but CARTD_WEBHOOK_SECRET is not set: none is sent",
        {
          events: waiting,
        },
      );
    }
    return;
  }
  const sender = new WebhookSender(outbox, {
    secret,
    allow: new AllowList(allow),
    timeoutMs,
    retryDelayMs,
    retryForMs,
    userAgent: "cartd-webhooks/1",
  });
  sender.start();
  opened.push(() => sender.stop());
  log.info("webhook delivery started", { owner: sender.owner, allow: allow.join(",") });
}

/** What the operator changes when the API's port is taken (the command's flags). */
const API_LISTEN_FLAGS = "--port PORT (or --address ADDRESS)";

/**
 * Starts the parts of cartd that `options.role` names. Nothing is reported as started before
 * it is: the API binds its port before the worker starts, and when any part fails (the port is
 * taken, the threads do not load) the parts already open are closed again before the error
 * (a `ListenError` naming the address, for a port) is thrown.
 */
export async function startService(config: Config, options: ServiceOptions): Promise<Service> {
  log.setLevel(config.logLevel);
  log.setFormat(config.logFormat);
  const volume = new Volume(config.volumePath);
  try {
    await Deno.mkdir(volume.cartsDir, { recursive: true });
  } catch (e) {
    throw new Error(
      `cannot create the volume folder ${volume.cartsDir} (VOLUME_PATH=${config.volumePath}): ` +
        `${errorMessage(e)}; set VOLUME_PATH to a folder this process may write`,
      { cause: e },
    );
  }
  // Closed in reverse order when a later part fails, and by close().
  const opened: (() => Promise<void> | void)[] = [];
  const closeOpened = async () => {
    for (const close of opened.splice(0).reverse()) {
      try {
        await close();
      } catch (e) {
        log.warn("closing a part of cartd failed", { error: errorMessage(e) });
      }
    }
  };
  try {
    const pacing = paceHeap({ slackBytes: config.limits.gcSlackBytes });
    opened.push(() => pacing.stop());
    if (config.limits.gcSlackBytes > 0 && !canCollect()) {
      log.warn(
        "V8 runs without --expose-gc: memory is left to V8's own pacing (CARTD_GC_SLACK has no effect)",
      );
    }
    const db = await openDb(config.database);
    opened.push(() => db.close());
    await syncSchema(db);
    const store = new CartStore(db);
    const queue = await openQueue(config.queue);
    opened.push(() => queue.close());
    // The process's cancellations: the routes and the space tell the worker through it which
    // carts were removed, so that it stops their work at once.
    const cancellations = new Cancellations();

    let url: string | null = null;
    let server: LimitedServer | null = null;
    let events: EventHub | null = null;
    // One client for the worker's archive calls, and one space for the API and the worker.
    const archive = new ArchiveClient(config.archiveUrl, {
      requestTimeoutMs: config.staging.requestTimeoutMs,
      outageMaxMs: config.staging.outageMaxMs,
    });
    const space = new Space(store, volume, config.space, Date.now, diskInfo, cancellations);
    if (options.role !== "worker") {
      // An estimate answers a person who waits for it: it does not wait out an archive
      // outage as staging does, but answers 502 at once (a health of its own, limit 0).
      const estimate = {
        archive: new ArchiveClient(config.archiveUrl, {
          requestTimeoutMs: config.staging.requestTimeoutMs,
          outageMaxMs: 0,
        }),
        space,
      };
      const access = new Access(config.access);
      await access.start();
      if (access.on) log.info("access control on", { identities: access.describe() });
      let threads = config.api.httpThreads;
      // The threads answer downloads without the access checks and signed links of the main
      // thread's app: with either on, the main thread serves alone.
      const guarded = access.on || new LinkSigner(parseLinkKeys(config.access.linkKeys)).on;
      if (threads > 0 && guarded) {
        log.warn(
          "the API runs on the main thread alone while access control or signed links are on " +
            "(HTTP threads do not check identities yet)",
          { CARTD_HTTP_THREADS: threads },
        );
        threads = 0;
      } else if (threads > 0 && !canShareThePort()) {
        log.warn(
          "the API runs on the main thread alone: HTTP threads need Linux and Deno's " +
            "--unstable-net flag (which the tasks, the binary and the image pass)",
          { CARTD_HTTP_THREADS: threads },
        );
        threads = 0;
      }
      const holds = threads > 0 ? new ProcessHolds(store) : undefined;
      // Big documents are read, checked and stored in a thread of their own (issue 15 item 4),
      // owners and quotas included (with webhooks on, the app reads them: it checks their URLs).
      const documents = new Documents(config, store);
      opened.push(() => documents.close());
      const accept = (request: Request, uid: string, who: Submitter) =>
        documents.accept(request, uid, who);
      const app = cartRoutes({
        store,
        queue,
        volume,
        config,
        cancellations,
        estimate,
        access,
        holds,
        accept,
        // The main thread's server sends downloads only without HTTP threads (their answers
        // to forwarded requests are read whole: nothing may be lent to them).
        lendChunks: !holds && copiesChunks(),
      });
      events = app.events;
      const port = options.port ?? 8081;
      const hostname = options.hostname ?? "127.0.0.1";
      try {
        // The connection cap and time limits of issue 18 (Deno.serve has none): app/server.ts;
        // in every HTTP thread (issue 15), or in the main thread alone.
        const limits = { ...serverLimits(config) };
        server = holds
          ? await startHttpThreads(
            { threads, hostname, port, limits, config, holds },
            (r) => app.fetch(r),
          )
          : serveLimited({ port, hostname, ...limits }, (r, info) => app.fetch(r, info));
      } catch (e) {
        throw listenFailure(e, hostname, port, "the API", API_LISTEN_FLAGS);
      }
      // Event streams last until their cart is done: they end before the server waits for
      // its answers in flight.
      opened.push(() => server?.shutdown());
      opened.push(() => app.events.close());
      const addr = server.addr;
      const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
      url = `http://${host}:${addr.port}/`;
    }

    if (options.role !== "serve") {
      const pool = new ThreadPool(
        config.limits.threads,
        config.limits.filesInFlight,
        config.limits.gcSlackBytes,
      );
      opened.push(() => pool.close());
      await pool.ready().catch((e) => {
        throw new Error(`${e.message}: the worker cannot stage or bundle; check the installation`);
      });
      // One per worker process: every tape recall of every cart, under one cap and one
      // HEAD ceiling. Closed after the worker stops (its carts' recalls are aborted by then).
      const recalls = new RecallManager(archive, recallOptions(config.staging));
      opened.push(() => recalls.close());
      // The recall figures of /metrics (per process), read at each scrape.
      opened.push(watchRecalls(() => recalls.stats()));
      // One per worker process: one lead per archive file, links to stored copies; with
      // MySQL (several workers on one database) a claim per file in the database too.
      const shares = new FileShares(store, volume, pool, {
        claims: config.database.kind === "mysql",
        owner: `${osHostname().slice(0, 40)}:${Deno.pid}:f${crypto.randomUUID().slice(0, 8)}`,
        ttlMs: config.work.claimTtlMs,
      });
      opened.push(() => shares.close());
      const worker = new CartWorker({
        store,
        queue,
        volume,
        config,
        pool,
        archive,
        recalls,
        space,
        cancellations,
        shares,
      });
      // Stopped before the pool closes (the later entry closes first).
      opened.push(() => worker.stop());
      await worker.start();
      log.info("worker started", { owner: worker.owner, threads: config.limits.threads });
      await startWebhooks(config, new WebhookOutbox(db), opened);
    }
    log.info("cartd started", {
      role: options.role,
      url: url ?? undefined,
      volume: config.volumePath,
      database: config.database.kind,
      queue: config.queue.kind,
      archive: config.archiveUrl,
    });
    return {
      url,
      store,
      async close() {
        // The API stops taking requests first; then the worker, its threads, queue, database.
        const api = server;
        server = null;
        events?.close();
        await api?.shutdown();
        await closeOpened();
      },
    };
  } catch (e) {
    await closeOpened();
    throw e;
  }
}
