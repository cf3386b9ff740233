/**
 * cancel-event against the real database and the local Stripe server through Stripe's SDK: the
 * contract (401 before the body is read, 400, 404, 200/202 shapes), checkouts refused once the
 * event is cancelled, 50 paid orders and 10 open sessions worked through by two concurrent
 * callers with crashes and a Stripe fault injected, a payment that lands during the
 * cancellation, refunds Stripe keeps refusing, and a spent time budget.
 */
import assert from "node:assert/strict";
import {
  checkoutRequest,
  guestBody,
  type Harness,
  withHarness,
} from "./support/checkout-harness.ts";
import {
  callCancel,
  type CancelAnswer,
  cancelHandler,
  cancelRequest,
  expectedBody,
  roomyEvent,
} from "./support/cancel-harness.ts";
import { paidOrder, refundHandler, refundRequest } from "./support/refund-harness.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function errorCode(response: Response): Promise<string> {
  return ((await response.json()) as { error: { code: string } }).error.code;
}

/** An open Checkout Session of `items` (guest checkout, not paid). */
async function openSession(
  h: Harness,
  extra: Record<string, unknown>,
): Promise<{ orderId: string; sessionId: string; key: string }> {
  const key = `sf-${crypto.randomUUID()}`;
  const response = await h.guest(checkoutRequest(guestBody(h, extra), { key }));
  if (response.status !== 201) throw new Error(`checkout answered ${response.status}`);
  const { orderId, sessionId } = await response.json();
  return { orderId, sessionId, key };
}

async function orderStatus(h: Harness, orderId: string): Promise<string> {
  const [row] = await h.sql<{ status: string }[]>`
    select status from public.orders where id = ${orderId}::uuid`;
  return row!.status;
}

async function eventState(
  h: Harness,
  eventId: string,
): Promise<{ status: string; reason: string | null; cancelledAt: Date | null }> {
  const [row] = await h.sql<
    { status: string; cancellation_reason: string | null; cancelled_at: Date | null }[]
  >`select status, cancellation_reason, cancelled_at from events.events where id = ${eventId}::uuid`;
  return { status: row!.status, reason: row!.cancellation_reason, cancelledAt: row!.cancelled_at };
}

Deno.test("cancel-event: only an operator credential, checked before the body is read; bad bodies are 400; an unknown event is 404; none of them writes", async () => {
  await withHarness(async (h) => {
    const cancel = cancelHandler(h);
    for (const apikey of [null, "sb_publishable_harness_0123456789abcdef", "sb_secret_wrong"]) {
      let bodyRead = false;
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          bodyRead = true;
          controller.enqueue(new TextEncoder().encode(JSON.stringify({ eventId: h.event.id })));
          controller.close();
        },
      }, { highWaterMark: 0 });
      const response = await cancel(cancelRequest(null, { apikey, rawBody: body }));
      assert.equal(response.status, 401, `apikey ${apikey}`);
      assert.equal(await errorCode(response), "unauthorized");
      assert.equal(bodyRead, false, "the body is not read before the caller is known");
    }

    const cases: [Request, number, string][] = [
      [cancelRequest({ eventId: h.event.id, extra: 1 }), 400, "validation_failed"],
      [cancelRequest({ eventId: "not-a-uuid" }), 400, "validation_failed"],
      [cancelRequest({}), 400, "validation_failed"],
      [cancelRequest({ eventId: h.event.id, reason: "" }), 400, "validation_failed"],
      [cancelRequest({ eventId: h.event.id, reason: "x".repeat(501) }), 400, "validation_failed"],
      [cancelRequest({ eventId: h.event.id, reason: 7 }), 400, "validation_failed"],
      [cancelRequest(null, { rawBody: "{not json" }), 400, "invalid_json"],
      [
        cancelRequest({ eventId: h.event.id }, { contentType: "text/plain" }),
        415,
        "unsupported_media_type",
      ],
    ];
    for (const [request, status, code] of cases) {
      const response = await cancel(request);
      assert.equal(response.status, status, code);
      assert.equal(await errorCode(response), code);
    }

    const missing = await cancel(cancelRequest({ eventId: crypto.randomUUID() }));
    assert.equal(missing.status, 404);
    const error = (await missing.json()).error;
    assert.equal(error.code, "event_not_found");
    assert.equal(error.message, "Cannot cancel event: the event does not exist");

    assert.equal((await eventState(h, h.event.id)).status, "published", "nothing was cancelled");
    assert.equal(h.stripe.requests.length, 0, "no Stripe call");
  });
});

