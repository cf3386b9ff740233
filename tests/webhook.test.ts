/**
 * stripe-webhook against the real database: only verified events move orders, each exactly
 * once, forward only, with capacity right.
 */
import assert from "node:assert/strict";
import { createWebhookHandler } from "../supabase/functions/_shared/webhook.ts";
import { createSql } from "../supabase/functions/_shared/db.ts";
import { checkoutRequest, type Harness, newKey, withHarness } from "./support/checkout-harness.ts";
import { databaseUrl } from "./support/database.ts";
import { sessionEvent, signedDelivery, TEST_WEBHOOK_SECRET } from "./support/webhooks.ts";
import type { CheckoutSession } from "../local/stripe/mod.ts";

interface Fixture {
  h: Harness;
  webhook: (request: Request) => Promise<Response>;
  /** A checkout of `quantity` floor seats; returns its order and session ids. */
  checkout(
    quantity?: number,
    key?: string,
  ): Promise<{ orderId: string; sessionId: string; key: string }>;
  order(id: string): Promise<{ status: string; paid_at: Date | null }>;
  floorTaken(): Promise<number>;
  eventRows(): Promise<number>;
}

function withWebhook(fn: (f: Fixture) => Promise<void>): Promise<void> {
  return withHarness(async (h) => {
    const webhook = createWebhookHandler({
      sql: h.sql,
      stripe: h.stripeClient,
      webhookSecret: TEST_WEBHOOK_SECRET,
      log: () => {},
    });
    const f: Fixture = {
      h,
      webhook,
      async checkout(quantity = 1, key = newKey()) {
        const response = await h.guest(checkoutRequest({
          eventId: h.event.id,
          items: [{ tierId: h.event.floor, quantity }],
          email: "fan@example.com",
        }, { key }));
        assert.equal(response.status, 201);
        return { ...(await response.json()), key };
      },
      async order(id) {
        const [row] = await h.sql<{ status: string; paid_at: Date | null }[]>`
          select status, paid_at from public.orders where id = ${id}`;
        return row!;
      },
      async floorTaken() {
        const [row] = await h.sql<
          { n: string }[]
        >`select private.tier_seats_taken(${h.event.floor}) as n`;
        return Number(row!.n);
      },
      async eventRows() {
        const [row] = await h.sql<
          { n: number }[]
        >`select count(*)::int as n from public.stripe_webhook_events`;
        return row!.n;
      },
    };
    await fn(f);
  });
}

async function deliver(f: Fixture, payload: string): Promise<{ status: number; outcome?: string }> {
  const response = await f.webhook(await signedDelivery(payload));
  const body = await response.json();
  return { status: response.status, outcome: body.outcome };
}

/** Stripe completes the session; returns the checkout.session.completed event for it. */
function completedEvent(f: Fixture, sessionId: string): string {
  return sessionEvent("checkout.session.completed", f.h.stripe.completeSession(sessionId));
}

/** Stripe expires the session and its expiry event is delivered and applied; returns the session. */
async function expireAndDeliver(f: Fixture, sessionId: string): Promise<CheckoutSession> {
  const expired = f.h.stripe.expireSession(sessionId);
  assert.equal(
    (await deliver(f, sessionEvent("checkout.session.expired", expired))).outcome,
    "expired",
  );
  return expired;
}

Deno.test("checkout.session.completed marks the order paid, and its seats stay sold", () =>
  withWebhook(async (f) => {
    const { orderId, sessionId } = await f.checkout(2);
    const session = f.h.stripe.completeSession(sessionId);
    assert.deepEqual(await deliver(f, sessionEvent("checkout.session.completed", session)), {
      status: 200,
      outcome: "paid",
    });
    const order = await f.order(orderId);
    assert.equal(order.status, "paid");
    assert.ok(order.paid_at);
    assert.equal(await f.floorTaken(), 2);
    await f.h
      .sql`update public.orders set hold_expires_at = now() - interval '1 hour' where id = ${orderId}`;
    assert.equal(await f.floorTaken(), 2, "a paid order keeps its seats after the hold time");
  }));

Deno.test("a redelivered event is acknowledged without being applied again", () =>
  withWebhook(async (f) => {
    const { sessionId } = await f.checkout();
    const payload = completedEvent(f, sessionId);
    assert.equal((await deliver(f, payload)).outcome, "paid");
    const before = await f.eventRows();
    assert.deepEqual(await deliver(f, payload), { status: 200, outcome: "duplicate" });
    assert.equal(await f.eventRows(), before, "stored once");
  }));

