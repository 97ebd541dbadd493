/**
 * `cartd`: the command. Runs the cart service (all in one, or the API and the workers as
 * separate processes), serves a local folder as an archive, and manages the database.
 *
 * The command line is checked before anything else happens: an unknown command or flag, and
 * every `--help`, are answered without reading the environment or opening the database.
 *
 * @module
 */
import { parseArgs } from "node:util";
import denoJson from "./deno.json" with { type: "json" };
import { type Config, ConfigError, type Env, loadConfig, SETTINGS } from "./lib/config/config.ts";
import { errorMessage, log } from "./lib/util/log.ts";
import { type Role, startService } from "./app/service.ts";

/** The version of this build, from deno.json. */
export const VERSION: string = denoJson.version;

/** A wrong command line: exit 2, with a pointer to the right `--help`. */
class UsageError extends Error {}

/** Every flag of every command, for `parseArgs`. */
const OPTIONS = {
  port: { type: "string", short: "p" },
  address: { type: "string", short: "a" },
  "archive-dir": { type: "string" },
  "example-archive": { type: "string" },
  "archive-port": { type: "string" },
  prefix: { type: "string" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
  json: { type: "boolean" },
  "older-than": { type: "string" },
} as const;

type Flag = keyof typeof OPTIONS;

const FLAG_HELP: Record<Flag, string> = {
  port: "-p, --port PORT          port of the API (default 8081; 0 picks a free one)",
  address: "-a, --address ADDRESS    address to listen on (default 127.0.0.1)",
  "archive-dir":
    "    --archive-dir DIR    serve DIR as the archive on 127.0.0.1 (--archive-port) and use it;\n" +
    "                         an error when ARCHIVE_INTERFACE_URL or\n" +
    "                         ARCHIVEI_PORT_8080_TCP_ADDR is set too",
  "example-archive": "    --example-archive DIR\n" +
    "                         like --archive-dir, but only when no archive is configured\n" +
    "                         (ARCHIVE_INTERFACE_URL, ARCHIVEI_PORT_8080_TCP_ADDR): the\n" +
    "                         quick start; a configured archive is used instead",
  "archive-port": "    --archive-port PORT  port of the archive of --archive-dir (default 8080)",
  prefix: "    --prefix DIR         the folder whose files are served",
  help: "-h, --help               this text",
  version: "-V, --version            print the version",
  json: "    --json               (admin dump) print JSON",
  "older-than": "    --older-than DUR     (admin purge) carts not used for DUR",
};

/** A command of `cartd`: what it does, and the flags it takes besides --help and --version. */
interface Command {
  usage: string;
  summary: string;
  flags: Flag[];
  /** Its own wording of some flags' help lines. */
  flagHelp?: Partial<Record<Flag, string>>;
}

const ARCHIVE_FLAGS: Flag[] = ["archive-dir", "example-archive", "archive-port"];

const COMMANDS: Record<string, Command> = {
  all: {
    usage: "cartd [options]",
    summary: "API and workers in one process (the default)",
    flags: ["port", "address", ...ARCHIVE_FLAGS],
  },
  serve: {
    usage: "cartd serve [options]",
    summary: "the HTTP API only: carts, their status, downloads",
    flags: ["port", "address"],
  },
  worker: {
    usage: "cartd worker [options]",
    summary: "a worker only: stages and bundles queued carts",
    flags: ARCHIVE_FLAGS,
  },
  archive: {
    usage: "cartd archive --prefix DIR [options]",
    summary: "serve DIR as a Pacifica Archive Interface (quick start, tests)",
    flags: ["prefix", "port", "address"],
    flagHelp: {
      port: "-p, --port PORT          port of the archive (default 8080; 0 picks a free one)",
    },
  },
  dbsync: {
    usage: "cartd dbsync",
    summary: "create or upgrade the database schema",
    flags: [],
  },
  dbchk: {
    usage: "cartd dbchk",
    summary: "exit 0 when the schema is current, 1 when not",
    flags: [],
  },
  admin: {
    usage: "cartd admin COMMAND ...",
    summary: "operators' commands; see 'cartd admin --help'",
    flags: ["json", "older-than"],
  },
};

/** The settings table (lib/config/settings.ts) as `--help` shows it, wrapped at 100 columns. */
function settingsTable(): string {
  const indent = " ".repeat(29);
  return SETTINGS.map(([name, meaning, fallback]) => {
    const words = `${meaning}${fallback ? ` [${fallback}]` : ""}`.split(" ");
    const lines = [`  ${name.padEnd(27)}`];
    for (const word of words) {
      const last = lines.length - 1;
      if (lines[last].length > indent.length && lines[last].length + word.length >= 100) {
        lines.push(indent + word);
      } else lines[last] += (lines[last].length > indent.length ? " " : "") + word;
    }
    return lines.join("\n");
  }).join("\n");
}

function flagLines(flags: Flag[], own: Command["flagHelp"] = {}): string {
  return [...flags, "help" as const]
    .map((f) => `  ${(own[f] ?? FLAG_HELP[f]).replaceAll("\n", "\n  ")}`)
    .join("\n");
}

const HELP = `cartd ${VERSION}: a data cart service, wire-compatible with Pacifica Cartd.

Usage:
${Object.values(COMMANDS).map((c) => `  ${c.usage.padEnd(38)}${c.summary}`).join("\n")}

'cartd COMMAND --help' shows the options of one command.

Options of 'cartd' (all in one):
${flagLines(COMMANDS.all.flags)}
  ${FLAG_HELP.version}

The API:
  POST /{uid}     create a cart from {"fileids": [{"id": ..., "path": ...}, ...]}
  HEAD /{uid}     status in X-Pacifica-Status: staging, ready, error (X-Cartd-State: precise)
  GET  /{uid}     the cart as a tar (?filename=NAME, ?format=zip, ?manifest=1; Range works)
  DELETE /{uid}   remove the cart

Settings (environment variables):
${settingsTable()}
`;

/** The `--help` text of `command`. */
function commandHelp(name: string): string {
  if (name === "all") return HELP;
  const c = COMMANDS[name];
  return `${c.usage}: ${c.summary}

Options:
${flagLines(c.flags, c.flagHelp)}

Settings come from the environment; 'cartd --help' lists them.
`;
}

function port(text: string | undefined, fallback: number, flag: string): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (text.trim() === "" || !Number.isInteger(n) || n < 0 || n > 65535) {
    throw new UsageError(`${flag} "${text}" is not a port number (0-65535)`);
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

type Values = ReturnType<typeof parse>["values"];

/** Parses `args`; a flag no command knows, or a missing value, is a {@linkcode UsageError}. */
function parse(args: string[]) {
  try {
    return parseArgs({ args, allowPositionals: true, options: OPTIONS });
  } catch (e) {
    // Which command the line was for, to point at its --help.
    const word = args.find((a) => a in COMMANDS && a !== "all");
    const help = `see 'cartd${word ? ` ${word}` : ""} --help'`;
    const option = /option '([^']+?)(?: <value>)?'/i.exec(errorMessage(e))?.[1];
    const code = (e as { code?: string }).code;
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && option) {
      throw new UsageError(`unknown option "${option}"; ${help}`);
    }
    if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && option) {
      throw new UsageError(`option ${option} needs a value; ${help}`);
    }
    throw new UsageError(`${errorMessage(e)}; ${help}`);
  }
}

