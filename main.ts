/**
 * `cartd`: the command. Runs the cart service (all in one, or the API and the workers as
 * separate processes), serves a local folder as an archive, and manages the database.
 *
 * @module
 */
import { parseArgs } from "node:util";
import denoJson from "./deno.json" with { type: "json" };
import { ConfigError, loadConfig, SETTINGS } from "./lib/config.ts";
import { errorMessage, log } from "./lib/log.ts";
import { type Role, startService } from "./lib/service.ts";

/** The version of this build, from deno.json. */
export const VERSION: string = denoJson.version;

const HELP = `cartd ${VERSION}: a data cart service, wire-compatible with Pacifica Cartd.

Usage:
  cartd [options]                 API and workers in one process (the default)
  cartd serve [options]           the HTTP API only
  cartd worker                    a worker only: stages and bundles queued carts
  cartd archive --prefix DIR      serve DIR as a Pacifica Archive Interface (quick start, tests)
  cartd dbsync                    create or upgrade the database schema
  cartd dbchk                     exit 0 when the schema is current, 1 when not
  cartd admin ...                 operators' commands; see 'cartd admin --help'

Options:
  -p, --port PORT          port of the API (default 8081; archive: 8080)
  -a, --address ADDRESS    address to listen on (default 127.0.0.1)
      --archive-dir DIR    also serve DIR as the archive on 127.0.0.1:8080, and use it
      --archive-port PORT  port for --archive-dir (default 8080)
      --prefix DIR         folder served by 'cartd archive'
  -h, --help               this text
  -V, --version            print the version

The API:
  POST /{uid}     create a cart from {"fileids": [{"id": ..., "path": ...}, ...]}
  HEAD /{uid}     status in X-Pacifica-Status: waiting, staging, bundling, ready, error
  GET  /{uid}     the cart as a tar (?filename=NAME, ?format=zip, ?manifest=1; Range works)
  DELETE /{uid}   remove the cart

Settings (environment variables):
${
  SETTINGS.map(([name, meaning, fallback]) =>
    `  ${name.padEnd(27)}${meaning}${fallback ? ` [${fallback}]` : ""}`
  ).join("\n")
}
`;

function port(text: string | undefined, fallback: number, flag: string): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    throw new ConfigError(`${flag} "${text}" is not a port number (0-65535)`);
  }
  return n;
}

/** Waits for SIGINT or SIGTERM. */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => resolve(sig));
    }
  });
}

/** Runs the command line `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      port: { type: "string", short: "p" },
      address: { type: "string", short: "a" },
      "archive-dir": { type: "string" },
      "archive-port": { type: "string" },
      prefix: { type: "string" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean", short: "V" },
      json: { type: "boolean" },
      "older-than": { type: "string" },
    },
  });
  const command = positionals[0] ?? "all";
  if (values.version) {
    console.log(`cartd ${VERSION}`);
    return 0;
  }
  if (values.help && command !== "admin") {
    console.log(HELP);
    return 0;
  }
  const hostname = values.address ?? "127.0.0.1";

  if (command === "archive") {
    if (!values.prefix) {
      throw new ConfigError("cartd archive needs --prefix DIR: the folder to serve");
    }
    const { serveArchive } = await import("./lib/archive_server.ts");
    const server = serveArchive({
      prefix: values.prefix,
      port: port(values.port, 8080, "--port"),
      hostname,
    });
    console.error(
      `cartd archive serving ${values.prefix} on http://${hostname}:${server.addr.port}/`,
    );
    await untilSignal();
    await server.shutdown();
    return 0;
  }

  const env = Deno.env.toObject();
  let archiveServer: Deno.HttpServer<Deno.NetAddr> | null = null;
  if (values["archive-dir"]) {
    const { serveArchive } = await import("./lib/archive_server.ts");
    archiveServer = serveArchive({
      prefix: values["archive-dir"],
      port: port(values["archive-port"], 8080, "--archive-port"),
      hostname: "127.0.0.1",
    });
    env.ARCHIVE_INTERFACE_URL = `http://127.0.0.1:${archiveServer.addr.port}/`;
  }
  const config = loadConfig(env);
  log.setLevel(config.logLevel);

  if (command === "dbsync" || command === "dbchk") {
    const { openDb } = await import("./lib/db.ts");
    const { schemaState, syncSchema } = await import("./lib/schema.ts");
    const db = await openDb(config.database);
    try {
      if (command === "dbsync") {
        const before = await syncSchema(db);
        console.log(
          before === 0
            ? "Created the cartd schema."
            : `The cartd schema was at version ${before}; it is current now.`,
        );
        return 0;
      }
      const state = await schemaState(db);
      console.log(
        state.current
          ? `The cartd schema is current (version ${state.found}).`
          : `The cartd schema is at version ${state.found}; this cartd needs ${state.expected}: run 'cartd dbsync'.`,
      );
      return state.current ? 0 : 1;
    } finally {
      await db.close();
    }
  }

  if (command === "admin") {
    const { admin } = await import("./lib/admin.ts");
    return await admin(config, positionals.slice(1), values);
  }

  if (!["all", "serve", "worker"].includes(command)) {
    throw new ConfigError(`Unknown command "${command}"; see 'cartd --help'`);
  }
  const service = await startService(config, {
    role: command as Role,
    port: port(values.port, 8081, "--port"),
    hostname,
  });
  if (service.url) console.error(`cartd listening on ${service.url}`);
  const signal = await untilSignal();
  log.info("shutting down", { signal });
  await service.close();
  await archiveServer?.shutdown();
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`cartd: ${errorMessage(error)}`);
    Deno.exit(2);
  }
}
