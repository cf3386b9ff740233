/**
 * stripe-webhook and refunds, over the real handler with signed deliveries of the events the
 * local Stripe server emits: refund states move forward only (out of order, twice), a failed
 * refund gives its reservation back, charge.refunded lists the charge's refunds from Stripe (a
 * Dashboard refund joins its order; Stripe unreachable is a 503 that stores nothing), an event
 * early for its attempt is a 500 that a redelivery applies, and a dispute is recorded.
 */
import assert from "node:assert/strict";
import type { StripeServerOptions } from "../local/stripe/mod.ts";
import { stripeEvent } from "../local/stripe/mod.ts";
import { createWebhookHandler } from "../supabase/functions/_shared/webhook.ts";
import { type Harness, withHarness } from "./support/checkout-harness.ts";
import { orderRefunds, paidOrder, refundHandler, refundRequest } from "./support/refund-harness.ts";
import { signedDelivery, TEST_WEBHOOK_SECRET } from "./support/webhooks.ts";

/** One event the local Stripe server emitted, as Stripe would send it. */
interface Emitted {
  type: string;
  objectId: string;
  payload: string;
}

interface Fixture {
  h: Harness;
  /** The server's options; a test may change `refundStatus` while it runs. */
  stripeOptions: StripeServerOptions;
  webhook: (request: Request) => Promise<Response>;
  logs: Record<string, unknown>[];
  /** Every event the server emitted, oldest first. */
  emitted: Emitted[];
}

function withRefundWebhook(
  fn: (f: Fixture) => Promise<void>,
  refundStatus: "succeeded" | "pending" = "succeeded",
): Promise<void> {
  const emitted: Emitted[] = [];
  const stripeOptions: StripeServerOptions = {
    refundStatus,
    onEvent: (object, type, context) => {
      emitted.push({ type, objectId: object.id, payload: stripeEvent(object, type, context) });
    },
  };
  return withHarness(async (h) => {
    const logs: Record<string, unknown>[] = [];
    const webhook = createWebhookHandler({
      sql: h.sql,
      stripe: h.stripeClient,
      webhookSecret: TEST_WEBHOOK_SECRET,
      log: (line) => logs.push(line),
    });
    await fn({ h, stripeOptions, webhook, logs, emitted });
  }, { stripeOptions });
}

/** The last event of `type` about `objectId` the server emitted. */
function emittedEvent(f: Fixture, type: string, objectId: string): string {
  const event = f.emitted.findLast((e) => e.type === type && e.objectId === objectId);
  if (!event) throw new Error(`the server emitted no ${type} for ${objectId}`);
  return event.payload;
}

async function deliver(f: Fixture, payload: string): Promise<{ status: number; outcome?: string }> {
  const response = await f.webhook(await signedDelivery(payload));
  const body = await response.json();
  return { status: response.status, outcome: body.outcome ?? body.error?.code };
}

async function refundRow(f: Fixture, stripeRefundId: string) {
  const [row] = await f.h.sql<
    {
      status: string;
      source: string;
      amount: number;
      operation_id: string | null;
      last_error: string | null;
    }[]
  >`
    select status, source, amount, operation_id, last_error from public.refunds
    where stripe_refund_id = ${stripeRefundId}`;
  return row;
}

async function storedEvent(f: Fixture, payload: string) {
  const [row] = await f.h.sql<
    { processed_at: Date | null; attempts: number; last_error: string | null }[]
  >`
    select processed_at, attempts, last_error from public.stripe_webhook_events
    where stripe_event_id = ${JSON.parse(payload).id}`;
  return row;
}

Deno.test("refund webhook: refund.updated pending → succeeded is applied and logged; the order becomes refunded", () =>
  withRefundWebhook(async (f) => {
    const paid = await paidOrder(f.h);
    const response = await refundHandler(f.h)(refundRequest({ orderId: paid.orderId }));
    assert.equal(response.status, 201);
    const made = await response.json();
    assert.deepEqual([made.status, made.orderStatus], ["pending", "paid"]);
    assert.deepEqual(await orderRefunds(f.h, paid.orderId), {
      status: "paid",
      amountRefunded: 0,
      reserved: paid.amount,
      rows: 1,
    });

    f.h.stripe.settleRefund(made.refundId, "succeeded");
    const updated = emittedEvent(f, "refund.updated", made.refundId);
    assert.deepEqual(await deliver(f, updated), { status: 200, outcome: "refund" });
    assert.equal((await refundRow(f, made.refundId))?.status, "succeeded");
    assert.deepEqual(await orderRefunds(f.h, paid.orderId), {
      status: "refunded",
      amountRefunded: paid.amount,
      reserved: paid.amount,
      rows: 1,
    });
    const line = f.logs.at(-1)!;
    assert.deepEqual(
      [line.fn, line.status, line.outcome, line.order, line.type],
      ["stripe-webhook", 200, "refund", paid.orderId, "refund.updated"],
    );
  }, "pending"));