Deno.test("ten concurrent deliveries of one event apply it exactly once", () =>
  withWebhook(async (f) => {
    const { sessionId } = await f.checkout();
    const payload = completedEvent(f, sessionId);
    const results = await Promise.all(Array.from({ length: 10 }, () => deliver(f, payload)));
    assert.ok(results.every((r) => r.status === 200));
    assert.equal(results.filter((r) => r.outcome === "paid").length, 1);
    assert.equal(results.filter((r) => r.outcome === "duplicate").length, 9);
    const eventId = JSON.parse(payload).id;
    const [row] = await f.h.sql<{ attempts: number }[]>`
      select attempts from public.stripe_webhook_events where stripe_event_id = ${eventId}`;
    assert.equal(row?.attempts, 1);
  }));

Deno.test("forged, stale, unsigned and non-event deliveries get 400 and write nothing", () =>
  withWebhook(async (f) => {
    const { sessionId } = await f.checkout();
    const payload = completedEvent(f, sessionId);
    const before = await f.eventRows();
    const cases: [string, Request, string][] = [
      [
        "wrong secret",
        await signedDelivery(payload, { secret: "whsec_forged" }),
        "signature_invalid",
      ],
      [
        "stale timestamp",
        await signedDelivery(payload, { timestamp: Math.floor(Date.now() / 1000) - 3600 }),
        "signature_invalid",
      ],
      ["unsigned", await signedDelivery(payload, { signature: null }), "signature_missing"],
      [
        "garbage signature",
        await signedDelivery(payload, { signature: "t=1,v1=abc" }),
        "signature_invalid",
      ],
      [
        "signed non-event",
        await signedDelivery(JSON.stringify({ hello: "world" })),
        "invalid_event",
      ],
      ["signed non-JSON", await signedDelivery("not json"), "signature_invalid"],
    ];
    for (const [why, request, code] of cases) {
      const response = await f.webhook(request);
      assert.equal(response.status, 400, why);
      assert.equal((await response.json()).error.code, code, why);
    }
    // A body altered after signing no longer verifies.
    const tampered = await signedDelivery(payload);
    const altered = new Request(tampered.url, {
      method: "POST",
      headers: tampered.headers,
      body: payload.replace('"amount_total":1500', '"amount_total":1'),
    });
    assert.equal((await f.webhook(altered)).status, 400, "tampered body");
    assert.equal(await f.eventRows(), before, "nothing written");
  }));

Deno.test("out of order: a late expiry never undoes paid; a late completion after expiry is honoured while seats are free", () =>
  withWebhook(async (f) => {
    const a = await f.checkout();
    const paid = f.h.stripe.completeSession(a.sessionId);
    assert.equal(
      (await deliver(f, sessionEvent("checkout.session.completed", paid))).outcome,
      "paid",
    );
    const late = sessionEvent("checkout.session.expired", { ...paid, status: "expired" });
    assert.equal((await deliver(f, late)).outcome, "noop");
    assert.equal((await f.order(a.orderId)).status, "paid");

    const b = await f.checkout();
    await expireAndDeliver(f, b.sessionId);
    const completion = sessionEvent("checkout.session.completed", {
      ...f.h.stripe.sessions.get(b.sessionId)!,
      status: "complete",
      payment_status: "paid",
    });
    assert.equal((await deliver(f, completion)).outcome, "paid");
    assert.equal((await f.order(b.orderId)).status, "paid");
    assert.equal(await f.floorTaken(), 2);
  }));

Deno.test("a late completion after the seats were resold is recorded, not applied (no oversell)", () =>
  withWebhook(async (f) => {
    const a = await f.checkout(4);
    const expired = await expireAndDeliver(f, a.sessionId);
    await f.checkout(4); // the released seats are sold to someone else (capacity 5)
    const completion = sessionEvent("checkout.session.completed", {
      ...expired,
      status: "complete",
      payment_status: "paid",
    });
    assert.equal((await deliver(f, completion)).outcome, "capacity_conflict");
    // Recorded on the order (paid, no seats) for reconciliation to refund in full.
    const order = await f.order(a.orderId);
    assert.equal(order.status, "capacity_conflict");
    assert.ok(order.paid_at);
    assert.ok(await f.floorTaken() <= 5, "never oversold");
    const [row] = await f.h.sql<{ last_error: string }[]>`
      select last_error from public.stripe_webhook_events where stripe_event_id = ${
      JSON.parse(completion).id
    }`;
    assert.match(row!.last_error, /^capacity_conflict/);
  }));

