/**
 * refund-order against the real database and the local Stripe server through Stripe's SDK: the
 * 201 contract, replay, mismatch, the refusals (nothing reserved, no Stripe call), 20 concurrent
 * refunds of one order, and a crash between Stripe's refund and the record.
 */
import assert from "node:assert/strict";
import { checkoutRequest, guestBody, withHarness } from "./support/checkout-harness.ts";
import { orderRefunds, paidOrder, refundHandler, refundRequest } from "./support/refund-harness.ts";

async function errorCode(response: Response): Promise<string> {
  return ((await response.json()) as { error: { code: string } }).error.code;
}

Deno.test("refund-order: a full refund answers 201, refunds the order and frees its seats; a retry replays the same bytes", async () => {
  await withHarness(async (h) => {
    const refund = refundHandler(h);
    const paid = await paidOrder(h);
    const [before] = await h.sql<{ taken: number }[]>`
      select private.tier_seats_taken(${h.event.floor}::uuid)::int as taken`;
    const key = `op-${crypto.randomUUID()}`;
    const first = await refund(refundRequest({ orderId: paid.orderId }, { key }));
    assert.equal(first.status, 201);
    assert.equal(first.headers.get("idempotent-replayed"), "false");
    const text = await first.text();
    const body = JSON.parse(text);
    assert.deepEqual(Object.keys(body).sort(), [
      "amount",
      "orderId",
      "orderStatus",
      "refundId",
      "status",
    ]);
    assert.match(body.refundId, /^re_/);
    assert.deepEqual([body.orderId, body.amount, body.status, body.orderStatus], [
      paid.orderId,
      paid.amount,
      "succeeded",
      "refunded",
    ]);
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), paid.amount);
    assert.deepEqual(await orderRefunds(h, paid.orderId), {
      status: "refunded",
      amountRefunded: paid.amount,
      reserved: paid.amount,
      rows: 1,
    });
    const [after] = await h.sql<{ taken: number }[]>`
      select private.tier_seats_taken(${h.event.floor}::uuid)::int as taken`;
    assert.equal(after!.taken, before!.taken - 2, "the 2 floor seats are free again");
    assert.equal((await h.sql`select * from public.check_tier_capacity()`).length, 0);

    const calls = h.stripe.requests.length;
    const again = await refund(refundRequest({ orderId: paid.orderId }, { key }));
    assert.equal(again.status, 201);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.equal(await again.text(), text, "the same bytes");
    assert.equal(h.stripe.requests.length, calls, "no Stripe call");
    assert.equal(h.stripe.refundsCreated(), 1);
  });
});

Deno.test("refund-order: partial refunds move paid → partially_refunded → refunded; more than is left is 409 and reserves nothing", async () => {
  await withHarness(async (h) => {
    const refund = refundHandler(h);
    const paid = await paidOrder(h);
    const part = await refund(
      refundRequest({ orderId: paid.orderId, amount: 1000, reason: "requested_by_customer" }),
    );
    assert.equal(part.status, 201);
    assert.equal((await part.json()).orderStatus, "partially_refunded");
    assert.equal(h.stripe.refunds.values().next().value!.reason, "requested_by_customer");

    const tooMuch = await refund(refundRequest({ orderId: paid.orderId, amount: paid.amount }));
    assert.equal(tooMuch.status, 409);
    assert.equal(await errorCode(tooMuch), "refund_exceeds_amount");

    const rest = await refund(refundRequest({ orderId: paid.orderId }));
    assert.equal(rest.status, 201);
    const restBody = await rest.json();
    assert.deepEqual([restBody.amount, restBody.orderStatus], [paid.amount - 1000, "refunded"]);

    const nothingLeft = await refund(refundRequest({ orderId: paid.orderId }));
    assert.equal(nothingLeft.status, 409);
    assert.equal(await errorCode(nothingLeft), "refund_exceeds_amount");
    assert.equal(h.stripe.refundsCreated(), 2, "the refusals made no Stripe call");
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), paid.amount);
    assert.deepEqual(await orderRefunds(h, paid.orderId), {
      status: "refunded",
      amountRefunded: paid.amount,
      reserved: paid.amount,
      rows: 2,
    });
    const [keys] = await h.sql<{ n: number }[]>`
      select count(*)::int as n from public.stripe_idempotency_keys where operation_type = 'refund:create'
        and order_id = ${paid.orderId}::uuid`;
    assert.equal(keys!.n, 2, "a refused claim leaves no operation behind");
  });
});