/** The environment variable that configures the archive, or null when none does. */
function configuredArchive(
  env: Env,
): "ARCHIVE_INTERFACE_URL" | "ARCHIVEI_PORT_8080_TCP_ADDR" | null {
  if (env.ARCHIVE_INTERFACE_URL?.trim()) return "ARCHIVE_INTERFACE_URL";
  if (env.ARCHIVEI_PORT_8080_TCP_ADDR?.trim()) return "ARCHIVEI_PORT_8080_TCP_ADDR";
  return null;
}

/** The archive a service uses: a local folder it serves itself, or a URL; and why. */
interface ArchiveChoice {
  /** The folder to serve on 127.0.0.1, or null to use `config.archiveUrl`. */
  serve: { dir: string; flag: string } | null;
  /** Why, for the start-up log. */
  why: string;
}

function chooseArchive(env: Env, values: Values): ArchiveChoice {
  const configured = configuredArchive(env);
  const dir = values["archive-dir"];
  const example = values["example-archive"];
  if (dir !== undefined && example !== undefined) {
    throw new UsageError("give --archive-dir or --example-archive, not both");
  }
  if (dir !== undefined) {
    if (configured) {
      throw new ConfigError(
        `--archive-dir ${dir} and ${configured}=${env[configured]} both name the archive: ` +
          `unset ${configured}, or drop --archive-dir`,
      );
    }
    return { serve: { dir, flag: "--archive-dir" }, why: `the folder ${dir}, from --archive-dir` };
  }
  if (configured) {
    const ignored = example === undefined ? "" : `; --example-archive ${example} is not started`;
    return { serve: null, why: `from ${configured}${ignored}` };
  }
  if (example !== undefined) {
    return {
      serve: { dir: example, flag: "--example-archive" },
      why: `the example archive in ${example}, since no archive is configured`,
    };
  }
  return {
    serve: null,
    why: "the default, since neither ARCHIVE_INTERFACE_URL nor ARCHIVEI_PORT_8080_TCP_ADDR is set",
  };
}

