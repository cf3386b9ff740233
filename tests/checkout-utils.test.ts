import assert from "node:assert/strict";
import {
  canonicalJson,
  fingerprint,
  makeStripeIdempotencyKey,
  OPERATION,
  parseStripeIdempotencyKey,
} from "../supabase/functions/_shared/checkout-utils.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

Deno.test("stripe keys are shaped operation_type:stable_id:UUID with a fresh v4 UUID", () => {
  const a = makeStripeIdempotencyKey(OPERATION.checkoutCreate, "client-key-123456");
  const b = makeStripeIdempotencyKey(OPERATION.checkoutCreate, "client-key-123456");
  assert.notEqual(a, b, "each attempt gets its own UUID");
  const parsed = parseStripeIdempotencyKey(a);
  assert.equal(parsed?.operationType, "checkout:create");
  assert.equal(parsed?.stableId, "client-key-123456");
  assert.match(parsed?.uuid ?? "", UUID);
  assert.equal(a, `checkout:create:client-key-123456:${parsed?.uuid}`);
});

Deno.test("stripe keys refuse stable ids that could smuggle data or break the shape", () => {
  for (const bad of ["", "has:colon", "buyer@example.com", "x".repeat(151), "spaces are bad"]) {
    assert.throws(() => makeStripeIdempotencyKey(OPERATION.checkoutCreate, bad), TypeError, bad);
  }
  assert.throws(() => makeStripeIdempotencyKey("Checkout", "abc"), TypeError);
  assert.throws(() => makeStripeIdempotencyKey("checkout", "abc"), TypeError, "resource:verb only");
});

Deno.test("the longest stable id still yields a key within Stripe's 255 characters", () => {
  const key = makeStripeIdempotencyKey(OPERATION.checkoutCreate, "k".repeat(150));
  assert.ok(key.length <= 255, String(key.length));
});

Deno.test("parseStripeIdempotencyKey rejects keys that are not type:id:UUID", () => {
  assert.equal(parseStripeIdempotencyKey("checkout:create:abc"), null);
  assert.equal(parseStripeIdempotencyKey("checkout:create:abc:not-a-uuid"), null);
  assert.equal(parseStripeIdempotencyKey("CHECKOUT:abc:" + crypto.randomUUID()), null);
});

Deno.test("canonical JSON ignores key order and undefined fields but not array order", () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [2, 1], c: undefined } }), '{"a":{"d":[2,1]},"b":1}');
  assert.equal(canonicalJson({ a: 1, b: 2 }), canonicalJson({ b: 2, a: 1 }));
  assert.notEqual(canonicalJson([1, 2]), canonicalJson([2, 1]));
});

Deno.test("fingerprints are sha256 hex and differ for different requests", async () => {
  const a = await fingerprint({ buyer: "u1", items: [{ tierId: "t", quantity: 1 }] });
  const b = await fingerprint({ items: [{ quantity: 1, tierId: "t" }], buyer: "u1" });
  const c = await fingerprint({ buyer: "u2", items: [{ tierId: "t", quantity: 1 }] });
  assert.match(a, /^[0-9a-f]{64}$/);
  assert.equal(a, b, "field order does not matter");
  assert.notEqual(a, c, "another buyer is another request");
  // Known vector: sha256 of the canonical form of {} is sha256("{}").
  assert.equal(
    await fingerprint({}),
    "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
  );
});
