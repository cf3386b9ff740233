/**
 * clientAddress: the address the platform's proxy recorded, never one the client wrote; parsed
 * and normalized, or null when the trusted entry is missing or not an IP address.
 */
import assert from "node:assert/strict";
import {
  clientAddress,
  type ClientAddressConfig,
} from "../supabase/functions/_shared/client-address.ts";

function from(headers: Record<string, string>, config?: ClientAddressConfig): string | null {
  return clientAddress(new Request("http://functions.test/", { headers }), config);
}

const HOPS_2: ClientAddressConfig = { trustedProxyHops: 2, header: null };
const CF: ClientAddressConfig = { trustedProxyHops: 1, header: "cf-connecting-ip" };

Deno.test("clientAddress takes the rightmost X-Forwarded-For entry by default", () => {
  assert.equal(from({ "x-forwarded-for": "203.0.113.7" }), "203.0.113.7");
  assert.equal(from({ "x-forwarded-for": "10.0.0.1, 203.0.113.7" }), "203.0.113.7");
  assert.equal(from({ "x-forwarded-for": "evil, 1.1.1.1,203.0.113.7 " }), "203.0.113.7");
  assert.equal(from({}), null);
});

Deno.test("clientAddress counts trusted proxy hops from the right", () => {
  assert.equal(
    from({ "x-forwarded-for": "1.1.1.1, 203.0.113.7, 10.0.0.2" }, HOPS_2),
    "203.0.113.7",
  );
  assert.equal(from({ "x-forwarded-for": "203.0.113.7, 10.0.0.2" }, HOPS_2), "203.0.113.7");
  assert.equal(from({ "x-forwarded-for": "10.0.0.2" }, HOPS_2), null, "fewer entries than hops");
});

Deno.test("clientAddress reads only the configured header when there is one", () => {
  const forwarded = { "x-forwarded-for": "198.51.100.1" };
  assert.equal(from({ ...forwarded, "cf-connecting-ip": " 203.0.113.7 " }, CF), "203.0.113.7");
  assert.equal(from(forwarded, CF), null, "X-Forwarded-For is not a fallback");
  assert.equal(from({ "cf-connecting-ip": "203.0.113.7, 1.1.1.1" }, CF), null, "one address");
});

Deno.test("clientAddress normalizes IPv6 and rejects what is not an IP address", () => {
  assert.equal(from({ "x-forwarded-for": "2001:DB8:0:0::0001" }), "2001:db8::1");
  assert.equal(from({ "x-forwarded-for": "::ffff:192.0.2.1" }), "::ffff:c000:201");
  for (const bad of ["unknown", "999.1.1.1", "[::1]", "fe80::1%eth0", "1.2.3.4:80", "1.2.3.4, "]) {
    assert.equal(from({ "x-forwarded-for": bad }), null, bad);
  }
});