Deno.test("cancel-event: the first call cancels, expires the open session and refunds what is left; a second call changes nothing; checkouts and retries get 409 event_cancelled", async () => {
  await withHarness(async (h) => {
    const cancel = cancelHandler(h);
    const balcony = (quantity: number) => ({ items: [{ tierId: h.event.balcony, quantity }] });
    const paid = await paidOrder(h, balcony(2));
    const partly = await paidOrder(h, balcony(3));
    const refund = refundHandler(h);
    assert.equal(
      (await refund(refundRequest({ orderId: partly.orderId, amount: 1000 }))).status,
      201,
    );
    const open = await openSession(h, balcony(1));

    const first = await cancel(
      cancelRequest({ eventId: h.event.id.toUpperCase(), reason: "Venue flooded" }),
    );
    assert.equal(first.status, 200);
    const body = await first.json();
    assert.deepEqual(
      body,
      expectedBody(h.event.id, { refunded: 2, expired: 1, failed: 0, remaining: 0 }),
    );
    assert.deepEqual(Object.keys(body), [
      "eventId",
      "status",
      "refunded",
      "expired",
      "failed",
      "remaining",
    ]);
    const cancelled = await eventState(h, h.event.id);
    assert.equal(cancelled.status, "cancelled");
    assert.equal(cancelled.reason, "Venue flooded");
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), paid.amount);
    assert.equal(h.stripe.refundedAmount(partly.paymentIntent), partly.amount, "the rest of it");
    assert.equal(
      h.stripe.refundsCreated(),
      3,
      "the operator's refund, then two for the cancellation",
    );
    assert.equal(h.stripe.sessions.get(open.sessionId)!.status, "expired");
    assert.deepEqual(
      await Promise.all([paid, partly, open].map((o) => orderStatus(h, o.orderId))),
      ["refunded", "refunded", "expired"],
    );

    const calls = h.stripe.requests.length;
    const again = await cancel(cancelRequest({ eventId: h.event.id, reason: "Another reason" }));
    assert.equal(again.status, 200);
    assert.deepEqual(await again.json(), body);
    assert.equal(h.stripe.requests.length, calls, "nothing left to ask Stripe");
    const still = await eventState(h, h.event.id);
    assert.deepEqual([still.reason, still.cancelledAt], [cancelled.reason, cancelled.cancelledAt]);

    const sessions = h.stripe.sessionsCreated();
    const fresh = await h.guest(checkoutRequest(guestBody(h, balcony(1))));
    assert.equal(fresh.status, 409);
    assert.equal(await errorCode(fresh), "event_cancelled");
    const retry = await h.guest(checkoutRequest(guestBody(h, balcony(1)), { key: open.key }));
    assert.equal(retry.status, 409, "the retry of the expired checkout opens no session");
    assert.equal(await errorCode(retry), "event_cancelled");
    assert.equal(h.stripe.sessionsCreated(), sessions, "no new session");
    assert.equal((await h.sql`select * from public.check_tier_capacity()`).length, 0);
  });
});

