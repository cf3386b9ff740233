/**
 * Refunds on the local Stripe server, driven through the project's own Stripe client
 * (createStripeClient: fetch HTTP client, pinned API version) pointed at the server, with
 * explicit idempotency keys; webhooks verified the way stripe-webhook verifies them.
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

const WEBHOOK_SECRET = "whsec_local_refunds_test";

/** The project's client against `server`; no retries unless asked, so each answer is seen. */
function stripeFor(server: StripeServer, maxNetworkRetries = 0): Stripe {
  return createStripeClient("sk_test_local", {
    apiBase: new URL(server.url),
    maxNetworkRetries,
  });
}

function withServer(
  run: (server: StripeServer, stripe: Stripe) => Promise<void>,
  options: StripeServerOptions = {},
): Promise<void> {
  return withLocalStripe(run, options, (server) => stripeFor(server));
}

function invalidRequest(
  expected: { code?: string; param?: string; message?: RegExp; replayed?: boolean },
): (error: unknown) => boolean {
  return isStripeError(Stripe.errors.StripeInvalidRequestError, (error) => {
    assert.equal(error.statusCode, 400);
    if (expected.code) assert.equal(error.code, expected.code);
    if (expected.param) assert.equal(error.param, expected.param);
    if (expected.message) assert.match(error.message, expected.message);
    if (expected.replayed !== undefined) {
      assert.equal(error.headers?.["idempotent-replayed"] === "true", expected.replayed);
    }
  });
}

Deno.test("refunds a paid session in full by payment_intent: a Refund shaped like Stripe's", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const charge = [...server.charges.values()][0];
    assert.deepEqual(
      [charge?.payment_intent, charge?.amount, charge?.currency, charge?.amount_refunded],
      [paymentIntent, 5000, "usd", 0],
    );
    const before = Math.floor(Date.now() / 1000);
    const refund = await stripe.refunds.create({
      payment_intent: paymentIntent,
      reason: "requested_by_customer",
      metadata: { order_id: "order_1" },
    }, { idempotencyKey: "refund:order_1:1" });
    assert.match(refund.id, /^re_[A-Za-z0-9]{24}$/);
    assert.equal(refund.object, "refund");
    assert.deepEqual(
      [refund.amount, refund.currency, refund.status, refund.reason],
      [5000, "usd", "succeeded", "requested_by_customer"],
    );
    assert.equal(refund.payment_intent, paymentIntent);
    assert.equal(refund.charge, charge?.id);
    assert.match(String(refund.charge), /^ch_/);
    assert.deepEqual(refund.metadata, { order_id: "order_1" });
    assert.ok(refund.created >= before);
    assert.equal(responseHeader(refund, "idempotent-replayed"), null);

    assert.equal(server.refundedAmount(paymentIntent), 5000);
    assert.equal(server.charges.get(String(refund.charge))?.refunded, true);
    assert.equal(server.refundsCreated(), 1);
    const fetched = await stripe.refunds.retrieve(refund.id);
    assert.deepEqual({ ...fetched, lastResponse: null }, { ...refund, lastResponse: null });
    assert.throws(() => server.refundedAmount("pi_unknown"), /no such payment_intent/);
  });
});

Deno.test("partial refunds add up to the charge; then 400 charge_already_refunded, saved under its key", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const first = await stripe.refunds.create({ payment_intent: paymentIntent, amount: 2000 }, {
      idempotencyKey: "r-1",
    });
    assert.equal(server.charges.get(String(first.charge))?.refunded, false);
    // The rest, by charge id and without an amount: all that is left.
    const rest = await stripe.refunds.create({ charge: String(first.charge) }, {
      idempotencyKey: "r-2",
    });
    assert.deepEqual([first.amount, rest.amount], [2000, 3000]);
    assert.equal(server.refundedAmount(paymentIntent), 5000);

    const again = () =>
      stripe.refunds.create({ payment_intent: paymentIntent, amount: 1 }, {
        idempotencyKey: "r-3",
      });
    const charge = String(first.charge);
    await assert.rejects(
      again(),
      invalidRequest({
        code: "charge_already_refunded",
        message: new RegExp(`^Charge ${charge} has already been refunded\\.$`),
        replayed: false,
      }),
    );
    // The endpoint ran and refused: a retry with the key gets the same answer, replayed.
    await assert.rejects(
      again(),
      invalidRequest({ code: "charge_already_refunded", replayed: true }),
    );
    assert.equal(server.refundsCreated(), 2);
    assert.equal(server.refundedAmount(paymentIntent), 5000);
  });
});

