/**
 * `GET /v1/refunds` on the local Stripe server through the project's own Stripe client: the list
 * shape, the `payment_intent`, `charge` and `created` filters, cursors both ways, the SDK's
 * auto-pagination, and Stripe's 400s for bad list parameters.
 */
import assert from "node:assert/strict";
import { isStripeError, paidSession, withLocalStripe } from "./test-support.ts";
import { createStripeClient, Stripe } from "../../supabase/functions/_shared/stripe.ts";
import type { StripeServer, StripeServerOptions } from "./mod.ts";

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

/** Refunds `amounts` one after the other on `paymentIntent`; returns their ids, oldest first. */
async function refundInTurn(
  stripe: Stripe,
  paymentIntent: string,
  amounts: number[],
): Promise<string[]> {
  const ids: string[] = [];
  for (const amount of amounts) {
    const refund = await stripe.refunds.create({ payment_intent: paymentIntent, amount }, {
      idempotencyKey: crypto.randomUUID(),
    });
    ids.push(refund.id);
  }
  return ids;
}

Deno.test("lists a payment intent's refunds newest first in Stripe's list shape; by charge too", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const other = await paidSession(server, stripe, { orderId: "order_2" });
    const ids = await refundInTurn(stripe, paymentIntent, [1000, 1500, 500]);
    const [otherRefund] = await refundInTurn(stripe, other, [700]);

    const list = await stripe.refunds.list({ payment_intent: paymentIntent });
    assert.equal(list.object, "list");
    assert.equal(list.url, "/v1/refunds");
    assert.equal(list.has_more, false);
    assert.deepEqual(list.data.map((refund) => refund.id), [...ids].reverse());
    assert.deepEqual(list.data.map((refund) => refund.amount), [500, 1500, 1000]);
    for (const refund of list.data) {
      assert.deepEqual(refund, server.refunds.get(refund.id));
    }

    // What a webhook does on charge.refunded: the Charge names no refunds, the list does.
    const charge = list.data[0]?.charge as string;
    assert.match(charge, /^ch_/);
    const byCharge = await stripe.refunds.list({ charge });
    assert.deepEqual(byCharge.data.map((refund) => refund.id), [...ids].reverse());
    assert.deepEqual(
      (await stripe.refunds.list({ payment_intent: paymentIntent, charge })).data.length,
      3,
    );

    const all = await stripe.refunds.list();
    assert.deepEqual(all.data.map((refund) => refund.id), [otherRefund, ...[...ids].reverse()]);
    assert.deepEqual((await stripe.refunds.list({ payment_intent: other })).data.length, 1);
  });
});

Deno.test("an intent with no refunds lists none; limit defaults to 10 and caps a page", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe, { quantity: 1 });
    const empty = await stripe.refunds.list({ payment_intent: paymentIntent });
    assert.deepEqual([empty.data, empty.has_more], [[], false]);

    const ids = await refundInTurn(stripe, paymentIntent, Array(12).fill(100));
    const first = await stripe.refunds.list({ payment_intent: paymentIntent });
    assert.deepEqual([first.data.length, first.has_more], [10, true]);
    assert.deepEqual(first.data.map((refund) => refund.id), [...ids].reverse().slice(0, 10));
    const hundred = await stripe.refunds.list({ payment_intent: paymentIntent, limit: 100 });
    assert.deepEqual([hundred.data.length, hundred.has_more], [12, false]);
  });
});

