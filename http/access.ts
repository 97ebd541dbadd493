/**
 * Who is asking (issue 17): the identities cartd accepts, as one Hono middleware, and the
 * look-up of a cart as the principal asking may see it. Off (no identity setting), nothing of
 * this runs: every cart belongs to the principal `""`, as before owners existed.
 *
 * The identities, each turned on by its settings (docs/security.md):
 *
 * - bearer tokens from a tokens file (`CARTD_ACCESS_TOKENS`), each line
 *   `sha256:<hex digest of the token> <principal> [role,role…]`, re-read when the file changes;
 * - JWTs (`Authorization: Bearer <jwt>`) verified by `jose` against a shared secret
 *   (`CARTD_ACCESS_JWT_SECRET`) or a JWKS URL (`CARTD_ACCESS_JWKS_URL`), with the issuer,
 *   audience and clock skew settings; the principal is the `sub` claim, the roles the `roles`
 *   claim (a list, or words separated by spaces);
 * - a header a trusted proxy sets (`CARTD_ACCESS_PROXY_HEADER`, `X-Remote-User` by default),
 *   believed only from the addresses of `CARTD_ACCESS_PROXY_ADDRESSES` and ignored from others.
 *
 * What a request costs (docs/benchmarks.md, "Access control"): a bearer token is looked up by
 * its SHA-256 digest in a map of the tokens file's digests, then that one entry's digest is
 * compared with `node:crypto`'s `timingSafeEqual` (called through the module's default export,
 * so a test can see that it is the one called); a miss is compared against a dummy digest, so
 * both take one comparison. A JWT that verified is remembered by its digest until it expires
 * (at most {@linkcode JWT_CACHE_MS}, {@linkcode JWT_CACHE_MAX} of them), so a client that
 * polls with one JWT pays for one verification, not one a request. The tokens file is looked
 * at for a change at most every {@linkcode TOKENS_CHECK_MS}, without an `await` in between.
 *
 * The digest of an `Authorization` header that was accepted is remembered by the header
 * ({@linkcode DIGESTS_MAX} of them), so that a client sending the same header again is not
 * hashed again; the memo holds digests, not verdicts: each request still looks its digest
 * up in the tokens file as it is now and compares it there with `timingSafeEqual` (or finds
 * its JWT among those remembered until their expiry), so a token taken out of the file, or
 * a JWT past its `exp`, is refused as before; a header refused is forgotten. Finding a
 * header in the memo (a `Map`) compares its characters with a remembered one only when
 * their lengths and string hashes (made of all their characters) are equal: what its time
 * could tell is whether a header is one accepted before, which the answer tells anyway
 * (docs/security.md). Whether a peer address is a trusted proxy's, and what principal a
 * value of the proxy's header names, are remembered too (both follow from the settings alone).
 *
 * A JWKS that cannot be read (no answer, an answer that is not 200, not a key set) is not the
 * client's fault: such a request answers `503` with `Retry-After`, never `401`
 * ({@linkcode Refusal.unavailable}). JWTs remembered from before keep working meanwhile.
 *
 * No token, JWT or digest ever reaches a log line or an answer: a refusal says what was
 * wrong, not what was sent.
 *
 * @module
 */
import nodeCrypto from "node:crypto";
import { BlockList, isIP } from "node:net";
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTVerifyGetKey } from "jose";
import type { Config } from "../lib/config/config.ts";
import { ConfigError } from "../lib/config/config.ts";
import type { Cart, CartStore } from "../lib/store/store.ts";
import { errorMessage, log } from "../lib/util/log.ts";
import { json } from "./json.ts";

/** Who a request is from. */
export interface Principal {
  /** The principal's name: a cart's owner. */
  name: string;
  /** Its roles. */
  roles: readonly string[];
  /** Whether it sees and manages every cart. */
  admin: boolean;
  /** How it was told: a token of the tokens file, a JWT, the proxy's header, a signed link. */
  via: "token" | "jwt" | "proxy" | "link";
}

/** The access settings (`config.access`). */
export type AccessSettings = Config["access"];

/** How often, at most, the tokens file is looked at for a change (ms). */
export const TOKENS_CHECK_MS = 1000;