Deno.test("an amount above what is left is a 400 amount_too_large on param amount; nothing refunded", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    await assert.rejects(
      stripe.refunds.create({ payment_intent: paymentIntent, amount: 6000 }, {
        idempotencyKey: "too-much-1",
      }),
      invalidRequest({
        code: "amount_too_large",
        param: "amount",
        message: /^Refund amount \(\$60\.00\) is greater than charge amount \(\$50\.00\)$/,
      }),
    );
    await stripe.refunds.create({ payment_intent: paymentIntent, amount: 2000 }, {
      idempotencyKey: "some",
    });
    await assert.rejects(
      stripe.refunds.create({ payment_intent: paymentIntent, amount: 3001 }, {
        idempotencyKey: "too-much-2",
      }),
      invalidRequest({
        code: "amount_too_large",
        message: /\(\$30\.01\) is greater than unrefunded amount on charge \(\$30\.00\)$/,
      }),
    );
    assert.equal(server.refundedAmount(paymentIntent), 2000);
    assert.equal(server.refundsCreated(), 1);
  });
});

Deno.test("validates refund parameters with a param, unsaved: the key works once they are fixed", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const key = { idempotencyKey: "r-validate" };
    const cases: [Stripe.RefundCreateParams, { code: string; param: string }][] = [
      [{}, { code: "parameter_missing", param: "payment_intent" }],
      [
        { payment_intent: paymentIntent, charge: "ch_x" },
        { code: "parameters_exclusive", param: "payment_intent" },
      ],
      [{ payment_intent: paymentIntent, amount: 0 }, {
        code: "parameter_invalid_integer",
        param: "amount",
      }],
      [{ payment_intent: paymentIntent, amount: -5 }, {
        code: "parameter_invalid_integer",
        param: "amount",
      }],
      [
        { payment_intent: paymentIntent, reason: "changed_mind" as "duplicate" },
        { code: "parameter_invalid_enum", param: "reason" },
      ],
      [{ payment_intent: "pi_missing" }, { code: "resource_missing", param: "payment_intent" }],
      [{ charge: "ch_missing" }, { code: "resource_missing", param: "charge" }],
      [
        { payment_intent: paymentIntent, ...{ bogus: "1" } },
        { code: "parameter_unknown", param: "bogus" },
      ],
    ];
    for (const [params, expected] of cases) {
      await assert.rejects(stripe.refunds.create(params, key), invalidRequest(expected));
    }
    assert.equal(server.refundsCreated(), 0);
    const refund = await stripe.refunds.create({ payment_intent: paymentIntent }, key);
    assert.equal(refund.amount, 5000);
  });
});

Deno.test("replays a retried refund with the same key: same refund, Idempotent-Replayed, no second refund", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const params = { payment_intent: paymentIntent, amount: 1500 };
    const first = await stripe.refunds.create(params, { idempotencyKey: "refund:k-1" });
    const again = await stripe.refunds.create(params, { idempotencyKey: "refund:k-1" });
    assert.equal(again.id, first.id);
    assert.equal(responseHeader(again, "idempotent-replayed"), "true");
    assert.equal(responseHeader(again, "original-request"), first.lastResponse.requestId);
    assert.equal(server.refundsCreated(), 1);
    assert.equal(server.refundedAmount(paymentIntent), 1500);
  });
});

Deno.test("the same key with other refund parameters is a 400 StripeIdempotencyError", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    await stripe.refunds.create({ payment_intent: paymentIntent, amount: 1000 }, {
      idempotencyKey: "refund:k-2",
    });
    await assert.rejects(
      stripe.refunds.create({ payment_intent: paymentIntent, amount: 2000 }, {
        idempotencyKey: "refund:k-2",
      }),
      isStripeError(Stripe.errors.StripeIdempotencyError, (error) => {
        assert.equal(error.statusCode, 400);
        assert.equal((error.raw as { type?: string }).type, "idempotency_error");
      }),
    );
    assert.equal(server.refundsCreated(), 1);
    assert.equal(server.refundedAmount(paymentIntent), 1000);
  });
});

Deno.test("two concurrent refunds with one key: one refund, one 409 idempotency_key_in_use", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    server.faults.push({ kind: "latency", ms: 300, method: "POST", path: "/v1/refunds" });
    const create = () =>
      stripe.refunds.create({ payment_intent: paymentIntent }, { idempotencyKey: "refund:race" });
    const results = await Promise.allSettled([create(), create()]);
    const created = results.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
    const refused = results.flatMap((r) => r.status === "rejected" ? [r.reason] : []);
    assert.deepEqual([created.length, refused.length], [1, 1]);
    isStripeError(Stripe.errors.StripeAPIError, (error) => {
      assert.equal(error.statusCode, 409);
      assert.equal(error.code, "idempotency_key_in_use");
    })(refused[0]);
    assert.equal(server.refundsCreated(), 1);
    // The 409 was not saved: the retry replays the one refund.
    const retry = await create();
    assert.equal(retry.id, created[0]?.id);
    assert.equal(responseHeader(retry, "idempotent-replayed"), "true");
    assert.equal(server.refundedAmount(paymentIntent), 5000);
  });
});