/** `cartd`, `cartd serve`, `cartd worker`: runs until SIGINT or SIGTERM. */
async function runService(role: Role, values: Values): Promise<number> {
  const env = Deno.env.toObject();
  const choice = role === "serve" ? null : chooseArchive(env, values);
  const apiPort = port(values.port, 8081, "--port");
  const archivePort = port(values["archive-port"], 8080, "--archive-port");
  let config: Config = loadConfig(env);
  log.setLevel(config.logLevel);
  log.setFormat(config.logFormat);

  let archiveServer: Deno.HttpServer<Deno.NetAddr> | null = null;
  if (choice?.serve) {
    const { serveArchive } = await import("./lib/archive/server.ts");
    archiveServer = serveArchive({
      prefix: choice.serve.dir,
      prefixFlag: choice.serve.flag,
      port: archivePort,
      portFlag: "--archive-port PORT",
      hostname: "127.0.0.1",
    });
    config = { ...config, archiveUrl: `http://127.0.0.1:${archiveServer.addr.port}/` };
  }
  if (choice) log.info(`archive ${config.archiveUrl} (${choice.why})`);
  let service;
  try {
    service = await startService(config, {
      role,
      port: apiPort,
      hostname: values.address ?? "127.0.0.1",
    });
  } catch (e) {
    await archiveServer?.shutdown();
    throw e;
  }
  if (service.url) console.error(`cartd listening on ${service.url}`);
  const signal = await untilSignal();
  log.info("shutting down", { signal });
  await service.close();
  await archiveServer?.shutdown();
  return 0;
}

/** `cartd archive --prefix DIR`: runs until SIGINT or SIGTERM. */
async function runArchive(values: Values): Promise<number> {
  if (!values.prefix) {
    throw new UsageError("cartd archive needs --prefix DIR: the folder to serve");
  }
  const hostname = values.address ?? "127.0.0.1";
  const { serveArchive } = await import("./lib/archive/server.ts");
  const server = serveArchive({
    prefix: values.prefix,
    port: port(values.port, 8080, "--port"),
    portFlag: "--port PORT (or --address ADDRESS)",
    hostname,
  });
  console.error(
    `cartd archive serving ${values.prefix} on http://${hostname}:${server.addr.port}/`,
  );
  await untilSignal();
  await server.shutdown();
  return 0;
}

/** Runs the command line `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const { values, positionals } = parse(args);
  const name = positionals[0] ?? "all";
  if (!(name in COMMANDS) || (name === "all" && positionals.length)) {
    throw new UsageError(`unknown command "${name}"; see 'cartd --help' for the commands`);
  }
  if (values.version) {
    console.log(`cartd ${VERSION}`);
    return 0;
  }
  const command = COMMANDS[name];
  const given = (Object.keys(values) as Flag[]).filter((f) => values[f] !== undefined);
  const wrong = given.find((f) => !command.flags.includes(f) && f !== "help");
  const spelt = name === "all" ? "cartd" : `cartd ${name}`;
  if (wrong) throw new UsageError(`${spelt} does not take --${wrong}; see '${spelt} --help'`);
  if (name === "admin") {
    const { admin } = await import("./app/admin.ts");
    const { help, json, "older-than": olderThan } = values;
    return await admin(() => loadConfig(), positionals.slice(1), {
      help,
      json,
      "older-than": olderThan,
    });
  }
  if (values.help) {
    console.log(commandHelp(name));
    return 0;
  }
  if (positionals.length > 1) {
    throw new UsageError(
      `${spelt} takes no arguments, but got "${positionals.slice(1).join(" ")}"; ` +
        `see '${spelt} --help'`,
    );
  }

  if (name === "archive") return await runArchive(values);
  if (name === "dbsync" || name === "dbchk") {
    const config = loadConfig();
    log.setLevel(config.logLevel);
    log.setFormat(config.logFormat);
    const { schemaCommand } = await import("./app/admin.ts");
    return await schemaCommand(config, name);
  }
  return await runService(name as Role, values);
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`cartd: ${errorMessage(error)}`);
    Deno.exit(error instanceof UsageError || error instanceof ConfigError ? 2 : 1);
  }
}
