/**
 * Why a server could not listen, in words an operator can act on: which address and port, and
 * which setting or flag picks another (`Address already in use` alone names neither).
 *
 * @example
 * ```ts
 * import { listenFailure } from "./listen.ts";
 * try {
 *   Deno.serve({ port: 8081, hostname: "127.0.0.1" }, () => new Response());
 * } catch (e) {
 *   throw listenFailure(e, "127.0.0.1", 8081, "the API", "--port PORT or --address ADDRESS");
 * }
 * ```
 * @module
 */

/** A server that could not start listening; the message names the address and the fix. */
export class ListenError extends Error {
  /** Builds the error; `message` names the address and what to change. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ListenError";
  }
}

/**
 * Turns the error of a failed `Deno.serve` / `Deno.listen` into a {@linkcode ListenError}
 * naming `hostname:port`, what was to listen there (`what`), and what changes it (`change`,
 * such as "--port PORT"). Errors of other kinds are returned unchanged.
 */
export function listenFailure(
  error: unknown,
  hostname: string,
  port: number,
  what: string,
  change: string,
): unknown {
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  const where = `${what} cannot listen on ${host}:${port}`;
  if (error instanceof Deno.errors.AddrInUse) {
    return new ListenError(
      `${where}: the address is already in use (another cartd, or another program); ` +
        `choose another with ${change}`,
      { cause: error },
    );
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return new ListenError(
      `${where}: ${hostname} is not an address of this machine; choose another with ${change}`,
      { cause: error },
    );
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return new ListenError(
      `${where}: the system does not allow it (ports below 1024 need privileges); ` +
        `choose another with ${change}`,
      { cause: error },
    );
  }
  return error;
}