Deno.test("cancel-event: 50 paid orders and 10 open sessions, two concurrent callers, crashes and a Stripe 500 mid-batch: every payment refunded exactly once, every session expired", async () => {
  await withHarness(async (h) => {
    const { eventId, tierId } = await roomyEvent(h, 500);
    const items = (i: number) => ({ eventId, items: [{ tierId, quantity: 1 + (i % 4) }] });
    const paid = [];
    for (let i = 0; i < 50; i++) paid.push(await paidOrder(h, items(i)));
    const open = [];
    for (let i = 0; i < 10; i++) open.push(await openSession(h, items(i)));

    // Faults: the 7th record fails (the attempt ends its lease: taken over by the next call);
    // the 20th record fails and so does its release, as if the process died (the lease runs
    // out first); the 30th claim fails, which ends that call with a 503; one refund is answered
    // 500 by Stripe (the key is burnt: retried later with a new one).
    let records = 0;
    let claims = 0;
    let dead: string | null = null;
    let deadReleaseRefused = false;
    const cancel = cancelHandler(h, {
      leaseSeconds: 1,
      wrapStore: (store) => ({
        claim: (input) => {
          if (++claims === 30) return Promise.reject(new Error("connection lost"));
          return store.claim(input);
        },
        record: (input) => {
          records += 1;
          if (records === 7) return Promise.reject(new Error("connection lost"));
          if (records === 20) {
            dead = input.operationId;
            return Promise.reject(new Error("process died"));
          }
          return store.record(input);
        },
        release: (input) => {
          if (input.operationId !== dead || deadReleaseRefused) return store.release(input);
          deadReleaseRefused = true;
          return Promise.reject(new Error("process died"));
        },
      }),
    });
    h.stripe.faults.push({
      kind: "status",
      status: 500,
      method: "POST",
      path: "/v1/refunds",
      storeUnderKey: true,
      match: () => claims >= 12,
    });

    const request = { eventId };
    const answers: CancelAnswer[] = await Promise.all([
      callCancel(cancel, request),
      callCancel(cancel, request),
    ]);
    assert.ok(
      answers.some((a) =>
        a.status === 503 && a.body.error?.message ===
          "Cannot cancel event: the service is temporarily unavailable, call again: the cancellation resumes"
      ),
      `the crashed claim ended one call: ${JSON.stringify(answers)}`,
    );
    let last = answers.find((a) => a.status !== 503)!;
    for (let i = 0; i < 10 && last.status !== 200; i++) {
      await sleep(1_100); // the dead attempt's lease runs out
      last = await callCancel(cancel, request);
      assert.ok([200, 202].includes(last.status), JSON.stringify(last));
    }
    assert.equal(last.status, 200, JSON.stringify(last));
    assert.deepEqual(
      last.body,
      expectedBody(eventId, { refunded: 50, expired: 10, failed: 0, remaining: 0 }),
    );

    for (const order of paid) {
      assert.equal(h.stripe.refundedAmount(order.paymentIntent), order.amount, order.orderId);
      assert.equal(await orderStatus(h, order.orderId), "refunded");
    }
    assert.equal(h.stripe.refundsCreated(), 50, "one refund per payment, none twice");
    for (const order of open) {
      assert.equal(h.stripe.sessions.get(order.sessionId)!.status, "expired");
      assert.equal(await orderStatus(h, order.orderId), "expired");
    }
    const [rows] = await h.sql<{ n: number; succeeded: number; orders: number }[]>`
      select count(*)::int as n, count(*) filter (where r.status = 'succeeded')::int as succeeded,
             count(distinct r.order_id)::int as orders
      from public.refunds r join public.orders o on o.id = r.order_id
      where o.event_id = ${eventId}::uuid and r.source = 'cancellation'`;
    assert.deepEqual(rows, { n: 50, succeeded: 50, orders: 50 });

    // The dead attempt was taken over with its SAME key: Stripe replayed the refund it made.
    assert.ok(dead, "the process-death fault fired");
    const keysOf = (operationId: string) =>
      h.stripe.requests.filter((r) =>
        r.path === "/v1/refunds" && r.idempotencyKey?.startsWith(`refund:create:${operationId}:`)
      );
    const deadCalls = keysOf(dead!);
    assert.ok(deadCalls.length >= 2, "refunds.create again after the lease ran out");
    assert.equal(new Set(deadCalls.map((r) => r.idempotencyKey)).size, 1, "with the same key");
    assert.ok(deadCalls.slice(1).every((r) => r.replayed), "and Stripe replayed its refund");
    // The refund Stripe answered 500 was retried with a new key (the first one is burnt).
    const faulted = h.stripe.requests.find((r) => r.path === "/v1/refunds" && r.status === 500);
    assert.ok(faulted, "the Stripe fault fired");
    const operationId = faulted.idempotencyKey!.split(":")[2]!;
    assert.equal(new Set(keysOf(operationId).map((r) => r.idempotencyKey)).size, 2);
    assert.equal((await h.sql`select * from public.check_tier_capacity()`).length, 0);
  });
});

