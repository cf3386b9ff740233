/**
 * Stripe decides whether a session was paid or expired; the database's clock only decides when
 * to ask. Late webhooks, payments in a session's last seconds, retries after expires_at, late
 * takeovers and forgotten operations never open a second payment nor sell paid seats again.
 */
import assert from "node:assert/strict";
import { type CheckoutStore } from "../supabase/functions/_shared/checkout.ts";
import { createSql } from "../supabase/functions/_shared/db.ts";
import { checkoutRequest, type Harness, newKey, withHarness } from "./support/checkout-harness.ts";
import { databaseUrl } from "./support/database.ts";
import { applySessionEvent } from "./support/webhooks.ts";
import type { CheckoutSession } from "../local/stripe/mod.ts";

type Tier = "floor" | "balcony" | "last";

function body(h: Harness, tier: Tier = "floor", quantity = 1, email = "truth@example.com") {
  return { eventId: h.event.id, items: [{ tierId: h.event[tier], quantity }], email };
}

async function checkout(h: Harness, key = newKey(), tier: Tier = "floor") {
  const response = await h.guest(checkoutRequest(body(h, tier), { key }));
  assert.equal(response.status, 201, await response.clone().text());
  const json = await response.json() as { orderId: string; sessionId: string };
  return { ...json, key };
}

/** The database's clock passes the order's expires_at (Stripe's own clock is not moved). */
async function passExpiresAt(h: Harness, orderId: string): Promise<void> {
  await h.sql`update public.orders set hold_expires_at = now() - interval '1 second'
              where id = ${orderId}`;
}

async function orderStatus(h: Harness, orderId: string): Promise<string | undefined> {
  const [row] = await h.sql<{ status: string }[]>`
    select status from public.orders where id = ${orderId}`;
  return row?.status;
}

/** Applies a Stripe event for `session` through the webhook's own SQL function. */
function deliver(h: Harness, type: string, session: CheckoutSession) {
  return applySessionEvent(h.sql, { type, session });
}

Deno.test("a retry after expires_at of a session paid in its last seconds fulfils the order: 409 order_already_paid, no second session", () =>
  withHarness(async (h) => {
    const first = await checkout(h);
    const paid = h.stripe.completeSession(first.sessionId); // the webhook is late
    await passExpiresAt(h, first.orderId);

    const retry = await h.guest(checkoutRequest(body(h), { key: first.key }));
    assert.equal(retry.status, 409);
    assert.equal((await retry.json()).error.code, "order_already_paid");
    assert.equal(h.stripe.sessionsCreated(), 1, "no second session was opened");
    assert.equal(await orderStatus(h, first.orderId), "paid", "fulfilled on Stripe's word");

    const late = await deliver(h, "checkout.session.completed", paid);
    assert.equal(late.outcome, "noop", "the late webhook finds it done");
    const again = await h.guest(checkoutRequest(body(h), { key: first.key }));
    assert.equal((await again.json()).error.code, "order_already_paid");
  }));

Deno.test("a retry after expires_at of a session still open at Stripe expires it there first, then renews", () =>
  withHarness(async (h) => {
    const first = await checkout(h);
    await passExpiresAt(h, first.orderId);

    const retry = await h.guest(checkoutRequest(body(h), { key: first.key }));
    assert.equal(retry.status, 201);
    const renewed = await retry.json();
    assert.notEqual(renewed.sessionId, first.sessionId);
    assert.equal(
      h.stripe.sessions.get(first.sessionId)?.status,
      "expired",
      "S1 can no longer be paid",
    );
    assert.equal(await orderStatus(h, first.orderId), "expired");
    const open = [...h.stripe.sessions.values()].filter((s) => s.status === "open");
    assert.deepEqual(open.map((s) => s.id), [renewed.sessionId], "one payable session at a time");
  }));

Deno.test("a session that completes while the retry expires it is fulfilled, not renewed", () =>
  withHarness(async (h) => {
    const first = await checkout(h);
    await passExpiresAt(h, first.orderId);
    // The buyer pays at the very moment the retry asks Stripe to expire the session.
    h.stripe.faults.push({
      kind: "latency",
      ms: 0,
      method: "POST",
      path: `/v1/checkout/sessions/${first.sessionId}/expire`,
      match: () => {
        h.stripe.completeSession(first.sessionId);
        return true;
      },
    });
    const retry = await h.guest(checkoutRequest(body(h), { key: first.key }));
    assert.equal(retry.status, 409);
    assert.equal((await retry.json()).error.code, "order_already_paid");
    assert.equal(await orderStatus(h, first.orderId), "paid");
    assert.equal(h.stripe.sessionsCreated(), 1);
  }));

Deno.test("a retry after expires_at while Stripe is unreachable is 503 payment_provider_unavailable and renews nothing", () =>
  withHarness(async (h) => {
    const first = await checkout(h);
    await passExpiresAt(h, first.orderId);
    for (let i = 0; i < 4; i++) {
      h.stripe.faults.push({
        kind: "reset_before",
        path: `/v1/checkout/sessions/${first.sessionId}`,
      });
    }
    const retry = await h.guest(checkoutRequest(body(h), { key: first.key }));
    assert.equal(retry.status, 503);
    assert.equal((await retry.json()).error.code, "payment_provider_unavailable");
    assert.ok(Number(retry.headers.get("retry-after")) >= 1);
    assert.equal(h.stripe.sessionsCreated(), 1);
    assert.equal(await orderStatus(h, first.orderId), "pending");
    const [row] = await h.sql<{ status: string; stripe_resource_id: string }[]>`
      select status, stripe_resource_id from public.stripe_idempotency_keys
      where operation_type = 'checkout:create' and operation_id = ${first.key}`;
    assert.deepEqual({ ...row }, { status: "completed", stripe_resource_id: first.sessionId });
  }));

