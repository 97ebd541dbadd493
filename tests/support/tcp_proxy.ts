/**
 * A controllable TCP proxy for fault tests: clients connect to `127.0.0.1:<port>` instead of
 * the real service (MariaDB, RabbitMQ, …), and the test can cut the line and restore it
 * without touching the service itself.
 *
 * - {@linkcode TcpProxy.cut} closes every current connection (both sides see the socket
 *   close, as when a network link or the server goes away) and stops listening, so new
 *   connections are refused (`ECONNREFUSED`) until {@linkcode TcpProxy.restore}.
 * - {@linkcode TcpProxy.restore} listens again on the same port.
 * - {@linkcode TcpProxy.close} ends everything; await it before the test ends so Deno's
 *   resource sanitizer stays happy.
 *
 * @example
 * ```ts
 * import { startProxy } from "./tcp_proxy.ts";
 * const proxy = await startProxy("127.0.0.1", 3306);
 * // connect the client under test to 127.0.0.1:proxy.port …
 * await proxy.cut(); // the database "goes away"
 * await proxy.restore(); // and comes back
 * await proxy.close();
 * ```
 * @module
 */

/** A running proxy; see the module documentation. */
export interface TcpProxy {
  /** The local port clients connect to (on 127.0.0.1). */
  readonly port: number;
  /** How many client connections are open through the proxy now. */
  readonly connections: number;
  /** How many client connections were accepted since start. */
  readonly accepted: number;
  /** Closes all current connections and refuses new ones. */
  cut(): Promise<void>;
  /** Accepts connections again (on the same port). */
  restore(): Promise<void>;
  /** Closes all connections and the listener for good. */
  close(): Promise<void>;
}

class Pair {
  #closed = false;
  readonly done: Promise<void>;

  constructor(readonly client: Deno.TcpConn, readonly server: Deno.TcpConn) {
    this.done = Promise.all([
      this.#pump(client, server),
      this.#pump(server, client),
    ]).then(() => this.close());
  }

  async #pump(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        let written = 0;
        while (written < n) written += await to.write(buffer.subarray(written, n));
      }
      // Pass the half-close on, so the other side sees the end of the stream.
      await to.closeWrite().catch(() => {});
    } catch {
      // A cut, or one side going away: end the whole pair.
      this.close();
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of [this.client, this.server]) {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
  }
}

/**
 * Starts a proxy on a free local port that forwards every connection to
 * `targetHost:targetPort`.
 */
export function startProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  const pairs = new Set<Pair>();
  const pending = new Set<Promise<void>>();
  let listener: Deno.TcpListener | null = null;
  let acceptLoop: Promise<void> = Promise.resolve();
  let accepted = 0;
  let port = 0;
  let closed = false;

  const track = (p: Promise<void>) => {
    pending.add(p);
    p.finally(() => pending.delete(p));
  };

  const handle = async (client: Deno.TcpConn) => {
    let server: Deno.TcpConn;
    try {
      server = await Deno.connect({ hostname: targetHost, port: targetPort });
    } catch {
      client.close();
      return;
    }
    if (listener === null) {
      // Cut while we were connecting.
      client.close();
      server.close();
      return;
    }
    const pair = new Pair(client, server);
    pairs.add(pair);
    await pair.done;
    pairs.delete(pair);
  };

  const listen = () => {
    const l = Deno.listen({ hostname: "127.0.0.1", port });
    port = (l.addr as Deno.NetAddr).port;
    listener = l;
    acceptLoop = (async () => {
      try {
        for await (const client of l) {
          accepted++;
          track(handle(client));
        }
      } catch {
        // listener closed
      }
    })();
  };

  const stopListening = async () => {
    const l = listener;
    listener = null;
    if (l) {
      try {
        l.close();
      } catch {
        // already closed
      }
    }
    await acceptLoop;
  };

  const dropAll = async () => {
    for (const pair of pairs) pair.close();
    while (pending.size) await Promise.all([...pending]);
  };

  listen();
  return Promise.resolve({
    get port() {
      return port;
    },
    get connections() {
      return pairs.size;
    },
    get accepted() {
      return accepted;
    },
    async cut() {
      await stopListening();
      await dropAll();
    },
    restore() {
      if (closed) return Promise.reject(new Error("The proxy is closed"));
      if (listener === null) listen();
      return Promise.resolve();
    },
    async close() {
      closed = true;
      await stopListening();
      await dropAll();
    },
  });
}