/** How long at most a verified JWT is remembered (ms): a key removed from the JWKS, or a
 * secret changed, takes effect within this (and the JWT's own expiry always holds). */
export const JWT_CACHE_MS = 60_000;

/** Verified JWTs remembered at most; more, and the oldest is forgotten. */
export const JWT_CACHE_MAX = 10_000;

/**
 * Digests of accepted `Authorization` headers remembered at most (more, and the oldest is
 * forgotten); a header longer than {@linkcode DIGEST_MEMO_CHARS} is hashed each time.
 */
export const DIGESTS_MAX = 4096;

/** The longest `Authorization` header whose digest is remembered (a JWT is a few hundred). */
export const DIGEST_MEMO_CHARS = 2048;

/** Peer addresses remembered as a trusted proxy's or not, at most (the oldest forgotten). */
const PROXY_PEERS_MAX = 1024;

/** Values of the proxy's header remembered with the principal they name, at most. */
const PROXY_NAMES_MAX = 4096;

/** `Retry-After` (s) of a `503` while the JWKS cannot be read (jose asks it again each time). */
export const JWKS_RETRY_S = 30;

/** The realm of `WWW-Authenticate`. */
const REALM = `Bearer realm="cartd"`;

/** One line of the tokens file. */
export interface TokenEntry {
  /** SHA-256 of the token. */
  digest: Buffer;
  /** The principal. */
  name: string;
  /** Its roles. */
  roles: string[];
}

/** Why a request has no principal: the 401's message and the `error` of `WWW-Authenticate`. */
export interface Refusal {
  /** What was wrong, for the client (never what it sent). */
  message: string;
  /** `invalid_request` (a header that is not `Bearer <token>`), `invalid_token`, or none. */
  error?: "invalid_request" | "invalid_token";
  /**
   * True when the credentials could not be checked at all (the identity provider's key set
   * cannot be read): the answer is `503` with `Retry-After`, not `401`.
   */
  unavailable?: boolean;
}

/** The JWKS could not be read (fetched, or read as a key set): nothing is known of the JWT. */
class KeySetUnavailable extends Error {
  constructor(options: ErrorOptions) {
    super("the identity provider's key set (CARTD_ACCESS_JWKS_URL) cannot be read", options);
    this.name = "KeySetUnavailable";
  }
}

/** Whether `e`, thrown while jose fetched or read the JWKS, is about the key set's source. */
function keySetFailure(e: unknown): boolean {
  // fetch's own failure (refused, reset, DNS) is a TypeError; a time-out is JWKSTimeout; an
  // answer that is not 200 or not JSON is the plain JOSEError; not a key set, JWKSInvalid.
  return e instanceof TypeError || e instanceof joseErrors.JWKSTimeout ||
    e instanceof joseErrors.JWKSInvalid ||
    (e instanceof joseErrors.JOSEError && e.code === "ERR_JOSE_GENERIC");
}

/**
 * A token's SHA-256 digest as the look-ups take it: its hex (the key of the tokens and of the
 * JWTs remembered) and the bytes of that hex (what `timingSafeEqual` compares), as a
 * `DataView`, which the platform's compare takes without making one of its own.
 */
interface Digest {
  /** The digest in lowercase hex. */
  hex: string;
  /** The 64 bytes of {@linkcode Digest.hex}. */
  view: DataView;
}