Deno.test("with the project's one SDK retry, concurrent same-key refunds both get the one refund", async () => {
  await withServer(async (server) => {
    const stripe = stripeFor(server, 1);
    const paymentIntent = await paidSession(server, stripe);
    server.faults.push({ kind: "latency", ms: 300, path: "/v1/refunds" });
    const create = () =>
      stripe.refunds.create({ payment_intent: paymentIntent }, { idempotencyKey: "refund:sdk" });
    const [a, b] = await Promise.all([create(), create()]);
    assert.equal(a.id, b.id);
    assert.equal(server.refundsCreated(), 1);
    assert.deepEqual(
      server.requests.filter((r) => r.path === "/v1/refunds").map((r) => r.status).sort(),
      [200, 200, 409],
    );
  });
});

Deno.test("GET /v1/refunds/:id: an unknown id is 404 resource_missing", async () => {
  await withServer(async (_server, stripe) => {
    await assert.rejects(
      stripe.refunds.retrieve("re_missing"),
      isStripeError(Stripe.errors.StripeInvalidRequestError, (error) => {
        assert.equal(error.statusCode, 404);
        assert.equal(error.code, "resource_missing");
        assert.match(error.message, /No such refund: 're_missing'/);
      }),
    );
  });
});

Deno.test("faults reach the refund routes: a dropped answer's refund exists, the retry returns it", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const params = { payment_intent: paymentIntent, amount: 1200 };
    // Stripe refunded, the answer never arrived (the crash between Stripe and the record). On
    // a reused keep-alive connection Deno's fetch resends the POST once, which the key replays;
    // otherwise the SDK sees the connection error.
    server.faults.push({ kind: "reset_after", path: "/v1/refunds" });
    const [lostCall] = await Promise.allSettled([
      stripe.refunds.create(params, { idempotencyKey: "refund:lost" }),
    ]);
    if (lostCall?.status === "rejected") {
      isStripeError(Stripe.errors.StripeConnectionError)(lostCall.reason);
    } else {
      assert.equal(lostCall && responseHeader(lostCall.value, "idempotent-replayed"), "true");
    }
    assert.equal(server.refundsCreated(), 1);
    const [lost] = server.refunds.keys();
    const retry = await stripe.refunds.create(params, { idempotencyKey: "refund:lost" });
    assert.equal(retry.id, lost);
    assert.equal(responseHeader(retry, "idempotent-replayed"), "true");

    // A saved 500 is replayed; GET sees faults too.
    server.faults.push({ kind: "status", status: 500, storeUnderKey: true, path: "/v1/refunds" });
    const failing = () => stripe.refunds.create(params, { idempotencyKey: "refund:500" });
    await assert.rejects(failing(), isStripeError(Stripe.errors.StripeAPIError));
    await assert.rejects(
      failing(),
      isStripeError(
        Stripe.errors.StripeAPIError,
        (e) => assert.equal(e.headers?.["idempotent-replayed"], "true"),
      ),
    );
    server.faults.push({ kind: "status", status: 503, method: "GET", path: /^\/v1\/refunds\// });
    await assert.rejects(
      stripe.refunds.retrieve(retry.id),
      isStripeError(Stripe.errors.StripeAPIError),
    );
    assert.equal(server.refundsCreated(), 1);
    assert.equal(server.refundedAmount(paymentIntent), 1200);

    server.reset();
    assert.deepEqual([server.refunds.size, server.charges.size, server.refundsCreated()], [
      0,
      0,
      0,
    ]);
  });
});

/** The one event of `type` among `events` (forwarded concurrently, they may arrive in any order). */
function eventOf(events: Stripe.Event[], type: string): Stripe.Event {
  const found = events.filter((event) => event.type === type);
  assert.equal(found.length, 1, `one ${type} in ${events.map((event) => event.type)}`);
  return found[0]!;
}

