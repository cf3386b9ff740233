/**
 * Reconciliation of refunds, over the real reconcile-checkouts handler: a refund attempt that
 * died between Stripe's refund and its record (no retry ever comes) is recorded with the refund
 * Stripe made; one Stripe never saw is made once; one Stripe never answers is given up after
 * RECONCILE_MAX_ATTEMPTS runs; and payments that found no seats (capacity_conflict) are refunded
 * in full exactly once, whoever runs reconciliation and however often.
 */
import assert from "node:assert/strict";
import { operatorCaller } from "../supabase/functions/_shared/auth.ts";
import { settleCheckoutSession } from "../supabase/functions/_shared/db.ts";
import {
  createReconcileHandler,
  type ReconcileRunSummary,
} from "../supabase/functions/_shared/reconcile.ts";
import type { RefundStore } from "../supabase/functions/_shared/refunds.ts";
import { parkLeftoverWork } from "./support/database.ts";
import {
  checkoutRequest,
  createEvent,
  type Harness,
  withHarness,
} from "./support/checkout-harness.ts";
import {
  orderRefunds,
  paidOrder,
  refundHandler,
  refundRequest,
  SECRET_KEY,
} from "./support/refund-harness.ts";

const NOTHING = { settled: 0, failed: 0, skipped: 0, remaining: 0 };
const NO_REFUNDS = { settled: 0, failed: 0, skipped: 0, conflictsRefunded: 0 };

/**
 * Runs `fn` on a harness where reconciliation only finds this test's work: reconciliation is
 * global, so attempts and conflicts other test files left behind on purpose are parked first.
 */
function withReconciler(fn: (h: Harness) => Promise<void>): Promise<void> {
  return withHarness(async (h) => {
    await parkLeftoverWork(h.sql);
    await fn(h);
  });
}

/** One run of the reconcile-checkouts endpoint (every expired lease counts as stuck). */
async function reconcileRun(
  h: Harness,
  options: { maxAttempts?: number } = {},
): Promise<ReconcileRunSummary> {
  const handler = createReconcileHandler({
    sql: h.sql,
    stripe: h.stripeClient,
    staleSeconds: 0,
    maxAttempts: options.maxAttempts,
    authenticate: operatorCaller({ keys: { default: SECRET_KEY } }),
    log: (line) => h.logs.push(line),
  });
  const response = await handler(
    new Request("http://functions.test/functions/v1/reconcile-checkouts", {
      method: "POST",
      headers: { apikey: SECRET_KEY },
    }),
  );
  assert.equal(response.status, 200, await response.clone().text());
  return await response.json();
}

/** A refund-order whose process dies after the claim: record and release never reach the database. */
function dyingRefunds(h: Harness) {
  const dies = (): Promise<never> => Promise.reject(new Error("killed"));
  return refundHandler(h, {
    leaseSeconds: 1,
    wrapStore: (store): RefundStore => ({ ...store, record: dies, release: dies }),
  });
}

async function waitForLeases() {
  await new Promise((r) => setTimeout(r, 1_100));
}

/**
 * A refund of the whole order whose every try is dropped before Stripe sees it, and whose
 * process then dies: once its lease ran out it is stuck, and no refund exists under its key.
 */
async function stuckBeforeStripe(h: Harness, orderId: string): Promise<string> {
  const key = `op-${crypto.randomUUID()}`;
  for (let i = 0; i < 3; i++) {
    h.stripe.faults.push({ kind: "reset_before", method: "POST", path: "/v1/refunds" });
  }
  const died = await dyingRefunds(h)(refundRequest({ orderId }, { key }));
  assert.equal(died.status, 503);
  assert.equal(h.stripe.refundsCreated(), 0);
  h.stripe.faults.length = 0;
  await waitForLeases();
  return key;
}

async function refundRows(h: Harness, orderId: string) {
  return await h.sql<
    {
      status: string;
      source: string;
      amount: number;
      stripe_refund_id: string | null;
      operation_id: string | null;
    }[]
  >`
    select status, source, amount, stripe_refund_id, operation_id from public.refunds
    where order_id = ${orderId}::uuid order by created_at`;
}