/** The {@linkcode Digest} of a digest's hex. */
function digestOfHex(hex: string): Digest {
  const bytes = utf8.encode(hex);
  return { hex, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
}

/** A digest's hex no token has, compared against when a token is not in the file (same cost). */
const NO_DIGEST = new DataView(new ArrayBuffer(64));

/** Text as UTF-8 bytes. */
const utf8 = new TextEncoder();

/** An `Authorization` header with a bearer token: the token. */
const BEARER = /^Bearer +([\x21-\x7e]+) *$/i;

/** A JWT has three base64url parts. */
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** A principal's name as cartd accepts it from a header or a claim: 1 to 255 bytes, no controls. */
export function nameProblem(name: string): string | null {
  if (name.length === 0) return "is empty";
  if (new TextEncoder().encode(name).length > 255) return "is longer than 255 bytes";
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return "has control characters";
  return null;
}

/** Splits a comma-separated setting into its trimmed, non-empty parts. */
export function listOf(text: string): string[] {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

/**
 * Reads the text of a tokens file: one `sha256:<64 hex> <principal> [roles]` a line; blank
 * lines and `#` comments skipped. A line that cannot be read is skipped and reported by its
 * number (never its text, which could hold a token pasted by mistake).
 */
export function parseTokens(text: string): { entries: TokenEntry[]; bad: number[] } {
  const entries: TokenEntry[] = [];
  const bad: number[] = [];
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const [hash, name, roles, ...rest] = line.split(/\s+/);
    const m = /^sha256:([0-9a-f]{64})$/i.exec(hash);
    if (!m || !name || rest.length || nameProblem(name)) {
      bad.push(i + 1);
      continue;
    }
    entries.push({ digest: Buffer.from(m[1], "hex"), name, roles: roles ? listOf(roles) : [] });
  }
  return { entries, bad };
}

/** The SHA-256 digest of `token`, as a tokens file line wants it (`sha256:<hex>`). */
export function tokenDigest(token: string): string {
  return "sha256:" + sha256Hex(token);
}

/** `node:crypto`'s one-shot `hash` where the platform has it (faster), else `createHash`. */
const oneShot = (nodeCrypto as unknown as {
  hash?: (algorithm: string, data: string, encoding: "hex") => string;
}).hash;

/**
 * The SHA-256 digest of `text` (UTF-8) in hex: what a request's token is looked up by. (Hex
 * straight from `hash` costs half of a `Buffer` of the digest in Deno, 1.6 against 3.3 µs.)
 */
function sha256Hex(text: string): string {
  return oneShot
    ? oneShot("sha256", text, "hex")
    : nodeCrypto.createHash("sha256").update(text).digest("hex");
}

/**
 * The identities of one API process. {@linkcode Access.on} says whether any is turned on;
 * {@linkcode Access.authenticate} tells who sent a request.
 */
export class Access {
  /** Whether any identity is on: then every request but `/` and the metrics needs one. */
  readonly on: boolean;
  readonly #settings: AccessSettings;
  readonly #admins: Set<string>;
  readonly #proxies: BlockList | null;
  readonly #proxyHeader: string;
  readonly #jwks: JWTVerifyGetKey | null;
  readonly #secret: Uint8Array | null;
  /**
   * The tokens file's entries by the hex of their digest, each with that hex as bytes (what
   * is compared) and its principal.
   */
  #tokens = new Map<string, { view: DataView; principal: Principal }>();
  /** Verified JWTs by the hex of their digest: the principal, and until when (ms). */
  readonly #jwts = new Map<string, { principal: Principal; until: number }>();
  /** The digests of the `Authorization` headers accepted lately, by header (a memo). */
  readonly #digests = new Map<string, Digest>();
  /** Whether JWTs are accepted (a secret or a JWKS). */
  readonly #jwtOn: boolean;
  /** Whether each peer address seen lately is a trusted proxy's. */
  readonly #proxyPeers = new Map<string, boolean>();
  /** What each value of the proxy's header seen lately from a proxy names (or what is wrong). */
  readonly #proxyNames = new Map<string, Principal | Refusal>();
  #tokensStamp = "";
  #tokensCheckedAt = -Infinity;
  #tokensChecking: Promise<void> | null = null;

  /**
   * The identities `settings` turn on. Call {@linkcode Access.start} before serving.
   *
   * @throws {ConfigError} for a CIDR that cannot be read (the setting named, not its value
   * when it is a secret).
   */
  constructor(settings: AccessSettings, readonly now: () => number = Date.now) {
    this.#settings = settings;
    this.#admins = new Set(listOf(settings.admins));
    this.#proxyHeader = settings.proxyHeader.toLowerCase();
    const cidrs = listOf(settings.proxyAddresses);
    this.#proxies = cidrs.length ? blockList(cidrs) : null;
    this.#secret = settings.jwtSecret ? new TextEncoder().encode(settings.jwtSecret) : null;
    this.#jwks = settings.jwksUrl ? keySet(createRemoteJWKSet(new URL(settings.jwksUrl))) : null;
    this.#jwtOn = Boolean(this.#secret || this.#jwks);
    this.on = Boolean(settings.tokensFile || this.#jwtOn || this.#proxies);
  }

  /** Reads the tokens file once; throws when it cannot be read (start-up stops). */
  async start(): Promise<void> {
    if (!this.#settings.tokensFile) return;
    try {
      await this.#reloadTokens(true);
    } catch (e) {
      throw new ConfigError(
        `CARTD_ACCESS_TOKENS: cannot read the tokens file ${this.#settings.tokensFile}: ` +
          errorMessage(e),
      );
    }
  }

  /** How many accepted `Authorization` headers have their digest remembered (for tests). */
  get headersRemembered(): number {
    return this.#digests.size;
  }

  /** The identities on, for the start-up log line. */
  describe(): string {
    const on = [];
    if (this.#settings.tokensFile) on.push("tokens");
    if (this.#secret || this.#jwks) on.push("jwt");
    if (this.#proxies) on.push("proxy");
    return on.join(",");
  }

  /** Re-reads the tokens file when its size, time or inode changed since the last read. */
  async #reloadTokens(force = false): Promise<void> {
    const file = this.#settings.tokensFile;
    const info = await Deno.stat(file);
    const stamp = `${info.ino}:${info.size}:${info.mtime?.getTime()}`;
    if (!force && stamp === this.#tokensStamp) return;
    const { entries, bad } = parseTokens(await Deno.readTextFile(file));
    if (bad.length) {
      log.warn("the tokens file has lines that are not `sha256:<hex> <principal> [roles]`", {
        file,
        lines: bad.join(","),
      });
    }
    const before = this.#tokens.size;
    const first = this.#tokensStamp === "";
    this.#tokens = new Map(
      entries.map((entry) => {
        const { hex, view } = digestOfHex(entry.digest.toString("hex"));
        return [hex, { view, principal: this.#principal(entry.name, entry.roles, "token") }];
      }),
    );
    this.#tokensStamp = stamp;
    if (!force && !first) log.info("tokens file re-read", { file, tokens: entries.length, before });
  }

  /**
   * Whether the tokens file is due a look ({@linkcode TOKENS_CHECK_MS} since the last), asked
   * before {@linkcode Access.freshTokens} so that most requests do not wait for anything.
   */
  #tokensDue(): boolean {
    return this.now() - this.#tokensCheckedAt >= TOKENS_CHECK_MS;
  }

  /** Looks at the tokens file at most every {@linkcode TOKENS_CHECK_MS}; keeps the old on failure. */
  async #freshTokens(): Promise<void> {
    const now = this.now();
    if (now - this.#tokensCheckedAt < TOKENS_CHECK_MS) return;
    this.#tokensCheckedAt = now;
    this.#tokensChecking ??= this.#reloadTokens().catch((e) => {
      log.warn("cannot re-read the tokens file; the tokens read before stay in force", {
        file: this.#settings.tokensFile,
        error: errorMessage(e),
      });
    }).finally(() => this.#tokensChecking = null);
    await this.#tokensChecking;
  }

  /**
   * The principal of the tokens file's entry for the token of `digest`, or null: the entry
   * found by the digest, then one constant-time comparison of the digests (in hex; against a
   * dummy when none was found, so that a miss costs the same).
   */
  #tokenPrincipal(digest: Digest): Principal | null {
    const hit = this.#tokens.get(digest.hex);
    const equal = nodeCrypto.timingSafeEqual(hit ? hit.view : NO_DIGEST, digest.view);
    return hit && equal ? hit.principal : null;
  }

  /** Remembers the digest of the accepted header `authorization` (when short enough). */
  #rememberDigest(authorization: string, digest: Digest): void {
    if (authorization.length > DIGEST_MEMO_CHARS || this.#digests.has(authorization)) return;
    remember(this.#digests, authorization, digest, DIGESTS_MAX);
  }

  /** The principal of a JWT verified before and not expired since, by its digest's hex. */
  #cachedJwt(hex: string): Principal | null {
    const hit = this.#jwts.get(hex);
    if (!hit) return null;
    if (this.now() < hit.until) return hit.principal;
    this.#jwts.delete(hex);
    return null;
  }

  /** Remembers a verified JWT (`exp`: its claim, seconds, if any) until it expires. */
  #rememberJwt(hex: string, principal: Principal, exp: number | undefined): void {
    const now = this.now();
    const until = Math.min(now + JWT_CACHE_MS, exp === undefined ? Infinity : exp * 1000);
    if (!(until > now)) return;
    if (this.#jwts.size >= JWT_CACHE_MAX) {
      // The oldest entry first (a Map keeps the order entries came in).
      for (const [key, old] of this.#jwts) {
        this.#jwts.delete(key);
        if (old.until > now) break; // one live entry evicted at most; expired ones all go
      }
    }
    this.#jwts.set(hex, { principal, until });
  }

  #principal(name: string, roles: string[], via: Principal["via"]): Principal {
    return {
      name,
      roles,
      via,
      admin: roles.includes(this.#settings.adminRole) || this.#admins.has(name),
    };
  }

  /** The principal of a JWT not remembered (`hex`: its digest's hex), or why there is none. */
  async #verifyJwt(token: string, hex: string): Promise<Principal | Refusal> {
    const secret = this.#secret;
    const jwks = this.#jwks;
    const key: JWTVerifyGetKey = (header, input) => {
      if (header.alg?.startsWith("HS")) {
        if (secret) return secret;
      } else if (jwks) return jwks(header, input);
      throw new joseErrors.JOSEAlgNotAllowed(`the algorithm ${header.alg} is not accepted`);
    };
    try {
      const { payload } = await jwtVerify(token, key, {
        issuer: this.#settings.jwtIssuer || undefined,
        audience: this.#settings.jwtAudience || undefined,
        clockTolerance: this.#settings.jwtClockSkewMs / 1000,
        currentDate: new Date(this.now()),
        algorithms: [
          ...(secret ? ["HS256", "HS384", "HS512"] : []),
          ...(jwks ? ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"] : []),
          ...(jwks ? ["ES512", "EdDSA", "Ed25519"] : []),
        ],
      });
      const name = typeof payload.sub === "string" ? payload.sub : "";
      const problem = nameProblem(name);
      if (problem) return { message: `The JWT's sub claim ${problem}`, error: "invalid_token" };
      const claim = payload.roles;
      const roles = Array.isArray(claim)
        ? claim.filter((r): r is string => typeof r === "string")
        : typeof claim === "string"
        ? claim.split(/\s+/).filter(Boolean)
        : [];
      const principal = this.#principal(name, roles, "jwt");
      this.#rememberJwt(hex, principal, typeof payload.exp === "number" ? payload.exp : undefined);
      return principal;
    } catch (e) {
      if (e instanceof KeySetUnavailable) {
        log.warn("cannot read the JWKS: requests with a JWT answer 503 until it can be read", {
          url: this.#settings.jwksUrl,
          error: errorMessage(e.cause),
        });
        return {
          message: "The identity provider's key set (JWKS) cannot be read now, so the JWT " +
            "cannot be checked; this is not a problem with the credentials: try again later",
          unavailable: true,
        };
      }
      return { message: jwtProblem(e), error: "invalid_token" };
    }
  }

  /**
   * Who sent `request` (from `remote`, the peer's address, when known), or why nobody can
   * tell. Call only when {@linkcode Access.on}. The answer is there at once (not a promise)
   * when nothing needs waiting for: a header accepted before, and the tokens file not due a
   * look; else it is a promise.
   */
  authenticate(
    request: Request,
    remote: Deno.NetAddr | undefined,
  ): Principal | Refusal | Promise<Principal | Refusal> {
    const authorization = request.headers.get("authorization");
    if (authorization === null) return this.#fromProxy(request, remote);
    if (this.#settings.tokensFile && this.#tokensDue()) {
      return this.#freshTokens().then(() => this.#bearer(authorization));
    }
    return this.#bearer(authorization);
  }

  /**
   * The principal of the `Authorization` header `authorization`: its digest (remembered when
   * it was accepted before, else made) looked up in the tokens file, then among the JWTs
   * remembered, then a JWT verified.
   */
  #bearer(authorization: string): Principal | Refusal | Promise<Principal | Refusal> {
    const known = this.#digests.get(authorization);
    let digest = known;
    if (digest === undefined) {
      const m = BEARER.exec(authorization);
      if (!m) {
        return {
          message: "The Authorization header is not `Bearer <token>`",
          error: "invalid_request",
        };
      }
      digest = digestOfHex(sha256Hex(m[1]));
    }
    if (this.#settings.tokensFile) {
      const principal = this.#tokenPrincipal(digest);
      if (principal) {
        if (!known) this.#rememberDigest(authorization, digest);
        return principal;
      }
    }
    if (this.#jwtOn) {
      const cached = this.#cachedJwt(digest.hex);
      if (cached) {
        if (!known) this.#rememberDigest(authorization, digest);
        return cached;
      }
      // A header in the memo matched BEARER when it was accepted.
      const token = BEARER.exec(authorization)![1];
      if (JWT_SHAPE.test(token)) {
        const verified = digest;
        return this.#verifyJwt(token, digest.hex).then((who) => {
          if ("name" in who) this.#rememberDigest(authorization, verified);
          else this.#digests.delete(authorization);
          return who;
        });
      }
    }
    if (known) this.#digests.delete(authorization);
    return { message: "The bearer token is not valid", error: "invalid_token" };
  }

  /** Who sent `request`, which has no `Authorization` header: the proxy's header, or nobody. */
  #fromProxy(request: Request, remote: Deno.NetAddr | undefined): Principal | Refusal {
    if (this.#proxies) {
      const named = request.headers.get(this.#proxyHeader);
      if (named !== null) {
        if (remote && this.#trustedPeer(remote.hostname)) {
          let who = this.#proxyNames.get(named);
          if (who === undefined) {
            const problem = nameProblem(named.trim());
            who = problem
              ? { message: `The ${this.#settings.proxyHeader} header ${problem}` }
              : this.#principal(named.trim(), [], "proxy");
            remember(this.#proxyNames, named, who, PROXY_NAMES_MAX);
          }
          return who;
        }
        log.info("ignored a proxy header from an address that is not a trusted proxy", {
          header: this.#settings.proxyHeader,
          from: remote?.hostname ?? "unknown",
          hint: "CARTD_ACCESS_PROXY_ADDRESSES lists the proxies",
        });
      }
    }
    return { message: "This request needs credentials: send Authorization: Bearer <token>" };
  }

  /** Whether the peer `hostname` is a trusted proxy's (remembered: `BlockList` costs µs). */
  #trustedPeer(hostname: string): boolean {
    let yes = this.#proxyPeers.get(hostname);
    if (yes === undefined) {
      yes = trusted(this.#proxies!, hostname);
      remember(this.#proxyPeers, hostname, yes, PROXY_PEERS_MAX);
    }
    return yes;
  }
}

/** Sets `key` to `value` in `map`, forgetting the oldest entry first when it holds `max`. */
function remember<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  // A Map keeps the order its entries came in: the first is the oldest.
  if (map.size >= max) map.delete(map.keys().next().value!);
  map.set(key, value);
}

/**
 * `jwks` with its failures to read the key set told apart ({@linkcode KeySetUnavailable}) from
 * a JWT that no key matches.
 */
function keySet(jwks: JWTVerifyGetKey): JWTVerifyGetKey {
  return async (header, input) => {
    try {
      return await jwks(header, input);
    } catch (e) {
      if (keySetFailure(e)) throw new KeySetUnavailable({ cause: e });
      throw e;
    }
  };
}

/** Whether `hostname` (v4, v6 or v4-mapped v6) is in `list`. */
function trusted(list: BlockList, hostname: string): boolean {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(hostname);
  const address = mapped ? mapped[1] : hostname;
  const family = isIP(address);
  if (family === 0) return false;
  return list.check(address, family === 4 ? "ipv4" : "ipv6");
}

/** A BlockList of `cidrs` (`10.0.0.0/8`, `::1`, `127.0.0.1`). */
function blockList(cidrs: string[]): BlockList {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [address, bits] = cidr.split("/");
    const family = isIP(address);
    const max = family === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : Number(bits);
    if (family === 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > max) {
      throw new ConfigError(
        `CARTD_ACCESS_PROXY_ADDRESSES: ${JSON.stringify(cidr)} is not an address or a CIDR ` +
          "such as 127.0.0.1/32 or ::1/128",
      );
    }
    list.addSubnet(address, prefix, family === 4 ? "ipv4" : "ipv6");
  }
  return list;
}