Deno.test("refund webhook: delivered out of order and twice, a refund only moves forward; the duplicate is acknowledged", () =>
  withRefundWebhook(async (f) => {
    const paid = await paidOrder(f.h);
    const response = await refundHandler(f.h)(
      refundRequest({ orderId: paid.orderId, amount: 1000 }),
    );
    assert.equal(response.status, 201);
    const made = await response.json();
    const created = emittedEvent(f, "refund.created", made.refundId); // status pending
    f.h.stripe.settleRefund(made.refundId, "succeeded");
    const succeeded = emittedEvent(f, "refund.updated", made.refundId);
    assert.equal(JSON.parse(succeeded).data.object.status, "succeeded");
    assert.equal(JSON.parse(created).data.object.status, "pending");

    assert.deepEqual(await deliver(f, succeeded), { status: 200, outcome: "refund" });
    assert.deepEqual(await deliver(f, created), { status: 200, outcome: "noop" }, "older word");
    assert.deepEqual(await deliver(f, succeeded), { status: 200, outcome: "duplicate" });
    // charge.refunded: the handler lists the charge's refunds, which say nothing new.
    const chargeId = JSON.parse(created).data.object.charge;
    assert.deepEqual(await deliver(f, emittedEvent(f, "charge.refunded", chargeId)), {
      status: 200,
      outcome: "noop",
    });
    assert.equal((await refundRow(f, made.refundId))?.status, "succeeded");
    assert.deepEqual(await orderRefunds(f.h, paid.orderId), {
      status: "partially_refunded",
      amountRefunded: 1000,
      reserved: 1000,
      rows: 1,
    });
  }, "pending"));

Deno.test("refund webhook: refund.failed gives the reservation back; a new refund of the same amount then succeeds", () =>
  withRefundWebhook(async (f) => {
    const paid = await paidOrder(f.h);
    const refund = refundHandler(f.h);
    const first = await refund(refundRequest({ orderId: paid.orderId }));
    assert.equal(first.status, 201);
    const made = await first.json();
    assert.equal(made.status, "pending");
    const held = await refund(refundRequest({ orderId: paid.orderId, amount: paid.amount }));
    assert.equal(held.status, 409, "the pending refund holds the whole amount");
    assert.equal((await held.json()).error.code, "refund_exceeds_amount");

    f.h.stripe.settleRefund(made.refundId, "failed");
    assert.deepEqual(await deliver(f, emittedEvent(f, "refund.failed", made.refundId)), {
      status: 200,
      outcome: "refund",
    });
    const row = await refundRow(f, made.refundId);
    assert.deepEqual([row?.status, row?.last_error], ["failed", "expired_or_canceled_card"]);
    assert.deepEqual(await orderRefunds(f.h, paid.orderId), {
      status: "paid",
      amountRefunded: 0,
      reserved: 0,
      rows: 1,
    });
    assert.deepEqual(await deliver(f, emittedEvent(f, "refund.updated", made.refundId)), {
      status: 200,
      outcome: "noop",
    });

    f.stripeOptions.refundStatus = "succeeded";
    const again = await refund(refundRequest({ orderId: paid.orderId, amount: paid.amount }));
    assert.equal(again.status, 201);
    const second = await again.json();
    assert.notEqual(second.refundId, made.refundId);
    assert.deepEqual([second.status, second.orderStatus], ["succeeded", "refunded"]);
    assert.equal(f.h.stripe.refundedAmount(paid.paymentIntent), paid.amount);
    assert.deepEqual(await orderRefunds(f.h, paid.orderId), {
      status: "refunded",
      amountRefunded: paid.amount,
      reserved: paid.amount,
      rows: 2,
    });
  }, "pending"));

