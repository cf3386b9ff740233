/**
 * Hold flooding: one client must not lock up an event by opening checkouts it never pays.
 * Pending holds are limited per buyer and per client address; replays are never limited.
 */
import assert from "node:assert/strict";
import { checkoutRequest, type Harness, newKey, startHarness } from "./support/checkout_harness.ts";

const LIMITS = { maxPendingPerBuyer: 2, maxPendingPerAddress: 3, windowSeconds: 1800 };

async function withLimits(fn: (h: Harness) => Promise<void>) {
  const h = await startHarness({ holdLimits: LIMITS });
  try {
    await fn(h);
  } finally {
    await h.close();
  }
}

/** A documentation-range IPv6 address unique to this run, so reruns on one database never collide. */
function randomAddress(): string {
  const hex = () => Math.floor(Math.random() * 0x10000).toString(16);
  return `2001:db8:${hex()}:${hex()}::${hex()}`;
}

function order(h: Harness, email: string, address = randomAddress(), key = newKey()) {
  return h.guest(checkoutRequest(
    { eventId: h.event.id, items: [{ tierId: h.event.balcony, quantity: 10 }], email },
    { key, headers: { "x-forwarded-for": `${address}, 10.0.0.1` } },
  ));
}

Deno.test("a guest email holds at most the configured pending checkouts; replays are never limited", () =>
  withLimits(async (h) => {
    const email = `flood-${crypto.randomUUID()}@example.com`;
    const first = newKey();
    const firstAddress = randomAddress();
    assert.equal((await order(h, email, firstAddress, first)).status, 201);
    assert.equal((await order(h, email, randomAddress())).status, 201);
    const sessions = h.stripe.sessionsCreated();

    const third = await order(h, email, randomAddress());
    assert.equal(third.status, 429);
    assert.equal((await third.json()).error.code, "too_many_pending_checkouts");
    const retryAfter = Number(third.headers.get("retry-after"));
    assert.ok(retryAfter >= 1 && retryAfter <= 1800, String(retryAfter));
    assert.equal(h.stripe.sessionsCreated(), sessions, "no session for a refused checkout");

    const replay = await order(h, email, firstAddress, first);
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get("idempotent-replayed"), "true", "a replay is never limited");
  }));

Deno.test("a client address holds at most the configured pending checkouts across emails", () =>
  withLimits(async (h) => {
    const address = randomAddress();
    const statuses = [];
    for (let i = 0; i < 5; i++) {
      statuses.push(
        (await order(h, `addr-${i}-${crypto.randomUUID()}@example.com`, address)).status,
      );
    }
    assert.deepEqual(statuses, [201, 201, 201, 429, 429]);
    const other = await order(h, `other-${crypto.randomUUID()}@example.com`, randomAddress());
    assert.equal(other.status, 201, "another address is not affected");
  }));

Deno.test("concurrent checkouts of one buyer cannot race past the limit", () =>
  withLimits(async (h) => {
    const email = `race-${crypto.randomUUID()}@example.com`;
    const responses = await Promise.all(
      Array.from({ length: 10 }, () => order(h, email, randomAddress())),
    );
    const statuses = responses.map((r) => r.status).sort();
    assert.equal(
      statuses.filter((s) => s === 201).length,
      LIMITS.maxPendingPerBuyer,
      statuses.join(),
    );
    assert.equal(statuses.filter((s) => s === 429).length, 10 - LIMITS.maxPendingPerBuyer);
  }));

Deno.test("a paid or expired order frees its slot", () =>
  withLimits(async (h) => {
    const email = `slots-${crypto.randomUUID()}@example.com`;
    const a = await (await order(h, email, randomAddress())).json();
    await order(h, email, randomAddress());
    assert.equal((await order(h, email, randomAddress())).status, 429);
    await h.sql`update public.orders set status = 'paid', paid_at = now() where id = ${a.orderId}`;
    assert.equal((await order(h, email, randomAddress())).status, 201);
  }));

Deno.test("one address flooding the event holds at most limit × max_per_order seats", () =>
  withLimits(async (h) => {
    const address = randomAddress();
    for (let i = 0; i < 30; i++) {
      await order(h, `bot-${i}-${crypto.randomUUID()}@example.com`, address);
    }
    const [row] = await h.sql<{ seats: number }[]>`
      select coalesce(sum(i.quantity), 0)::int as seats
      from public.orders o join public.order_items i on i.order_id = o.id
      where o.client_address = ${address}::inet and o.status = 'pending' and o.event_id = ${h.event.id}`;
    assert.equal(row?.seats, LIMITS.maxPendingPerAddress * 10, "3 checkouts × 10 seats, no more");
  }));