/** What was wrong with a JWT, for the client (nothing of the token itself). */
function jwtProblem(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return "The JWT has expired";
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    return `The JWT's ${e.claim} claim is not accepted (${e.reason})`;
  }
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) {
    return "The JWT's signature does not verify";
  }
  if (e instanceof joseErrors.JWKSNoMatchingKey) return "No key of the JWKS matches the JWT";
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return "The JWT's algorithm is not accepted";
  if (e instanceof joseErrors.JOSEError) return "The JWT is malformed";
  log.warn("a JWT could not be verified", { error: errorMessage(e) });
  return "The JWT could not be verified";
}

/** The 401 of a request without valid credentials. */
export function unauthorized(refusal: Refusal): Response {
  const challenge = refusal.error ? `${REALM}, error="${refusal.error}"` : REALM;
  return json({ message: refusal.message }, 401, { "WWW-Authenticate": challenge });
}

/** The principal of each request the middleware let through; null: anonymous (a signed link). */
const principals = new WeakMap<Request, Principal | null>();

/** Records who `request` is from (the middleware, and the signed links). */
export function setPrincipal(request: Request, principal: Principal | null): void {
  principals.set(request, principal);
}

/**
 * Who `request` is from: a principal; null when access is on but the request has none (a
 * signed link, the open metrics); undefined when access is off.
 */