Deno.test("pages with starting_after and ending_before; the SDK's auto-pagination sees each refund once", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const ids = await refundInTurn(stripe, paymentIntent, [100, 200, 300, 400, 500]);
    const newestFirst = [...ids].reverse();
    const params = { payment_intent: paymentIntent, limit: 2 };

    const page1 = await stripe.refunds.list(params);
    assert.deepEqual([page1.data.map((r) => r.id), page1.has_more], [
      newestFirst.slice(0, 2),
      true,
    ]);
    const page2 = await stripe.refunds.list({ ...params, starting_after: page1.data[1]!.id });
    assert.deepEqual([page2.data.map((r) => r.id), page2.has_more], [
      newestFirst.slice(2, 4),
      true,
    ]);
    const page3 = await stripe.refunds.list({ ...params, starting_after: page2.data[1]!.id });
    assert.deepEqual([page3.data.map((r) => r.id), page3.has_more], [newestFirst.slice(4), false]);

    // Back from the oldest: the newer refunds nearest the cursor, still newest first.
    const back = await stripe.refunds.list({ ...params, ending_before: newestFirst[4]! });
    assert.deepEqual([back.data.map((r) => r.id), back.has_more], [newestFirst.slice(2, 4), true]);
    const top = await stripe.refunds.list({ ...params, ending_before: newestFirst[2]! });
    assert.deepEqual([top.data.map((r) => r.id), top.has_more], [newestFirst.slice(0, 2), false]);
    const none = await stripe.refunds.list({ ...params, ending_before: newestFirst[0]! });
    assert.deepEqual([none.data, none.has_more], [[], false]);

    const seen: string[] = [];
    for await (const refund of stripe.refunds.list(params)) seen.push(refund.id);
    assert.deepEqual(seen, newestFirst);
    const all = await stripe.refunds.list(params).autoPagingToArray({ limit: 100 });
    assert.deepEqual(all.map((refund) => refund.id), newestFirst);
    // Under ending_before the SDK walks towards the newest.
    const upwards = await stripe.refunds.list({ ...params, ending_before: newestFirst[4]! })
      .autoPagingToArray({ limit: 100 });
    assert.deepEqual(upwards.map((refund) => refund.id), ids.slice(1));
  });
});

Deno.test("filters by created: an exact time or a range", async () => {
  let now = Date.UTC(2026, 11, 1);
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const ids: string[] = [];
    for (const amount of [100, 200, 300]) {
      now += 60_000;
      ids.push(...await refundInTurn(stripe, paymentIntent, [amount]));
    }
    const times = ids.map((id) => server.refunds.get(id)!.created);
    assert.deepEqual([times[1]! - times[0]!, times[2]! - times[1]!], [60, 60]);
    const listed = async (created: Stripe.RangeQueryParam | number) =>
      (await stripe.refunds.list({ payment_intent: paymentIntent, created })).data.map((r) => r.id);
    assert.deepEqual(await listed({ gte: times[1]! }), [ids[2], ids[1]]);
    assert.deepEqual(await listed({ gt: times[1]! }), [ids[2]]);
    assert.deepEqual(await listed({ lt: times[1]! }), [ids[0]]);
    assert.deepEqual(await listed({ gte: times[0]!, lte: times[1]! }), [ids[1], ids[0]]);
    assert.deepEqual(await listed(times[2]!), [ids[2]]);
  }, { now: () => now });
});

Deno.test("bad list parameters are 400s naming the param", async () => {
  await withServer(async (server, stripe) => {
    const paymentIntent = await paidSession(server, stripe);
    const [refund] = await refundInTurn(stripe, paymentIntent, [100]);
    const cases: [Stripe.RefundListParams, { code: string; param: string }][] = [
      [{ limit: 0 }, { code: "parameter_invalid_integer", param: "limit" }],
      [{ limit: 101 }, { code: "parameter_invalid_integer", param: "limit" }],
      [{ payment_intent: "pi_missing" }, { code: "resource_missing", param: "payment_intent" }],
      [{ charge: "ch_missing" }, { code: "resource_missing", param: "charge" }],
      [{ starting_after: "re_missing" }, { code: "resource_missing", param: "starting_after" }],
      [{ ending_before: "re_missing" }, { code: "resource_missing", param: "ending_before" }],
      [
        { starting_after: refund!, ending_before: refund! },
        { code: "parameters_exclusive", param: "starting_after" },
      ],
      [{ limit: 1, ...{ amount: 5 } }, { code: "parameter_unknown", param: "amount" }],
    ];
    for (const [params, expected] of cases) {
      await assert.rejects(
        stripe.refunds.list(params),
        isStripeError(Stripe.errors.StripeInvalidRequestError, (error) => {
          assert.equal(error.statusCode, 400);
          assert.equal(error.code, expected.code, JSON.stringify(params));
          assert.equal(error.param, expected.param);
        }),
      );
    }
  });
});
