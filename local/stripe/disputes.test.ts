/**
 * Disputes on the local Stripe server: `server.disputePayment` opens one on a paid session's
 * charge, a signed `charge.dispute.created` carries the Dispute, and the charge can no longer be
 * refunded (400 `charge_disputed`), seen through the project's own Stripe client.
 */
import assert from "node:assert/strict";
import {
  isStripeError,
  paidSession,
  responseHeader,
  startWebhookReceiver,
  withLocalStripe,
} from "./test-support.ts";
import { createStripeClient, Stripe } from "../../supabase/functions/_shared/stripe.ts";
import { createWebhookForwarder, type StripeServer, type StripeServerOptions } from "./mod.ts";

const WEBHOOK_SECRET = "whsec_local_disputes_test";

function withServer(
  run: (server: StripeServer, stripe: Stripe) => Promise<void>,
  options: StripeServerOptions = {},
): Promise<void> {
  return withLocalStripe(
    run,
    options,
    (server) =>
      createStripeClient("sk_test_local", { apiBase: new URL(server.url), maxNetworkRetries: 0 }),
  );
}

Deno.test("disputePayment opens a needs_response Dispute and forwards a signed charge.dispute.created", async () => {
  await using receiver = startWebhookReceiver(WEBHOOK_SECRET);
  const forward = createWebhookForwarder({
    url: receiver.url,
    secret: WEBHOOK_SECRET,
    log: () => {},
  });
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    await receiver.waitFor(1);
    const charge = [...server.charges.values()][0]!;
    assert.equal(charge.disputed, false);

    const before = Math.floor(Date.now() / 1000);
    const dispute = server.disputePayment(paymentIntent);
    assert.match(dispute.id, /^dp_[A-Za-z0-9]{24}$/);
    assert.deepEqual(
      {
        object: dispute.object,
        amount: dispute.amount,
        currency: dispute.currency,
        charge: dispute.charge,
        payment_intent: dispute.payment_intent,
        reason: dispute.reason,
        status: dispute.status,
        livemode: dispute.livemode,
        metadata: dispute.metadata,
        is_charge_refundable: dispute.is_charge_refundable,
      },
      {
        object: "dispute",
        amount: 5000,
        currency: "usd",
        charge: charge.id,
        payment_intent: paymentIntent,
        reason: "fraudulent",
        status: "needs_response",
        livemode: false,
        metadata: {},
        is_charge_refundable: false,
      },
    );
    assert.ok(dispute.created >= before);
    assert.equal(server.charges.get(charge.id)?.disputed, true);
    assert.deepEqual(server.disputes.get(dispute.id), dispute);

    await receiver.waitFor(2);
    const event = receiver.events[1]!;
    assert.equal(event.type, "charge.dispute.created");
    assert.equal(event.api_version, "2026-10-28.endive");
    const object = event.data.object as Stripe.Dispute;
    assert.deepEqual(object, dispute);
    assert.equal(object.evidence_details.has_evidence, false);
    assert.ok((object.evidence_details.due_by ?? 0) > object.created);
    // A bank opened it, not an API request.
    assert.deepEqual(event.request, { id: null, idempotency_key: null });
  }, { onEvent: forward });
});

Deno.test("a disputed charge is not refundable: 400 charge_disputed, saved under its key", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const early = await stripe.refunds.create({ payment_intent: paymentIntent, amount: 1000 }, {
      idempotencyKey: "refund:before-dispute",
    });
    const dispute = server.disputePayment(paymentIntent, {
      amount: 4000,
      reason: "product_not_received",
    });
    assert.deepEqual([dispute.amount, dispute.reason], [4000, "product_not_received"]);

    const refund = () =>
      stripe.refunds.create({ payment_intent: paymentIntent }, { idempotencyKey: "refund:late" });
    const disputed = (replayed: boolean) =>
      isStripeError(Stripe.errors.StripeInvalidRequestError, (error) => {
        assert.equal(error.statusCode, 400);
        assert.equal(error.code, "charge_disputed");
        assert.match(error.message, new RegExp(`^Charge ${early.charge} has been charged back`));
        assert.equal(error.headers?.["idempotent-replayed"] === "true", replayed);
      });
    await assert.rejects(refund(), disputed(false));
    await assert.rejects(refund(), disputed(true));
    await assert.rejects(
      stripe.refunds.create({ charge: early.charge as string }, { idempotencyKey: "by-charge" }),
      disputed(false),
    );
    assert.equal(server.refundsCreated(), 1);
    assert.equal(server.refundedAmount(paymentIntent), 1000);
    // The refund made before the dispute is still there, and retrying its key replays it.
    const again = await stripe.refunds.create({ payment_intent: paymentIntent, amount: 1000 }, {
      idempotencyKey: "refund:before-dispute",
    });
    assert.equal(again.id, early.id);
    assert.equal(responseHeader(again, "idempotent-replayed"), "true");
    const list = await stripe.refunds.list({ payment_intent: paymentIntent });
    assert.deepEqual(list.data.map((r) => r.id), [early.id]);
  });
});

Deno.test("disputePayment refuses an unknown intent, a second dispute and amounts off the charge", async () => {
  const types: string[] = [];
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    assert.throws(() => server.disputePayment("pi_unknown"), /no such payment_intent/);
    assert.throws(() => server.disputePayment(paymentIntent, { amount: 0 }), /amount must be/);
    assert.throws(() => server.disputePayment(paymentIntent, { amount: 5001 }), /1\.\.5000/);
    assert.throws(() => server.disputePayment(paymentIntent, { amount: 1.5 }), /amount must be/);
    server.disputePayment(paymentIntent);
    assert.throws(() => server.disputePayment(paymentIntent), /already disputed/);
    assert.equal(server.disputes.size, 1);

    server.reset();
    assert.equal(server.disputes.size, 0);
  }, { onEvent: (_object, type) => types.push(type) });
  assert.deepEqual(types, ["checkout.session.completed", "charge.dispute.created"]);
});
