import assert from "node:assert/strict";
import {
  AllowList,
  checkedAddresses,
  isPublicAddress,
  SPECIAL_PURPOSE,
  WebhookRefused,
} from "./allow.ts";

Deno.test("public: special-purpose addresses are not public, ordinary ones are", () => {
  const notPublic = [
    "0.0.0.0",
    "10.1.2.3",
    "100.64.0.1",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "192.168.0.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "2001::1",
    "2002:a00:1::1",
    "not an address",
  ];
  for (const address of notPublic) assert.equal(isPublicAddress(address), false, address);
  // Only classified here, never contacted.
  const publicOnes = ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:1.1.1.1"];
  for (const address of publicOnes) assert.equal(isPublicAddress(address), true, address);
  assert.ok(SPECIAL_PURPOSE.includes("169.254.0.0/16"));
});

Deno.test("an allow-list: public, addresses and ranges; without public only what it names", () => {
  const loopback = new AllowList(["127.0.0.1"]);
  assert.equal(loopback.allows("127.0.0.1"), true);
  assert.equal(loopback.allows("::ffff:127.0.0.1"), true, "IPv4-mapped is the IPv4 address");
  assert.equal(loopback.allows("127.0.0.2"), false);
  assert.equal(loopback.allows("8.8.8.8"), false, "no public address without public");
  const mixed = new AllowList(["public", "10.20.0.0/16", "fd00:1::/64"]);
  assert.equal(mixed.allows("8.8.8.8"), true);
  assert.equal(mixed.allows("10.20.3.4"), true);
  assert.equal(mixed.allows("10.21.0.1"), false);
  assert.equal(mixed.allows("fd00:1::5"), true);
  assert.equal(mixed.allows("fd00:2::5"), false);
  assert.equal(mixed.allows("127.0.0.1"), false);
});

Deno.test("checkedAddresses: every resolved address must be allowed (a rebinding name is refused)", async () => {
  const allow = new AllowList(["public"]);
  const resolver = (answers: string[]) => () =>
    Promise.resolve(answers.map((address) => ({ address, family: address.includes(":") ? 6 : 4 })));
  assert.deepEqual(
    await checkedAddresses(new URL("https://hooks.test/x"), allow, 1000, resolver(["8.8.8.8"])),
    [{ address: "8.8.8.8", family: 4 }],
  );
  // One public and one private address: refused, naming the private one.
  await assert.rejects(
    checkedAddresses(
      new URL("https://hooks.test/x"),
      allow,
      1000,
      resolver(["8.8.8.8", "10.0.0.5"]),
    ),
    (e: unknown) =>
      e instanceof WebhookRefused && /hooks\.test resolves to 10\.0\.0\.5/.test(e.message),
  );
  await assert.rejects(
    checkedAddresses(new URL("https://hooks.test/"), allow, 1000, resolver([])),
    /resolves to no address/,
  );
  await assert.rejects(
    checkedAddresses(
      new URL("https://hooks.test/"),
      allow,
      1000,
      () => Promise.reject(new Error("ENOTFOUND")),
    ),
    /does not resolve \(ENOTFOUND\)/,
  );
  await assert.rejects(
    checkedAddresses(new URL("https://hooks.test/"), allow, 50, () => new Promise(() => {})),
    /did not resolve within 50 ms/,
  );
  // An IP address is not resolved; an IPv6 one loses its brackets.
  const never = () => Promise.reject(new Error("resolved"));
  await assert.rejects(
    checkedAddresses(new URL("http://[::1]:8/"), allow, 1000, never),
    /::1 is not/,
  );
  assert.deepEqual(
    await checkedAddresses(
      new URL("http://127.0.0.1:9/"),
      new AllowList(["127.0.0.1"]),
      1000,
      never,
    ),
    [{ address: "127.0.0.1", family: 4 }],
  );
});

Deno.test("checkedAddresses: the system resolver answers localhost from /etc/hosts, refused by default", async () => {
  await assert.rejects(
    checkedAddresses(new URL("http://localhost:9/"), new AllowList(["public"]), 2000),
    /localhost resolves to (127\.0\.0\.1|::1), which is not an address/,
  );
});