Deno.test("delayed payments: completed-unpaid keeps the hold, then async success pays or async failure releases", () =>
  withWebhook(async (f) => {
    const ok = await f.checkout();
    const unpaid = {
      ...f.h.stripe.sessions.get(ok.sessionId)!,
      status: "complete" as const,
      payment_status: "unpaid" as const,
    };
    assert.equal(
      (await deliver(f, sessionEvent("checkout.session.completed", unpaid))).outcome,
      "awaiting_payment",
    );
    assert.equal((await f.order(ok.orderId)).status, "pending");
    const succeeded = sessionEvent("checkout.session.async_payment_succeeded", {
      ...unpaid,
      payment_status: "paid",
    });
    assert.equal((await deliver(f, succeeded)).outcome, "paid");

    const bad = await f.checkout();
    assert.equal(await f.floorTaken(), 2);
    const failed = sessionEvent("checkout.session.async_payment_failed", {
      ...f.h.stripe.sessions.get(bad.sessionId)!,
      status: "complete",
    });
    assert.equal((await deliver(f, failed)).outcome, "cancelled");
    assert.equal(await f.floorTaken(), 1, "the failed payment's hold is released");
  }));

Deno.test("an amount, currency or session mismatch is recorded and not applied", () =>
  withWebhook(async (f) => {
    const { orderId, sessionId } = await f.checkout();
    const session = f.h.stripe.completeSession(sessionId);
    for (
      const forged of [
        { ...session, amount_total: 1 },
        { ...session, currency: "eur" },
        { ...session, id: "cs_test_someone_else" },
      ]
    ) {
      const payload = sessionEvent("checkout.session.completed", forged);
      assert.equal((await deliver(f, payload)).outcome, "mismatch");
      const [row] = await f.h.sql<{ last_error: string; processed_at: Date | null }[]>`
        select last_error, processed_at from public.stripe_webhook_events where stripe_event_id = ${
        JSON.parse(payload).id
      }`;
      assert.match(row!.last_error, /^mismatch/);
      assert.ok(row!.processed_at);
    }
    assert.equal((await f.order(orderId)).status, "pending");
  }));

Deno.test("other event types are stored and acknowledged; unknown orders are recorded as unmatched", () =>
  withWebhook(async (f) => {
    const other = JSON.stringify({
      id: `evt_${crypto.randomUUID().replaceAll("-", "")}`,
      object: "event",
      type: "payment_intent.created",
      livemode: false,
      data: { object: { id: "pi_1", object: "payment_intent" } },
    });
    assert.deepEqual(await deliver(f, other), { status: 200, outcome: "ignored" });
    const stray = sessionEvent("checkout.session.completed", {
      id: "cs_test_stray",
      client_reference_id: crypto.randomUUID(),
      amount_total: 100,
      currency: "usd",
      payment_status: "paid",
    });
    assert.deepEqual(await deliver(f, stray), { status: 200, outcome: "unmatched" });
  }));

Deno.test("after checkout.session.expired the storefront's retry gets a fresh session, not the dead one", () =>
  withWebhook(async (f) => {
    const first = await f.checkout(2);
    await expireAndDeliver(f, first.sessionId);
    assert.equal(await f.floorTaken(), 0, "the hold was released");
    const [record] = await f.h.sql<{ ended: string | null }[]>`
      select metadata ->> 'session_ended' as ended from public.stripe_idempotency_keys
      where operation_type = 'checkout:create' and operation_id = ${first.key}`;
    assert.equal(
      record?.ended,
      "checkout.session.expired",
      "the idempotency record knows its session ended",
    );

    const retry = await f.checkout(2, first.key);
    assert.notEqual(retry.sessionId, first.sessionId);
    assert.equal(f.h.stripe.sessions.get(retry.sessionId)?.status, "open");
    assert.equal(await f.floorTaken(), 2, "capacity was taken again for the fresh session");
  }));