Deno.test("forwards a signed refund.created and charge.refunded for each refund, none for a replay", async () => {
  await using receiver = startWebhookReceiver(WEBHOOK_SECRET);
  const forward = createWebhookForwarder({
    url: receiver.url,
    secret: WEBHOOK_SECRET,
    log: () => {},
  });
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    await receiver.waitFor(1);
    assert.equal(receiver.events[0]?.type, "checkout.session.completed");

    const first = await stripe.refunds.create({ payment_intent: paymentIntent, amount: 2000 }, {
      idempotencyKey: "refund:hook-1",
    });
    await receiver.waitFor(3);
    const created = eventOf(receiver.events.slice(1), "refund.created");
    assert.equal(created.api_version, "2026-10-28.endive");
    const refund = created.data.object as Stripe.Refund;
    assert.deepEqual({ ...refund, lastResponse: null }, { ...first, lastResponse: null });
    assert.equal(created.data.previous_attributes, undefined);
    assert.equal(created.request?.idempotency_key, "refund:hook-1");
    assert.equal(created.request?.id, first.lastResponse.requestId);

    const event = eventOf(receiver.events.slice(1), "charge.refunded");
    assert.equal(event.api_version, "2026-10-28.endive");
    const charge = event.data.object as Stripe.Charge;
    assert.equal(charge.object, "charge");
    assert.equal(charge.id, first.charge);
    assert.deepEqual(
      [charge.payment_intent, charge.amount, charge.amount_refunded, charge.refunded],
      [paymentIntent, 5000, 2000, false],
    );
    // As since API version 2022-11-15, the Charge does not embed its refunds.
    assert.equal(charge.refunds, undefined);
    assert.deepEqual(event.data.previous_attributes, { amount_refunded: 0 });
    assert.equal(event.request?.idempotency_key, "refund:hook-1");
    assert.equal(event.request?.id, first.lastResponse.requestId);

    await stripe.refunds.create({ payment_intent: paymentIntent, amount: 2000 }, {
      idempotencyKey: "refund:hook-1",
    });
    const rest = await stripe.refunds.create({ payment_intent: paymentIntent }, {
      idempotencyKey: "refund:hook-2",
    });
    await receiver.waitFor(5);
    const later = receiver.events.slice(3);
    assert.equal((eventOf(later, "refund.created").data.object as Stripe.Refund).id, rest.id);
    const last = eventOf(later, "charge.refunded");
    const lastCharge = last.data.object as Stripe.Charge;
    assert.deepEqual([lastCharge.amount_refunded, lastCharge.refunded], [5000, true]);
    assert.deepEqual(last.data.previous_attributes, { amount_refunded: 2000, refunded: false });
  }, { onEvent: forward });
});

Deno.test("refundStatus pending: counted at once; settleRefund emits refund.updated (and refund.failed), a failure gives the amount back", async () => {
  const events: { type: string; object: Record<string, unknown>; previous?: unknown }[] = [];
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const refund = await stripe.refunds.create({ payment_intent: paymentIntent }, {
      idempotencyKey: "refund:pending",
    });
    assert.equal(refund.status, "pending");
    assert.equal(server.refundedAmount(paymentIntent), 5000);
    await assert.rejects(
      stripe.refunds.create({ payment_intent: paymentIntent }, { idempotencyKey: "refund:more" }),
      invalidRequest({ code: "charge_already_refunded" }),
    );

    const failed = server.settleRefund(refund.id, "failed");
    assert.deepEqual([failed.status, failed.failure_reason], [
      "failed",
      "expired_or_canceled_card",
    ]);
    assert.equal((await stripe.refunds.retrieve(refund.id)).status, "failed");
    assert.equal(server.refundedAmount(paymentIntent), 0);
    assert.equal(server.charges.get(refund.charge as string)?.refunded, false);
    assert.throws(() => server.settleRefund(refund.id, "succeeded"), /status is failed/);

    const retried = await stripe.refunds.create({ payment_intent: paymentIntent }, {
      idempotencyKey: "refund:pending-2",
    });
    assert.equal(server.settleRefund(retried.id, "succeeded").status, "succeeded");
    assert.equal(server.refundedAmount(paymentIntent), 5000);
  }, {
    refundStatus: "pending",
    onEvent: (object, type, context) =>
      events.push({ type, object: object as never, previous: context.previousAttributes }),
  });
  assert.deepEqual(events.map((e) => e.type), [
    "checkout.session.completed",
    "refund.created",
    "charge.refunded",
    "refund.updated",
    "refund.failed",
    "refund.created",
    "charge.refunded",
    "refund.updated",
  ]);
  assert.deepEqual([events[1]?.object.status, events[1]?.previous], ["pending", undefined]);
  assert.deepEqual(
    [events[3]?.object.status, events[3]?.previous],
    ["failed", { status: "pending", failure_balance_transaction: null, failure_reason: null }],
  );
  assert.deepEqual([events[4]?.object.status, events[4]?.previous], ["failed", undefined]);
  assert.equal(events[4]?.object.id, events[3]?.object.id);
  assert.deepEqual([events[7]?.object.status, events[7]?.previous], ["succeeded", {
    status: "pending",
  }]);
});