Deno.test("refund webhook: charge.refunded for a Dashboard refund lists the charge's refunds and adds it to the order; Stripe unreachable is 503 and stores nothing", () =>
  withRefundWebhook(async (f) => {
    const paid = await paidOrder(f.h);
    // Made outside the project (the Dashboard): no reservation, no metadata.
    const outside = await f.h.stripeClient.refunds.create({
      payment_intent: paid.paymentIntent,
      amount: 500,
    });
    const chargeRefunded = emittedEvent(f, "charge.refunded", String(outside.charge));
    assert.equal(JSON.parse(chargeRefunded).data.object.refunds, undefined, "not embedded");

    for (let i = 0; i < 3; i++) {
      f.h.stripe.faults.push({ kind: "reset_before", method: "GET", path: "/v1/refunds" });
    }
    assert.deepEqual(await deliver(f, chargeRefunded), {
      status: 503,
      outcome: "payment_provider_unavailable",
    });
    assert.equal(
      await storedEvent(f, chargeRefunded),
      undefined,
      "not stored, let alone processed",
    );
    assert.equal((await orderRefunds(f.h, paid.orderId)).rows, 0);
    f.h.stripe.faults.length = 0;

    const lists = () =>
      f.h.stripe.requests.filter((r) => r.method === "GET" && r.path === "/v1/refunds").length;
    const listed = lists();
    assert.deepEqual(await deliver(f, chargeRefunded), { status: 200, outcome: "refund" });
    assert.equal(lists(), listed + 1, "the redelivery asked Stripe for the charge's refunds");
    assert.deepEqual(
      { ...(await refundRow(f, outside.id)) },
      {
        status: "succeeded",
        source: "stripe",
        amount: 500,
        operation_id: null,
        last_error: null,
      },
    );
    assert.deepEqual(await orderRefunds(f.h, paid.orderId), {
      status: "partially_refunded",
      amountRefunded: 500,
      reserved: 500,
      rows: 1,
    });
    assert.ok((await storedEvent(f, chargeRefunded))?.processed_at);
    assert.deepEqual(await deliver(f, chargeRefunded), { status: 200, outcome: "duplicate" });
    assert.deepEqual(await deliver(f, emittedEvent(f, "refund.created", outside.id)), {
      status: 200,
      outcome: "noop",
    });

    // What is left to refund counts the Dashboard's refund.
    const rest = await refundHandler(f.h)(refundRequest({ orderId: paid.orderId }));
    assert.equal(rest.status, 201);
    const body = await rest.json();
    assert.deepEqual([body.amount, body.orderStatus], [paid.amount - 500, "refunded"]);
    assert.equal(f.h.stripe.refundedAmount(paid.paymentIntent), paid.amount);
  }));

Deno.test("refund webhook: an event for a refund whose attempt is not recorded yet is 500, stays unprocessed, and its redelivery is applied", () =>
  withRefundWebhook(async (f) => {
    const paid = await paidOrder(f.h);
    let early: { status: number; outcome?: string } | undefined;
    let earlyPayload = "";
    const refund = refundHandler(f.h, {
      wrapStore: (store) => ({
        ...store,
        // Stripe's events reach the webhook between its answer and the record.
        record: async (input) => {
          earlyPayload = emittedEvent(f, "refund.created", input.refund.id);
          early = await deliver(f, earlyPayload);
          return store.record(input);
        },
      }),
    });
    const response = await refund(refundRequest({ orderId: paid.orderId, amount: 800 }));
    assert.equal(response.status, 201);
    const made = await response.json();
    assert.deepEqual(early, { status: 500, outcome: "processing_failed" });
    const stored = await storedEvent(f, earlyPayload);
    assert.deepEqual([stored?.processed_at, stored?.attempts], [null, 1]);
    assert.match(stored?.last_error ?? "", /^RF004: /);

    assert.deepEqual(await deliver(f, earlyPayload), { status: 200, outcome: "noop" });
    assert.ok((await storedEvent(f, earlyPayload))?.processed_at);
    assert.equal((await refundRow(f, made.refundId))?.status, "succeeded");
    assert.deepEqual(await orderRefunds(f.h, paid.orderId), {
      status: "partially_refunded",
      amountRefunded: 800,
      reserved: 800,
      rows: 1,
    });
  }));

Deno.test("refund webhook: charge.dispute.created records the dispute on the order and is logged", () =>
  withRefundWebhook(async (f) => {
    const paid = await paidOrder(f.h);
    const dispute = f.h.stripe.disputePayment(paid.paymentIntent);
    const payload = emittedEvent(f, "charge.dispute.created", dispute.id);
    assert.deepEqual(await deliver(f, payload), { status: 200, outcome: "disputed" });
    const [order] = await f.h.sql<
      { status: string; stripe_dispute_id: string | null; disputed_at: Date | null }[]
    >`select status, stripe_dispute_id, disputed_at from public.orders where id = ${paid.orderId}`;
    assert.equal(order?.stripe_dispute_id, dispute.id);
    assert.ok(order?.disputed_at);
    assert.equal(order?.status, "paid", "a dispute does not change what was paid");
    const line = f.logs.at(-1)!;
    assert.deepEqual(
      [line.status, line.outcome, line.order, line.detail],
      [200, "disputed", paid.orderId, "fraudulent"],
    );
    assert.deepEqual(await deliver(f, payload), { status: 200, outcome: "duplicate" });
  }));
