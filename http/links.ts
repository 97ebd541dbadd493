/**
 * Signed download links (issue 17 item 3): `GET /{uid}/link` gives the owner a URL of
 * `GET /{uid}` that works without credentials until it expires, for browsers and `wget`.
 *
 * The link's query carries the cart's internal id (`cart`), its `owner`, the `format`, the
 * `filename` (empty: the default name), `manifest`, the expiry (`expires`, seconds since the
 * epoch) and `sig`: HMAC-SHA256 (base64url) over all of them and the uid, under the first key
 * of `CARTD_LINK_KEYS`. Every key of the setting verifies, so a key is rotated by putting the
 * new one first and removing the old one once its links have expired.
 *
 * The same query also opens the cart's read-only pages: `GET /{uid}/status` (the JSON, or the
 * status page in a browser, whose event stream, failed files and download keep the query),
 * `GET /{uid}/events` and `GET /{uid}/files` ({@linkcode LINK_READS}): an `EventSource` cannot
 * send a bearer token, so a browser follows a cart through its link. Nothing else: no DELETE,
 * no POST, no new link.
 *
 * A link whose signature matches no key answers `403` saying it was altered; one past its
 * expiry, `403` saying it expired; one whose cart was deleted or replaced (another id under
 * the uid), `404` as any missing cart. Signatures are compared with `node:crypto`'s
 * `timingSafeEqual`, called through the module's default export.
 *
 * @module
 */
import nodeCrypto from "node:crypto";
import { ConfigError } from "../lib/config/config.ts";
import { listOf } from "./access.ts";

/** The least length of a link key (characters). */
export const LINK_KEY_MIN = 16;
/** How long a link is valid when `GET /{uid}/link` names no `expires` (s). */
export const LINK_DEFAULT_S = 3600;

/** The paths under `/{uid}` that a signed link opens besides `/{uid}` itself (read-only). */
export const LINK_READS: ReadonlySet<string> = new Set(["/status", "/events", "/files"]);

/** The query parameters of a signed link, in the order {@linkcode LinkSigner.query} writes them. */
const LINK_PARAMS = ["cart", "owner", "format", "filename", "manifest", "expires", "sig"] as const;

/** A signed link refused: altered or expired (`403`, with the message saying which). */
export class LinkRefused extends Error {
  /** `message` says which, for the client. */
  constructor(message: string) {
    super(message);
    this.name = "LinkRefused";
  }
}

/**
 * The signed link's part of `url`'s query (the other parameters left out), as it came: what
 * a status page opened through a link passes on to its event stream, files and download.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { linkQuery } from "./links.ts";
 * const url = new URL("http://cartd/c/status?state=error&cart=1&owner=a&format=tar" +
 *   "&filename=&manifest=0&expires=9&sig=xyz");
 * assert.equal(linkQuery(url), "cart=1&owner=a&format=tar&filename=&manifest=0&expires=9&sig=xyz");
 * ```
 */
export function linkQuery(url: URL): string {
  const out = new URLSearchParams();
  for (const name of LINK_PARAMS) out.set(name, url.searchParams.get(name) ?? "");
  return out.toString();
}

/** What a link names, all signed. */
export interface LinkFields {
  /** The cart's internal id: a replaced cart's link does not open its successor. */
  cartId: string;
  /** The cart's uid (the link's path). */
  uid: string;
  /** The cart's owner. */
  owner: string;
  /** The download name, or "" for the default one. */
  filename: string;
  /** `tar` or `zip`. */
  format: "tar" | "zip";
  /** Whether the bundle carries a sha256 manifest. */
  manifest: boolean;
  /** When the link stops working: seconds since the epoch (valid while now is before it). */
  expires: number;
}

/** The outcome of {@linkcode LinkSigner.verify}. */
export type LinkCheck =
  | { ok: true; link: LinkFields }
  | { ok: false; message: string };

/** Reads `CARTD_LINK_KEYS`: comma-separated keys of at least {@linkcode LINK_KEY_MIN} characters. */
export function parseLinkKeys(text: string): string[] {
  const keys = listOf(text);
  const short = keys.findIndex((k) => k.length < LINK_KEY_MIN);
  if (short >= 0) {
    // The key itself is a secret: only its place is told.
    throw new ConfigError(
      `CARTD_LINK_KEYS: key ${short + 1} is shorter than ${LINK_KEY_MIN} characters; ` +
        "use long random keys (openssl rand -base64 32)",
    );
  }
  return keys;
}

/** The bytes a link's signature covers: the fields, unambiguously (a JSON array). */
function signed(link: LinkFields): string {
  return JSON.stringify([
    "cartd-link-1",
    link.cartId,
    link.uid,
    link.owner,
    link.filename,
    link.format,
    link.manifest ? 1 : 0,
    link.expires,
  ]);
}

/** Makes and checks signed links with the keys of `CARTD_LINK_KEYS`. */
export class LinkSigner {
  readonly #keys: string[];

  /** A signer with `keys` (the first signs); `now` is the clock (ms). */
  constructor(keys: string[], readonly now: () => number = Date.now) {
    this.#keys = keys;
  }

  /** Whether links can be made (a key is set). */
  get on(): boolean {
    return this.#keys.length > 0;
  }

  #mac(key: string, link: LinkFields): Buffer {
    return nodeCrypto.createHmac("sha256", key).update(signed(link)).digest();
  }

  /** The query of `GET /{uid}` that `link` is (its signature under the first key included). */
  query(link: LinkFields): URLSearchParams {
    const sig = this.#mac(this.#keys[0], link).toString("base64url");
    return new URLSearchParams({
      cart: link.cartId,
      owner: link.owner,
      format: link.format,
      filename: link.filename,
      manifest: link.manifest ? "1" : "0",
      expires: String(link.expires),
      sig,
    });
  }

  /** Checks the signed link of `uid` that `params` carry: altered (any field), or expired. */
  verify(uid: string, params: URLSearchParams): LinkCheck {
    const altered = {
      ok: false as const,
      message: "The link was altered: its signature does not match what it names (or it was " +
        "signed with a key that is no longer in use); ask the cart's owner for a new link",
    };
    const expires = Number(params.get("expires"));
    const format = params.get("format");
    const manifest = params.get("manifest");
    const cartId = params.get("cart");
    const owner = params.get("owner");
    const filename = params.get("filename");
    const sig = Buffer.from(params.get("sig") ?? "", "base64url");
    if (
      !Number.isSafeInteger(expires) || (format !== "tar" && format !== "zip") ||
      (manifest !== "0" && manifest !== "1") || cartId === null || owner === null ||
      filename === null || sig.length !== 32
    ) return altered;
    const link: LinkFields = {
      cartId,
      uid,
      owner,
      filename,
      format,
      manifest: manifest === "1",
      expires,
    };
    let match = false;
    for (const key of this.#keys) {
      // Every key tried, whichever matched: the time does not tell which key signed.
      if (nodeCrypto.timingSafeEqual(this.#mac(key, link), sig)) match = true;
    }
    if (!match) return altered;
    if (this.now() >= expires * 1000) {
      return {
        ok: false,
        message: `The link expired at ${new Date(expires * 1000).toISOString()}; ` +
          "ask the cart's owner for a new link",
      };
    }
    return { ok: true, link };
  }
}