export function principalOf(request: Request): Principal | null | undefined {
  return principals.get(request);
}

/** The owner a new cart of `request`'s principal gets (`""` with access off). */
export function ownerOf(request: Request): string {
  return principals.get(request)?.name ?? "";
}

/** An admin's uid that several principals have, without `?owner=`: the answer is 409. */
export class AmbiguousCart extends Error {
  /** `uid` is the cart's; `owners`, those that have one. */
  constructor(readonly uid: string, readonly owners: string[]) {
    super(
      `${owners.length} principals have a cart ${JSON.stringify(uid)}: name one with ` +
        `?owner= (${owners.map((o) => JSON.stringify(o)).join(", ")})`,
    );
    this.name = "AmbiguousCart";
  }
}

/**
 * The live cart `uid` as the principal of `request` sees it, or null: with access off, the
 * cart of that uid; for a principal, its own (another's cart is not there for it: the same one
 * query as for a uid nobody has, so neither the answer nor its time tells them apart); for an
 * admin, the cart of `?owner=`, else its own, else the one cart of that uid whoever owns it.
 *
 * @throws {AmbiguousCart} for an admin's uid that several others have.
 */
export async function findCart(
  store: CartStore,
  request: Request,
  uid: string,
): Promise<Cart | null> {
  const who = principals.get(request);
  if (who === undefined) return await store.liveCart(uid);
  if (who === null) return null;
  if (!who.admin) return await store.liveCart(uid, who.name);
  const owner = new URL(request.url).searchParams.get("owner");
  if (owner !== null) return await store.liveCart(uid, owner);
  const own = await store.liveCart(uid, who.name);
  if (own) return own;
  const all: Cart[] = await store.liveCartsOfUid(uid);
  if (all.length > 1) throw new AmbiguousCart(uid, all.map((c) => c.owner));
  return all[0] ?? null;
}

