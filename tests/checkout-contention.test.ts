/**
 * Contention is answered, not queued forever: a checkout that cannot get its tier within
 * CHECKOUT_LOCK_TIMEOUT_MS (default 2000) is told 503 temporarily_unavailable with Retry-After
 * and writes nothing; the same key succeeds once the tier is free.
 */
import assert from "node:assert/strict";
import type postgres from "postgres";
import { checkoutRequest, newKey, rowCounts, withHarness } from "./support/checkout-harness.ts";
import { closeAll, openSeparateConnections } from "./support/database.ts";

/**
 * Another checkout of `tierId` that has claimed its seats and not committed yet: it holds
 * whatever a claim holds on the tier. Rolled back by `release`, or after `safetyMs` at the latest
 * (so that a claim waiting forever still comes back, and the test fails instead of hanging).
 */
async function tierHeldByAnotherCheckout(
  eventId: string,
  tierId: string,
  safetyMs: number,
): Promise<{ release(): Promise<void>; released(): boolean }> {
  const [connection] = await openSeparateConnections(1) as [postgres.Sql];
  const tx = await connection.reserve();
  await tx`begin`;
  const op = newKey();
  const [claim] = await tx<{ outcome: string }[]>`
    select outcome from public.claim_checkout(${op}, ${`checkout:create:${op}:${crypto.randomUUID()}`},
      repeat('b', 64), gen_random_uuid(), ${eventId}::uuid,
      ${tx.json([{ tierId, quantity: 1 }])}::jsonb, null, 'holder@example.com', null,
      'http://shop.test/ok', 'http://shop.test/cancel', 1920, 30)`;
  assert.equal(claim?.outcome, "created");
  let done = false;
  const release = async () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    await tx`rollback`;
    tx.release();
    await closeAll([connection]);
  };
  const timer = setTimeout(() => void release(), safetyMs);
  return { release, released: () => done };
}

Deno.test("a checkout that waits too long for its tier is 503 temporarily_unavailable with Retry-After and writes nothing", () =>
  withHarness(async (h) => {
    const holder = await tierHeldByAnotherCheckout(h.event.id, h.event.floor, 8_000);
    try {
      const before = await rowCounts(h.sql);
      const key = newKey();
      const body = {
        eventId: h.event.id,
        items: [{ tierId: h.event.floor, quantity: 1 }],
        email: "waiting@example.com",
      };
      const response = await h.guest(checkoutRequest(body, { key }));
      assert.ok(!holder.released(), "the answer came while the other checkout still held the tier");
      assert.equal(response.status, 503);
      assert.equal((await response.json()).error.code, "temporarily_unavailable");
      assert.ok(Number(response.headers.get("retry-after")) >= 1, "Retry-After is set");
      assert.equal(await rowCounts(h.sql), before, "nothing was written");
      assert.equal(h.stripe.sessionsCreated(), 0, "Stripe was not called");
      assert.equal(h.logs.at(-1)?.code, "temporarily_unavailable");

      await holder.release();
      const retry = await h.guest(checkoutRequest(body, { key }));
      assert.equal(retry.status, 201, "the same key goes through once the tier is free");
      assert.equal(h.stripe.sessionsCreated(), 1);
    } finally {
      await holder.release();
    }
  }));