Deno.test("cancel-event: a payment that lands while its session is being expired becomes capacity_conflict and is refunded by the next call", async () => {
  await withHarness(async (h) => {
    const cancel = cancelHandler(h);
    const open = await openSession(h, { items: [{ tierId: h.event.balcony, quantity: 2 }] });
    const session = h.stripe.completeSession(open.sessionId); // paid at Stripe, no word to us yet

    const first = await callCancel(cancel, { eventId: h.event.id });
    assert.equal(first.status, 202);
    assert.deepEqual(
      first.body,
      expectedBody(h.event.id, { refunded: 0, expired: 0, failed: 0, remaining: 1 }),
    );
    assert.equal(await orderStatus(h, open.orderId), "capacity_conflict");

    const second = await callCancel(cancel, { eventId: h.event.id });
    assert.equal(second.status, 200);
    assert.deepEqual([second.body.refunded, second.body.remaining], [1, 0]);
    assert.equal(h.stripe.refundedAmount(session.payment_intent!), session.amount_total);
    assert.equal(await orderStatus(h, open.orderId), "refunded");
  });
});

Deno.test("cancel-event: a refund Stripe refuses is kept on its refund row and retried by later calls; after 5 refusals it is counted failed", async () => {
  await withHarness(async (h) => {
    const cancel = cancelHandler(h);
    const paid = await paidOrder(h, { items: [{ tierId: h.event.balcony, quantity: 1 }] });
    for (let i = 0; i < 5; i++) {
      h.stripe.faults.push({ kind: "status", status: 400, method: "POST", path: "/v1/refunds" });
    }
    for (let call = 1; call <= 4; call++) {
      const answer = await callCancel(cancel, { eventId: h.event.id });
      assert.equal(answer.status, 202, `call ${call}`);
      assert.deepEqual([answer.body.failed, answer.body.remaining], [0, 1]);
      const [row] = await h.sql<{ status: string; last_error: string | null }[]>`
        select status, last_error from public.refunds where order_id = ${paid.orderId}::uuid`;
      assert.equal(row!.status, "failed");
      assert.match(row!.last_error ?? "", /400/);
    }
    const fifth = await callCancel(cancel, { eventId: h.event.id });
    assert.equal(fifth.status, 200);
    assert.deepEqual(
      fifth.body,
      expectedBody(h.event.id, { refunded: 0, expired: 0, failed: 1, remaining: 0 }),
    );
    assert.equal(h.stripe.refundsCreated(), 0);
    assert.equal(await orderStatus(h, paid.orderId), "paid", "left to an operator");
  });
});

Deno.test("cancel-event: a spent time budget answers 202 in_progress with the event cancelled; the next call completes it", async () => {
  await withHarness(async (h) => {
    const balcony = { items: [{ tierId: h.event.balcony, quantity: 1 }] };
    const paid = [await paidOrder(h, balcony), await paidOrder(h, balcony)];
    const open = await openSession(h, balcony);
    const calls = h.stripe.requests.length;

    const hurried = await callCancel(cancelHandler(h, { budgetMs: 0 }), { eventId: h.event.id });
    assert.equal(hurried.status, 202);
    assert.deepEqual(
      hurried.body,
      expectedBody(h.event.id, { refunded: 0, expired: 0, failed: 0, remaining: 3 }),
    );
    assert.equal(h.stripe.requests.length, calls, "no order was started");
    assert.equal((await eventState(h, h.event.id)).status, "cancelled");
    const refused = await h.guest(checkoutRequest(guestBody(h, balcony)));
    assert.equal(await errorCode(refused), "event_cancelled");

    const rest = await callCancel(cancelHandler(h, { batchSize: 1 }), { eventId: h.event.id });
    assert.equal(rest.status, 200);
    assert.deepEqual([rest.body.refunded, rest.body.expired, rest.body.remaining], [2, 1, 0]);
    for (const order of paid) {
      assert.equal(h.stripe.refundedAmount(order.paymentIntent), order.amount);
    }
    assert.equal(await orderStatus(h, open.orderId), "expired");
  });
});
