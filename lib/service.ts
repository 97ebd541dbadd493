/**
 * Assembles a cartd process from its parts: database and store, queue, volume, and, by role,
 * the HTTP API (`serve`), the worker with its thread pool (`worker`), or both (`all`).
 *
 * @example
 * ```ts
 * import { loadConfig } from "./config.ts";
 * import { startService } from "./service.ts";
 * const service = await startService(loadConfig(), { role: "all", port: 0 });
 * console.log(service.url);
 * await service.close();
 * ```
 * @module
 */
import { ArchiveClient } from "./archive_client.ts";
import type { Config } from "./config.ts";
import { openDb } from "./db.ts";
import { log } from "./log.ts";
import { canCollect, paceHeap } from "./memory.ts";
import { openQueue } from "./queue.ts";
import { syncSchema } from "./schema.ts";
import { Space } from "./space.ts";
import { CartStore } from "./store.ts";
import { Volume } from "./volume.ts";
import { cartRoutes } from "../routes/carts.ts";
import { CartWorker } from "../workers/cart_worker.ts";
import { ThreadPool } from "../workers/pool.ts";

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

/** Starts the parts of cartd that `options.role` names. */
export async function startService(config: Config, options: ServiceOptions): Promise<Service> {
  log.setLevel(config.logLevel);
  const pacing = paceHeap({ slackBytes: config.limits.gcSlackBytes });
  if (config.limits.gcSlackBytes > 0 && !canCollect()) {
    log.warn(
      "V8 runs without --expose-gc: memory is left to V8's own pacing (CARTD_GC_SLACK has no effect)",
    );
  }
  const volume = new Volume(config.volumePath);
  await Deno.mkdir(volume.cartsDir, { recursive: true });
  const db = await openDb(config.database);
  await syncSchema(db);
  const store = new CartStore(db);
  const queue = await openQueue(config.queue);

  let worker: CartWorker | null = null;
  let pool: ThreadPool | null = null;
  if (options.role !== "serve") {
    pool = new ThreadPool(
      config.limits.threads,
      config.limits.filesInFlight,
      config.limits.gcSlackBytes,
    );
    await pool.ready().catch((e) => {
      pool?.close();
      throw new Error(`${e.message}: the worker cannot stage or bundle; check the installation`);
    });
    const archive = new ArchiveClient(config.archiveUrl, {
      requestTimeoutMs: config.staging.requestTimeoutMs,
    });
    const space = new Space(store, volume, config.space);
    worker = new CartWorker({ store, queue, volume, config, pool, archive, space });
    await worker.start();
    log.info("worker started", { owner: worker.owner, threads: config.limits.threads });
  }

  let server: Deno.HttpServer | null = null;
  let url: string | null = null;
  if (options.role !== "worker") {
    const app = cartRoutes({ store, queue, volume, config });
    const listening = Promise.withResolvers<Deno.NetAddr>();
    server = Deno.serve({
      port: options.port ?? 8081,
      hostname: options.hostname ?? "127.0.0.1",
      onListen: (addr) => listening.resolve(addr as Deno.NetAddr),
    }, app.fetch);
    const addr = await listening.promise;
    const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
    url = `http://${host}:${addr.port}/`;
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
      await server?.shutdown();
      await worker?.stop();
      pool?.close();
      await queue.close();
      await db.close();
      pacing.stop();
    },
  };
}