Deno.test("a payment in a session's last seconds with a late webhook finds its seats: nobody bought them in between", () =>
  withHarness(async (h) => {
    const first = await checkout(h, newKey(), "last"); // the tier's only seat
    await passExpiresAt(h, first.orderId);
    const rival = await h.guest(checkoutRequest(body(h, "last", 1, "rival@example.com")));
    assert.equal(rival.status, 409, "the seat is still held after expires_at");
    assert.equal((await rival.json()).error.code, "sold_out");

    const paid = h.stripe.completeSession(first.sessionId);
    assert.equal((await deliver(h, "checkout.session.completed", paid)).outcome, "paid");
  }));

Deno.test("an expiry event racing a retry of the same operation, 200 times: no deadlock, no 5xx", () =>
  withHarness(async (h) => {
    // Other connections than the handler's pool, so both sides really run at once.
    const webhookSql = createSql(databaseUrl(), { max: 10 });
    try {
      const rounds = 20;
      const perRound = 10;
      let deadlocks = 0;
      const statuses = new Map<number, number>();
      for (let round = 0; round < rounds; round++) {
        const made = await Promise.all(
          Array.from({ length: perRound }, () => checkout(h, newKey(), "balcony")),
        );
        const ended = made.map((m) => h.stripe.expireSession(m.sessionId));
        await h.sql`update public.orders set hold_expires_at = now() - interval '1 second'
                    where id in ${h.sql(made.map((m) => m.orderId))}`;
        await Promise.all(made.flatMap((m, i) => [
          applySessionEvent(webhookSql, { type: "checkout.session.expired", session: ended[i] })
            .then((result) => {
              if (result.outcome === "failed") deadlocks += 1;
              assert.ok(["expired", "noop"].includes(result.outcome), JSON.stringify(result));
            }),
          h.guest(checkoutRequest(body(h, "balcony"), { key: m.key })).then((response) => {
            statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
          }),
        ]));
      }
      const sqlErrors = h.logs.filter((l) => l.sqlstate === "40P01").length;
      assert.equal(deadlocks + sqlErrors, 0, "no deadlock on either side");
      assert.deepEqual(
        [...statuses.keys()].filter((s) => s >= 500),
        [],
        JSON.stringify([...statuses]),
      );
      assert.equal(statuses.get(201), rounds * perRound, "every retry renewed");
    } finally {
      await webhookSql.end({ timeout: 5 });
    }
  }));

Deno.test("a takeover too late for Stripe's 30-minute floor opens a fresh attempt instead of burning the key into a 502", () => {
  let dying = true;
  return withHarness(async (h) => {
    const key = newKey();
    // The first attempt dies before Stripe sees it (every try dropped, and its release lost).
    for (let i = 0; i < 3; i++) {
      h.stripe.faults.push({ kind: "reset_before", path: "/v1/checkout/sessions" });
    }
    assert.equal((await h.guest(checkoutRequest(body(h), { key }))).status, 503);
    dying = false;
    h.stripe.faults.length = 0;
    const [before] = await h.sql<{ id: string; stripe_idempotency_key: string }[]>`
      select o.id, k.stripe_idempotency_key from public.orders o
      join public.stripe_idempotency_keys k on k.operation_id = o.checkout_operation_id
      where o.checkout_operation_id = ${key}`;
    // Three minutes pass (the lease is long gone too).
    await h.sql`update public.orders set hold_expires_at = hold_expires_at - interval '3 minutes'
                where id = ${before!.id}`;
    await h
      .sql`update public.stripe_idempotency_keys set lease_expires_at = now() - interval '3 minutes'
                where operation_id = ${key}`;

    const retry = await h.guest(checkoutRequest(body(h), { key }));
    assert.equal(retry.status, 201, await retry.clone().text());
    const renewed = await retry.json();
    assert.notEqual(renewed.orderId, before!.id, "a new hold window on a new order");
    assert.ok(Date.parse(renewed.expiresAt) >= Date.now() + 30 * 60_000 - 5_000);
    assert.equal(
      await orderStatus(h, before!.id),
      "cancelled",
      "the dead attempt's seats are free",
    );
    const keys = h.stripe.requests.filter((r) => r.method === "POST").map((r) => r.idempotencyKey);
    assert.notEqual(keys.at(-1), before!.stripe_idempotency_key, "with a new Stripe key");
  }, {
    leaseSeconds: 1,
    wrapStore: (store): CheckoutStore => ({
      ...store,
      release: (input) => dying ? Promise.reject(new Error("killed")) : store.release(input),
    }),
  });
});

Deno.test("after cleanup forgot a paid operation, a retry of its key is 409 order_already_paid, not a second charge", () =>
  withHarness(async (h) => {
    const first = await checkout(h);
    const paid = h.stripe.completeSession(first.sessionId);
    assert.equal((await deliver(h, "checkout.session.completed", paid)).outcome, "paid");
    // What cleanup does 24 hours after the last attempt.
    await h.sql`delete from public.stripe_idempotency_keys
                where operation_type = 'checkout:create' and operation_id = ${first.key}`;

    const retry = await h.guest(checkoutRequest(body(h), { key: first.key }));
    assert.equal(retry.status, 409);
    assert.equal((await retry.json()).error.code, "order_already_paid");
    assert.equal(h.stripe.sessionsCreated(), 1);
    const [row] = await h.sql<{ n: number }[]>`
      select count(*)::int as n from public.stripe_idempotency_keys where operation_id = ${first.key}`;
    assert.equal(row!.n, 0, "nothing was written");
  }));