Deno.test("refund-order: same key with another body is 422; unknown order 404; unpaid order 409; refusals write nothing", async () => {
  await withHarness(async (h) => {
    const refund = refundHandler(h);
    const paid = await paidOrder(h);
    const key = `op-${crypto.randomUUID()}`;
    assert.equal(
      (await refund(refundRequest({ orderId: paid.orderId, amount: 500 }, { key }))).status,
      201,
    );
    const other = await refund(refundRequest({ orderId: paid.orderId, amount: 600 }, { key }));
    assert.equal(other.status, 422);
    assert.equal(await errorCode(other), "idempotency_key_reused");

    const missing = await refund(refundRequest({ orderId: crypto.randomUUID() }));
    assert.equal(missing.status, 404);
    assert.equal(await errorCode(missing), "order_not_found");

    const pending = await h.guest(checkoutRequest(guestBody(h)));
    const { orderId: pendingId } = await pending.json();
    const unpaid = await refund(refundRequest({ orderId: pendingId }));
    assert.equal(unpaid.status, 409);
    assert.equal(await errorCode(unpaid), "order_not_paid");
    assert.equal(h.stripe.refundsCreated(), 1);
    const [rows] = await h.sql<{ n: number }[]>`
      select count(*)::int as n from public.refunds where order_id = ${pendingId}::uuid`;
    assert.equal(rows!.n, 0);
  });
});

Deno.test("refund-order: only an operator credential; bad input is a 400 before anything is written", async () => {
  await withHarness(async (h) => {
    const refund = refundHandler(h);
    const paid = await paidOrder(h);
    for (const apikey of [null, "sb_publishable_harness_0123456789abcdef", "sb_secret_wrong"]) {
      const response = await refund(refundRequest({ orderId: paid.orderId }, { apikey }));
      assert.equal(response.status, 401, `apikey ${apikey}`);
      assert.equal(await errorCode(response), "unauthorized");
    }
    const cases: [unknown, Record<string, string | null>, string][] = [
      [{ orderId: paid.orderId, extra: 1 }, {}, "validation_failed"],
      [{ orderId: "not-a-uuid" }, {}, "validation_failed"],
      [{ orderId: paid.orderId, amount: 0 }, {}, "validation_failed"],
      [{ orderId: paid.orderId, amount: 1.5 }, {}, "validation_failed"],
      [{ orderId: paid.orderId, reason: "because" }, {}, "validation_failed"],
      [{ orderId: paid.orderId }, { key: null }, "idempotency_key_missing"],
      [
        { orderId: paid.orderId },
        { key: `cancel.${crypto.randomUUID()}` },
        "idempotency_key_invalid",
      ],
    ];
    for (const [body, options, code] of cases) {
      const response = await refund(refundRequest(body, options));
      assert.equal(response.status, 400, JSON.stringify(body));
      assert.equal(await errorCode(response), code);
    }
    assert.equal(h.stripe.refundsCreated(), 0);
    assert.equal((await orderRefunds(h, paid.orderId)).rows, 0);
  });
});

Deno.test("refund-order: 20 concurrent refunds of one order with different keys never refund more than was paid", async () => {
  await withHarness(async (h) => {
    const refund = refundHandler(h);
    const paid = await paidOrder(h); // 2 × 15.00 + 9.99 = 39.99
    const responses = await Promise.all(
      Array.from(
        { length: 20 },
        () => refund(refundRequest({ orderId: paid.orderId, amount: 1000 })),
      ),
    );
    const statuses = responses.map((r) => r.status);
    const codes = await Promise.all(
      responses.map(async (r) => r.status === 201 ? "created" : await errorCode(r)),
    );
    assert.equal(statuses.filter((s) => s === 201).length, Math.floor(paid.amount / 1000));
    assert.ok(
      codes.every((c) => c === "created" || c === "refund_exceeds_amount"),
      codes.join(","),
    );
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), 3000);
    const state = await orderRefunds(h, paid.orderId);
    assert.deepEqual([state.status, state.amountRefunded], ["partially_refunded", 3000]);
  });
});

Deno.test("refund-order: a crash between Stripe's refund and the record; the retry with the same key gets the same refund", async () => {
  await withHarness(async (h) => {
    let failRecord = true;
    const refund = refundHandler(h, {
      wrapStore: (store) => ({
        ...store,
        record: (input) => {
          if (failRecord) {
            failRecord = false;
            return Promise.reject(new Error("connection lost"));
          }
          return store.record(input);
        },
      }),
    });
    const paid = await paidOrder(h);
    const key = `op-${crypto.randomUUID()}`;
    const first = await refund(refundRequest({ orderId: paid.orderId, amount: 700 }, { key }));
    assert.equal(first.status, 503);
    assert.equal(h.stripe.refundsCreated(), 1, "Stripe made the refund");
    const stranded = await orderRefunds(h, paid.orderId);
    assert.deepEqual([stranded.status, stranded.reserved], ["paid", 700], "still reserved");

    const retry = await refund(refundRequest({ orderId: paid.orderId, amount: 700 }, { key }));
    assert.equal(retry.status, 201);
    const body = await retry.json();
    assert.equal(body.refundId, [...h.stripe.refunds.keys()][0], "the refund Stripe made first");
    assert.equal(h.stripe.refundsCreated(), 1, "and no second one");
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), 700);
    assert.deepEqual(await orderRefunds(h, paid.orderId), {
      status: "partially_refunded",
      amountRefunded: 700,
      reserved: 700,
      rows: 1,
    });
  });
});