Deno.test("when the database is unreachable the delivery fails with 5xx and a redelivery applies it", () =>
  withWebhook(async (f) => {
    const { orderId, sessionId } = await f.checkout();
    const payload = completedEvent(f, sessionId);
    const broken = createSql(databaseUrl().replace(/:\d+\//, ":1/"), { max: 1 });
    const offline = createWebhookHandler({
      sql: broken,
      stripe: f.h.stripeClient,
      webhookSecret: TEST_WEBHOOK_SECRET,
      log: () => {},
    });
    try {
      const response = await offline(await signedDelivery(payload));
      assert.ok(response.status >= 500, String(response.status));
      assert.ok(!(await response.text()).includes("postgres"), "no connection details leak");
    } finally {
      await broken.end({ timeout: 1 });
    }
    assert.equal((await f.order(orderId)).status, "pending");
    assert.equal((await deliver(f, payload)).outcome, "paid");
  }));

Deno.test("a signed event with NUL or a lone surrogate in a string is stored and applied, not refused", () =>
  withWebhook(async (f) => {
    const { orderId, sessionId } = await f.checkout();
    const session = f.h.stripe.completeSession(sessionId);
    const payload = sessionEvent(
      "checkout.session.completed",
      {
        ...session,
        customer_details: { name: "Nul\u0000 and \ud800 lone" },
      } as typeof session,
    );
    assert.match(payload, /\\u0000/);
    assert.deepEqual(await deliver(f, payload), { status: 200, outcome: "paid" });
    assert.equal((await f.order(orderId)).status, "paid");
  }));

const MIB = 1024 * 1024;

/** A body of `total` bytes of `fill`, streamed in 64 KiB chunks; counts what the reader pulls. */
function countedBody(total: number, fill = 0x20) {
  let pulled = 0;
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      const size = Math.min(64 * 1024, total - pulled);
      if (size <= 0) return controller.close();
      pulled += size;
      controller.enqueue(new Uint8Array(size).fill(fill));
    },
    cancel() {
      cancelled = true;
    },
  }, { highWaterMark: 0 });
  return { body, pulled: () => pulled, cancelled: () => cancelled };
}

/** A signed delivery's headers with another body (the signature does not matter for 413). */
async function withBody(
  body: ReadableStream<Uint8Array>,
  headers: Record<string, string> = {},
): Promise<Request> {
  const signed = await signedDelivery("{}");
  return new Request(signed.url, {
    method: "POST",
    headers: { ...Object.fromEntries(signed.headers), ...headers },
    body,
  });
}

Deno.test("a webhook body over 1 MiB without Content-Length is 413 payload_too_large after reading at most 1 MiB, writing nothing", () =>
  withWebhook(async (f) => {
    const before = await f.eventRows();
    const stream = countedBody(8 * MIB);
    const response = await f.webhook(await withBody(stream.body));
    assert.equal(response.status, 413);
    assert.equal((await response.json()).error.code, "payload_too_large");
    assert.ok(stream.pulled() <= MIB + 64 * 1024, `read ${stream.pulled()} bytes`);
    assert.ok(stream.cancelled(), "the rest of the body is cancelled, not drained");
    assert.equal(await f.eventRows(), before, "nothing written");
  }));

Deno.test("a webhook body declaring a Content-Length over 1 MiB is 413 payload_too_large before any byte is read", () =>
  withWebhook(async (f) => {
    const before = await f.eventRows();
    const stream = countedBody(2 * MIB);
    const response = await f.webhook(
      await withBody(stream.body, { "content-length": String(2 * MIB) }),
    );
    assert.equal(response.status, 413);
    const body = await response.json();
    assert.deepEqual(Object.keys(body.error).sort(), ["code", "message"]);
    assert.equal(body.error.code, "payload_too_large");
    assert.equal(stream.pulled(), 0, "the declared length alone refuses it");
    assert.equal(await f.eventRows(), before, "nothing written");
  }));

Deno.test("a validly signed event of exactly 1 MiB is processed; one byte more, or 1 MiB of characters over 1 MiB of UTF-8, is 413", () =>
  withWebhook(async (f) => {
    const { orderId, sessionId } = await f.checkout();
    const session = f.h.stripe.completeSession(sessionId);
    const event = sessionEvent("checkout.session.completed", session);
    const bytes = (text: string) => new TextEncoder().encode(text).byteLength;
    // Trailing whitespace is still JSON, and Stripe signs the exact bytes, padding included.
    const padded = (size: number) => event + " ".repeat(size - bytes(event));
    const before = await f.eventRows();

    const tooLarge = await f.webhook(await signedDelivery(padded(MIB + 1)));
    assert.equal(tooLarge.status, 413, "1 MiB + 1 byte");
    assert.equal((await tooLarge.json()).error.code, "payload_too_large");
    // Under 1 MiB in UTF-16 code units, over it in bytes: the limit counts bytes.
    const wide = sessionEvent(
      "checkout.session.completed",
      {
        ...session,
        customer_details: { name: "é".repeat(MIB / 2 + 1) },
      } as typeof session,
    );
    assert.ok(wide.length < MIB && bytes(wide) > MIB);
    const wideResponse = await f.webhook(await signedDelivery(wide));
    assert.equal(wideResponse.status, 413, "multibyte characters over 1 MiB");
    assert.equal(await f.eventRows(), before, "refused bodies wrote nothing");

    const atLimit = padded(MIB);
    assert.equal(bytes(atLimit), MIB);
    assert.deepEqual(await deliver(f, atLimit), { status: 200, outcome: "paid" });
    assert.equal((await f.order(orderId)).status, "paid");
    assert.equal(await f.eventRows(), before + 1);
  }));