/** What {@linkcode accessMiddleware} reads of a request's context (a Hono context). */
export interface AccessContext {
  /** The request, and its path. */
  req: { raw: Request; path: string };
  /** What the server passed with the request (`remoteAddr`: the peer's address). */
  env: unknown;
  /** The answer, once the routes have made it. */
  res: Response;
}

/** The middleware {@linkcode accessMiddleware} makes. */
export type AccessMiddleware = (
  c: AccessContext,
  next: () => Promise<void>,
) => Promise<Response | void>;

/** What {@linkcode accessMiddleware} asks besides the identities. */
export interface AccessHooks {
  /** Seconds until `principal` may send another request, or null when it may now. */
  rate(principal: Principal): number | null;
  /** The request rate quota, for the 429's message. */
  rateLimit: number;
  /** Whether the request is open to anyone (`GET /`, the metrics): no credentials asked. */
  open(request: Request, path: string): boolean;
  /** Whether the request carries a signed link, which the route itself checks. */
  signed(request: Request, path: string): boolean;
}

/**
 * The middleware that asks every request (but the open ones and signed links) who sent it:
 * `401` with `WWW-Authenticate` without valid credentials, before any route runs (so nothing
 * is stored); `429` over the principal's request rate; then one access log line per request,
 * naming the principal (and never what it sent as credentials, nor the query: a signed link's
 * signature is in it).
 *
 * A request whose principal is known at once (a header accepted before) goes on to the
 * routes without an `await` of the middleware's own: a HEAD, which clients poll with, costs
 * the checks and no more (docs/benchmarks.md, "Access control").
 */
