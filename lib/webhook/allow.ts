/**
 * Which addresses a webhook may be sent to (`CARTD_WEBHOOK_ALLOW`), and the check of a URL
 * against them: its host name is resolved and **every** address it resolves to must be
 * allowed, once when the cart is POSTed and again before each delivery attempt (which then
 * connects to exactly the addresses checked: lib/webhook/deliver.ts), so that a name that
 * resolves to a public address at POST and to a private one later (DNS rebinding) is never
 * called at the private one.
 *
 * The entry `public` allows every address outside {@linkcode SPECIAL_PURPOSE}: for IPv4 the
 * ranges of the IANA special-purpose registry (loopback, private, shared, link-local,
 * documentation, benchmarking, multicast, reserved …), for IPv6 only global unicast
 * (`2000::/3`) outside its own special ranges (documentation, 6to4, Teredo, NAT64 …). An
 * IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is judged as the IPv4 address it carries.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { AllowList } from "./allow.ts";
 * const public_ = new AllowList(["public"]);
 * assert.equal(public_.allows("192.168.1.10"), false);
 * assert.equal(public_.allows("::ffff:127.0.0.1"), false);
 * assert.equal(new AllowList(["127.0.0.1"]).allows("127.0.0.1"), true);
 * ```
 * @module
 */
import { lookup } from "node:dns/promises";
import { BlockList, isIP } from "node:net";

/** The ranges the entry `public` leaves out, as CIDR ranges (docs/configuration.md lists them). */
export const SPECIAL_PURPOSE: readonly string[] = [
  "0.0.0.0/8", // "this network"
  "10.0.0.0/8", // private
  "100.64.0.0/10", // shared address space (carrier-grade NAT)
  "127.0.0.0/8", // loopback
  "169.254.0.0/16", // link-local (cloud metadata services live here)
  "172.16.0.0/12", // private
  "192.0.0.0/24", // IETF protocol assignments
  "192.0.2.0/24", // documentation (TEST-NET-1)
  "192.88.99.0/24", // 6to4 relay anycast
  "192.168.0.0/16", // private
  "198.18.0.0/15", // benchmarking
  "198.51.100.0/24", // documentation (TEST-NET-2)
  "203.0.113.0/24", // documentation (TEST-NET-3)
  "224.0.0.0/4", // multicast
  "240.0.0.0/4", // reserved, and the broadcast address
  "64:ff9b::/96", // NAT64 (reaches IPv4 addresses, private ones too)
  "64:ff9b:1::/48", // local NAT64
  "100::/64", // discard
  "2001::/23", // IETF protocol assignments (Teredo …)
  "2001:db8::/32", // documentation
  "2002::/16", // 6to4 (reaches IPv4 addresses)
  "3fff::/20", // documentation
];

/** IPv6 addresses the entry `public` allows at most: global unicast. */
const GLOBAL_UNICAST = "2000::/3";

/** Adds the CIDR range or address `entry` to `list`. */
function add(list: BlockList, entry: string): void {
  const [address, bits] = entry.split("/");
  const type = isIP(address) === 6 ? "ipv6" : "ipv4";
  if (bits === undefined) list.addAddress(address, type);
  else list.addSubnet(address, Number(bits), type);
}

const special = new BlockList();
for (const range of SPECIAL_PURPOSE) add(special, range);
const globalUnicast = new BlockList();
add(globalUnicast, GLOBAL_UNICAST);

/** The IPv4 address an IPv4-mapped IPv6 address carries, or `address` as it is. */
export function unmapped(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1] : address;
}

/** Whether `address` (IPv4 or IPv6) lies outside every special-purpose range. */
export function isPublicAddress(address: string): boolean {
  const plain = unmapped(address);
  const family = isIP(plain);
  if (family === 4) return !special.check(plain, "ipv4");
  if (family === 6) return globalUnicast.check(plain, "ipv6") && !special.check(plain, "ipv6");
  return false;
}

/** The allow-list of `CARTD_WEBHOOK_ALLOW`, from its entries (as lib/config/settings.ts reads them). */
export class AllowList {
  readonly #public: boolean;
  readonly #listed = new BlockList();

  /** The list of `entries`: `public`, IP addresses and CIDR ranges. */
  constructor(readonly entries: readonly string[]) {
    this.#public = entries.includes("public");
    for (const entry of entries) if (entry !== "public") add(this.#listed, entry);
  }

  /** Whether a webhook may be sent to `address`. */
  allows(address: string): boolean {
    const plain = unmapped(address);
    const family = isIP(plain);
    if (family === 0) return false;
    if (this.#public && isPublicAddress(plain)) return true;
    return this.#listed.check(plain, family === 4 ? "ipv4" : "ipv6");
  }
}

/** A webhook URL that may not be called: the message says why, for the client or the log. */
export class WebhookRefused extends Error {
  /** Builds the error; `message` says why. */
  constructor(message: string) {
    super(message);
    this.name = "WebhookRefused";
  }
}

/** One address of a host, as `node:dns` gives it. */
export interface Address {
  /** The address, as text. */
  address: string;
  /** 4 or 6. */
  family: number;
}

/** How {@linkcode checkedAddresses} resolves a name (tests and the delivery pass their own). */
export type Resolver = (host: string) => Promise<Address[]>;

/**
 * The system's resolver (`getaddrinfo`: `/etc/hosts`, then DNS, as other programs on the
 * machine resolve), every address of the name.
 */
export function systemResolver(host: string): Promise<Address[]> {
  return lookup(host, { all: true, verbatim: true });
}

/**
 * The addresses of `url`'s host, every one of them allowed by `allow`; throws
 * {@linkcode WebhookRefused} naming the first that is not, or when the name does not resolve
 * within `timeoutMs`. A host that is an IP address is not resolved.
 */
export async function checkedAddresses(
  url: URL,
  allow: AllowList,
  timeoutMs: number,
  resolver: Resolver = systemResolver,
): Promise<Address[]> {
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  let addresses: Address[];
  if (isIP(host)) {
    addresses = [{ address: host, family: isIP(host) }];
  } else {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new WebhookRefused(`the host ${host} did not resolve within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      addresses = await Promise.race([resolver(host), late]);
    } catch (e) {
      if (e instanceof WebhookRefused) throw e;
      throw new WebhookRefused(`the host ${host} does not resolve (${(e as Error).message})`);
    } finally {
      clearTimeout(timer);
    }
    if (!addresses.length) throw new WebhookRefused(`the host ${host} resolves to no address`);
  }
  for (const { address } of addresses) {
    if (!allow.allows(address)) {
      const via = address === host ? `${host}` : `the host ${host} resolves to ${address}, which`;
      throw new WebhookRefused(
        `${via} is not an address this cartd may send webhooks to (CARTD_WEBHOOK_ALLOW; ` +
          "by default only public addresses: no loopback, private or link-local ones)",
      );
    }
  }
  return addresses;
}