Deno.test("refund-order: Stripe's answer burns the key and gives the reservation back; no answer keeps both", async () => {
  await withHarness(async (h) => {
    const refund = refundHandler(h);
    const paid = await paidOrder(h);
    const key = `op-${crypto.randomUUID()}`;
    const body = { orderId: paid.orderId, amount: 900 };

    // Executed and stored under the key: the key is burnt, nothing stays reserved.
    h.stripe.faults.push({ kind: "status", status: 500, storeUnderKey: true, path: "/v1/refunds" });
    h.stripe.faults.push({ kind: "status", status: 500, storeUnderKey: true, path: "/v1/refunds" });
    h.stripe.faults.push({ kind: "status", status: 500, storeUnderKey: true, path: "/v1/refunds" });
    const answered = await refund(refundRequest(body, { key }));
    assert.equal(answered.status, 503);
    assert.equal(
      (await orderRefunds(h, paid.orderId)).reserved,
      0,
      "the reservation is given back",
    );
    const [burnt] = await h.sql<{ status: string; key: string }[]>`
      select status, stripe_idempotency_key as key from public.stripe_idempotency_keys
      where operation_type = 'refund:create' and operation_id = ${key}`;
    assert.equal(burnt!.status, "failed");
    h.stripe.faults.length = 0;

    // No answer (the connection drops before Stripe runs it): the key and the reservation stay.
    h.stripe.faults.push({ kind: "reset_before", path: "/v1/refunds" });
    h.stripe.faults.push({ kind: "reset_before", path: "/v1/refunds" });
    h.stripe.faults.push({ kind: "reset_before", path: "/v1/refunds" });
    const lost = await refund(refundRequest(body, { key }));
    assert.equal(lost.status, 503);
    const [kept] = await h.sql<{ status: string; key: string }[]>`
      select status, stripe_idempotency_key as key from public.stripe_idempotency_keys
      where operation_type = 'refund:create' and operation_id = ${key}`;
    assert.equal(kept!.status, "in_progress");
    assert.notEqual(kept!.key, burnt!.key, "the retry armed a new key");
    assert.equal(
      (await orderRefunds(h, paid.orderId)).reserved,
      900,
      "still reserved for the retry",
    );
    h.stripe.faults.length = 0;

    const done = await refund(refundRequest(body, { key }));
    assert.equal(done.status, 201);
    const [final] = await h.sql<{ key: string }[]>`
      select stripe_idempotency_key as key from public.stripe_idempotency_keys
      where operation_type = 'refund:create' and operation_id = ${key}`;
    assert.equal(final!.key, kept!.key, "the same key reached Stripe after the lost answer");
    assert.equal(h.stripe.refundsCreated(), 1);
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), 900);
  });
});

Deno.test("refund-order: 20 concurrent full refunds of one order refund exactly what was paid, once", async () => {
  await withHarness(async (h) => {
    const refund = refundHandler(h);
    const paid = await paidOrder(h);
    const responses = await Promise.all(
      Array.from({ length: 20 }, () => refund(refundRequest({ orderId: paid.orderId }))),
    );
    const codes = await Promise.all(
      responses.map(async (r) => r.status === 201 ? "created" : await errorCode(r)),
    );
    assert.equal(codes.filter((c) => c === "created").length, 1, codes.join(","));
    assert.ok(
      codes.every((c) => c === "created" || c === "refund_exceeds_amount"),
      codes.join(","),
    );
    assert.equal(h.stripe.refundsCreated(), 1);
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), paid.amount, "exactly what was paid");
    assert.deepEqual(await orderRefunds(h, paid.orderId), {
      status: "refunded",
      amountRefunded: paid.amount,
      reserved: paid.amount,
      rows: 1,
    });
  });
});

Deno.test("refund-order: the same key while its attempt is in flight is 409 idempotency_key_in_use with Retry-After", async () => {
  await withHarness(async (h) => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => release = resolve);
    let entered: () => void = () => {};
    const inFlight = new Promise<void>((resolve) => entered = resolve);
    const refund = refundHandler(h, {
      wrapStore: (store) => ({
        ...store,
        record: async (input) => {
          entered();
          await gate; // the first attempt holds its lease until the test lets it record
          return store.record(input);
        },
      }),
    });
    const paid = await paidOrder(h);
    const key = `op-${crypto.randomUUID()}`;
    const body = { orderId: paid.orderId, amount: 500 };
    const first = refund(refundRequest(body, { key }));
    await inFlight;
    const second = await refund(refundRequest(body, { key }));
    assert.equal(second.status, 409);
    assert.equal(await errorCode(second), "idempotency_key_in_use");
    assert.equal(second.headers.get("retry-after"), "1");
    release();
    assert.equal((await first).status, 201);
    const third = await refund(refundRequest(body, { key }));
    assert.equal(third.status, 201);
    assert.equal(third.headers.get("idempotent-replayed"), "true");
    assert.equal(h.stripe.refundsCreated(), 1);
  });
});