export function accessMiddleware(access: Access, hooks: AccessHooks): AccessMiddleware {
  /** The request of `c`, told `who` sent it, let through to the routes, or refused. */
  const admit = (
    c: AccessContext,
    next: () => Promise<void>,
    who: Principal | Refusal,
    remote: Deno.NetAddr | undefined,
    started: number,
  ): Promise<Response | void> => {
    const request = c.req.raw;
    if (!("name" in who)) {
      const status = who.unavailable ? 503 : 401;
      log.info("request refused: no valid credentials", {
        method: request.method,
        path: c.req.path,
        status,
        why: who.message,
        from: remote?.hostname,
      });
      return Promise.resolve(
        who.unavailable
          ? json({ message: who.message }, 503, { "Retry-After": String(JWKS_RETRY_S) })
          : unauthorized(who),
      );
    }
    setPrincipal(request, who);
    const wait = who.admin ? null : hooks.rate(who);
    if (wait !== null) {
      log.info("request refused: over the principal's request rate", {
        method: request.method,
        path: c.req.path,
        status: 429,
        principal: who.name,
      });
      return Promise.resolve(json(
        {
          message: `Quota exceeded: requests per second (CARTD_QUOTA_RATE=${hooks.rateLimit}); ` +
            "slow down",
        },
        429,
        { "Retry-After": String(wait) },
      ));
    }
    return served(c, next, who, started);
  };

  /** Runs the routes on the request of `c` (from `principal`), then writes its log line. */
  const served = (
    c: AccessContext,
    next: () => Promise<void>,
    principal: Principal | null,
    started: number,
  ): Promise<void> => {
    // HEAD is how clients poll a cart, many times a minute each: its lines are debug (a line
    // costs more than the access checks themselves; docs/security.md), and when debug is off
    // nothing of the line is made (`started` is NaN).
    if (Number.isNaN(started)) return next();
    return next().then(() => {
      const request = c.req.raw;
      const who = principalOf(request) ?? principal;
      (request.method === "HEAD" ? log.debug : log.info)("request", {
        method: request.method,
        path: c.req.path,
        status: c.res.status,
        principal: who?.name ?? "",
        via: who?.via ?? "none",
        ms: Math.round(performance.now() - started),
      });
    });
  };

  return (c, next) => {
    const request = c.req.raw;
    const path = c.req.path;
    const started = request.method !== "HEAD" || log.enabled("debug") ? performance.now() : NaN;
    if (hooks.open(request, path) || hooks.signed(request, path)) {
      setPrincipal(request, null);
      return served(c, next, null, started);
    }
    const remote = (c.env as { remoteAddr?: Deno.NetAddr } | undefined)?.remoteAddr;
    const who = access.authenticate(request, remote);
    return who instanceof Promise
      ? who.then((known) => admit(c, next, known, remote, started))
      : admit(c, next, who, remote, started);
  };
}