async function operation(h: Harness, operationId: string) {
  const [row] = await h.sql<{ status: string; attempt: number; last_error: string | null }[]>`
    select status, attempt, last_error from public.stripe_idempotency_keys
    where operation_type = 'refund:create' and operation_id = ${operationId}`;
  return row;
}

Deno.test("refund reconcile: a crash between Stripe's refund and the record, with no retry, is settled by recording that same refund", () =>
  withReconciler(async (h) => {
    const paid = await paidOrder(h);
    const key = `op-${crypto.randomUUID()}`;
    const died = await dyingRefunds(h)(
      refundRequest({ orderId: paid.orderId, amount: 700 }, { key }),
    );
    assert.equal(died.status, 503);
    assert.equal(h.stripe.refundsCreated(), 1, "Stripe made the refund");
    const [made] = [...h.stripe.refunds.keys()];
    assert.deepEqual((await refundRows(h, paid.orderId)).map((r) => r.status), ["reserved"]);
    await waitForLeases();

    const run = await reconcileRun(h);
    assert.deepEqual(run, {
      ...NOTHING,
      refunds: { settled: 1, failed: 0, skipped: 0, conflictsRefunded: 0 },
    });
    assert.equal(h.stripe.refundsCreated(), 1, "no second refund: Stripe replayed the first");
    assert.deepEqual(
      (await refundRows(h, paid.orderId)).map((r) => [r.status, r.stripe_refund_id]),
      [
        ["succeeded", made],
      ],
    );
    assert.deepEqual(await orderRefunds(h, paid.orderId), {
      status: "partially_refunded",
      amountRefunded: 700,
      reserved: 700,
      rows: 1,
    });
    assert.equal((await operation(h, key))?.status, "completed");

    // The operator's late retry replays what reconciliation recorded.
    const retry = await refundHandler(h)(
      refundRequest({ orderId: paid.orderId, amount: 700 }, { key }),
    );
    assert.equal(retry.status, 201);
    assert.equal(retry.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(await retry.json(), {
      refundId: made,
      orderId: paid.orderId,
      amount: 700,
      status: "succeeded",
      orderStatus: "partially_refunded",
    });
    assert.deepEqual(await reconcileRun(h), { ...NOTHING, refunds: NO_REFUNDS });
    assert.equal(h.stripe.refundsCreated(), 1);
  }));

Deno.test("refund reconcile: an attempt that died before Stripe saw it is made by reconciliation, once", () =>
  withReconciler(async (h) => {
    const paid = await paidOrder(h);
    await stuckBeforeStripe(h, paid.orderId);

    const runs = await Promise.all([reconcileRun(h), reconcileRun(h)]);
    assert.equal(runs.reduce((n, r) => n + r.refunds.settled, 0), 1, JSON.stringify(runs));
    assert.equal(h.stripe.refundsCreated(), 1);
    assert.equal(h.stripe.refundedAmount(paid.paymentIntent), paid.amount);
    assert.deepEqual(await orderRefunds(h, paid.orderId), {
      status: "refunded",
      amountRefunded: paid.amount,
      reserved: paid.amount,
      rows: 1,
    });
  }));

Deno.test("refund reconcile: an attempt Stripe never answers for is left for the next run, then given up after RECONCILE_MAX_ATTEMPTS runs: the reservation is given back", () =>
  withReconciler(async (h) => {
    const paid = await paidOrder(h);
    const key = await stuckBeforeStripe(h, paid.orderId);
    for (let i = 0; i < 20; i++) {
      h.stripe.faults.push({ kind: "reset_before", method: "POST", path: "/v1/refunds" });
    }

    const first = await reconcileRun(h, { maxAttempts: 2 });
    assert.deepEqual(first.refunds, { settled: 0, failed: 0, skipped: 1, conflictsRefunded: 0 });
    assert.equal((await orderRefunds(h, paid.orderId)).reserved, paid.amount, "still reserved");
    await new Promise((r) => setTimeout(r, 10));
    const second = await reconcileRun(h, { maxAttempts: 2 });
    assert.deepEqual(second.refunds, { settled: 0, failed: 1, skipped: 0, conflictsRefunded: 0 });
    const row = await operation(h, key);
    assert.equal(row?.status, "failed");
    assert.match(row?.last_error ?? "", /^reconcile: gave up after 2 runs/);
    assert.deepEqual(await orderRefunds(h, paid.orderId), {
      status: "paid",
      amountRefunded: 0,
      reserved: 0,
      rows: 1,
    });
    assert.equal(h.stripe.refundsCreated(), 0);
    assert.deepEqual((await reconcileRun(h, { maxAttempts: 2 })).refunds, NO_REFUNDS);
  }));

Deno.test("refund reconcile: an attempt Stripe refuses is settled: released, the reservation given back", () =>
  withReconciler(async (h) => {
    const paid = await paidOrder(h);
    const key = await stuckBeforeStripe(h, paid.orderId);
    // Meanwhile the charge was disputed: Stripe refuses any refund of it.
    h.stripe.disputePayment(paid.paymentIntent);

    assert.deepEqual((await reconcileRun(h)).refunds, {
      settled: 1,
      failed: 0,
      skipped: 0,
      conflictsRefunded: 0,
    });
    assert.equal((await operation(h, key))?.status, "failed");
    assert.deepEqual((await refundRows(h, paid.orderId)).map((r) => r.status), ["failed"]);
    assert.equal((await orderRefunds(h, paid.orderId)).reserved, 0);
    assert.equal(h.stripe.refundsCreated(), 0);
  }));

/**
 * A payment that lands after its hold ended, its event's only "last" seat sold meanwhile: the
 * order is recorded capacity_conflict with its PaymentIntent. Made on a fresh event each time.
 */
async function conflictOrder(
  h: Harness,
): Promise<{ orderId: string; paymentIntent: string; amount: number }> {
  h.event = await createEvent(h.sql);
  const body = (email: string) => ({
    eventId: h.event.id,
    items: [{ tierId: h.event.last, quantity: 1 }],
    email,
  });
  const late = await h.guest(checkoutRequest(body("late@example.com")));
  assert.equal(late.status, 201);
  const { orderId, sessionId } = await late.json();
  // The hold and its grace ran out with no word from Stripe; someone else takes the seat.
  await h.sql`
    update public.orders set hold_expires_at = now() - interval '2 hours',
      seats_held_until = now() - interval '1 hour'
    where id = ${orderId}`;
  assert.equal((await h.guest(checkoutRequest(body("rival@example.com")))).status, 201);
  const session = h.stripe.completeSession(sessionId);
  const applied = await settleCheckoutSession(h.sql, session);
  assert.equal(applied.outcome, "capacity_conflict");
  const state = await orderRefunds(h, orderId);
  assert.deepEqual([state.status, state.amountRefunded], ["capacity_conflict", 0]);
  return { orderId, paymentIntent: session.payment_intent!, amount: session.amount_total! };
}

Deno.test("refund reconcile: a payment that found no seats is refunded in full exactly once; the next run refunds nothing more", () =>
  withReconciler(async (h) => {
    const conflict = await conflictOrder(h);
    const first = await reconcileRun(h);
    assert.deepEqual(first, {
      ...NOTHING,
      refunds: { settled: 0, failed: 0, skipped: 0, conflictsRefunded: 1 },
    });
    assert.equal(h.stripe.refundedAmount(conflict.paymentIntent), conflict.amount);
    assert.equal(h.stripe.refundsCreated(), 1);
    const rows = await refundRows(h, conflict.orderId);
    assert.deepEqual(rows.map((r) => [r.status, r.source, r.amount, r.operation_id]), [
      ["succeeded", "capacity_conflict", conflict.amount, `conflict.${conflict.orderId}`],
    ]);
    assert.deepEqual(await orderRefunds(h, conflict.orderId), {
      status: "refunded",
      amountRefunded: conflict.amount,
      reserved: conflict.amount,
      rows: 1,
    });
    const refund = h.stripe.refunds.get(rows[0]!.stripe_refund_id!)!;
    assert.deepEqual(refund.metadata, { order_id: conflict.orderId });

    assert.deepEqual(await reconcileRun(h), { ...NOTHING, refunds: NO_REFUNDS });
    assert.equal(h.stripe.refundsCreated(), 1, "nothing more");
    assert.equal(h.stripe.refundedAmount(conflict.paymentIntent), conflict.amount);
  }));

Deno.test("refund reconcile: concurrent runs refund each payment that found no seats exactly once", () =>
  withReconciler(async (h) => {
    const conflicts = [await conflictOrder(h), await conflictOrder(h), await conflictOrder(h)];
    // Slow refunds, so that the runs overlap.
    for (let i = 0; i < 3; i++) {
      h.stripe.faults.push({ kind: "latency", ms: 150, method: "POST", path: "/v1/refunds" });
    }
    const runs = await Promise.all(Array.from({ length: 4 }, () => reconcileRun(h)));
    assert.equal(
      runs.reduce((n, r) => n + r.refunds.conflictsRefunded, 0),
      conflicts.length,
      JSON.stringify(runs.map((r) => r.refunds)),
    );
    assert.equal(runs.reduce((n, r) => n + r.refunds.failed, 0), 0);
    assert.equal(h.stripe.refundsCreated(), conflicts.length, "one refund per order, never two");
    for (const conflict of conflicts) {
      assert.equal(h.stripe.refundedAmount(conflict.paymentIntent), conflict.amount);
      assert.deepEqual(await orderRefunds(h, conflict.orderId), {
        status: "refunded",
        amountRefunded: conflict.amount,
        reserved: conflict.amount,
        rows: 1,
      });
    }
    assert.deepEqual(await reconcileRun(h), { ...NOTHING, refunds: NO_REFUNDS });
    assert.equal(h.stripe.refundsCreated(), conflicts.length);
  }));

Deno.test("refund reconcile: a conflict refund Stripe refuses is failed, and a later run refunds it with a new key", () =>
  withReconciler(async (h) => {
    const conflict = await conflictOrder(h);
    h.stripe.faults.push({
      kind: "status",
      status: 400,
      body: { error: { type: "invalid_request_error", message: "refused for the test" } },
      method: "POST",
      path: "/v1/refunds",
    });
    assert.deepEqual((await reconcileRun(h)).refunds, {
      settled: 0,
      failed: 1,
      skipped: 0,
      conflictsRefunded: 0,
    });
    const operationId = `conflict.${conflict.orderId}`;
    assert.equal((await operation(h, operationId))?.status, "failed");
    assert.deepEqual(await orderRefunds(h, conflict.orderId), {
      status: "capacity_conflict",
      amountRefunded: 0,
      reserved: 0,
      rows: 1,
    });

    assert.deepEqual((await reconcileRun(h)).refunds, {
      settled: 0,
      failed: 0,
      skipped: 0,
      conflictsRefunded: 1,
    });
    assert.deepEqual(
      [(await operation(h, operationId))?.status, (await operation(h, operationId))?.attempt],
      ["completed", 2],
    );
    assert.equal(h.stripe.refundsCreated(), 1);
    assert.equal((await orderRefunds(h, conflict.orderId)).status, "refunded");
  }));

Deno.test("refund reconcile: a conflict refund Stripe does not answer is taken over by the next run with the same key", () =>
  withReconciler(async (h) => {
    const conflict = await conflictOrder(h);
    // Stripe makes the refund but the answer is lost, on every try of the SDK's.
    for (let i = 0; i < 3; i++) {
      h.stripe.faults.push({ kind: "reset_after", method: "POST", path: "/v1/refunds" });
    }
    assert.deepEqual((await reconcileRun(h)).refunds, {
      settled: 0,
      failed: 0,
      skipped: 1,
      conflictsRefunded: 0,
    });
    assert.equal(h.stripe.refundsCreated(), 1, "Stripe made it");
    assert.equal((await orderRefunds(h, conflict.orderId)).status, "capacity_conflict");

    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual((await reconcileRun(h)).refunds, {
      settled: 1,
      failed: 0,
      skipped: 0,
      conflictsRefunded: 0,
    });
    assert.equal(h.stripe.refundsCreated(), 1, "the same refund, recorded");
    assert.equal(h.stripe.refundedAmount(conflict.paymentIntent), conflict.amount);
    assert.equal((await orderRefunds(h, conflict.orderId)).status, "refunded");
  }));
