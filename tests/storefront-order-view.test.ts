/**
 * The storefront's order view (storefront/order-view.ts, rendered by storefront/app.ts): the
 * status label and what Stripe refunded, for orders as /api/orders answers them. No browser or
 * database: the browser test (tests/browser/) covers the page itself.
 */
import assert from "node:assert/strict";
import { describeOrder, formatAmount, money, type OrderInfo } from "../storefront/order-view.ts";

function order(overrides: Partial<OrderInfo>): OrderInfo {
  return {
    id: "0b7f3f5e-7d43-4a55-9d8b-3c1b5a0f2e11",
    status: "paid",
    amountTotal: 4000,
    currency: "usd",
    items: [{ name: "General admission", quantity: 1 }, { name: "VIP", quantity: 1 }],
    ...overrides,
  };
}

Deno.test("order view: a partially refunded order shows its label and 'Refunded 12.00 of 40.00'", () => {
  const view = describeOrder(order({ status: "partially_refunded", amountRefunded: 1200 }));
  assert.equal(view.statusLabel, "partially refunded");
  assert.equal(view.refunded, "Refunded $12.00 of $40.00");
  assert.equal(view.total, "$40.00");
  assert.equal(view.items, "1 × General admission, 1 × VIP");
  assert.deepEqual([view.settled, view.attemptDone], [true, true]);
});

Deno.test("order view: a refunded order shows 'refunded' and the whole amount", () => {
  const view = describeOrder(order({ status: "refunded", amountRefunded: 4000 }));
  assert.equal(view.statusLabel, "refunded");
  assert.equal(view.refunded, "Refunded $40.00 of $40.00");
  assert.deepEqual([view.settled, view.attemptDone], [true, true]);
});

Deno.test("order view: the original statuses keep their labels; no refund line without a refund", () => {
  const cases: [OrderInfo["status"], boolean, boolean][] = [
    ["pending", false, false],
    ["paid", true, true],
    ["expired", true, false],
    ["cancelled", true, false],
  ];
  for (const [status, settled, attemptDone] of cases) {
    const view = describeOrder(order({ status }));
    // The browser test reads #order-status as the status itself ("paid").
    assert.equal(view.statusLabel, status);
    assert.equal(view.refunded, null, status);
    assert.deepEqual([view.settled, view.attemptDone], [settled, attemptDone], status);
  }
  // Before orders have the column, /api/orders answers 0.
  assert.equal(describeOrder(order({ amountRefunded: 0 })).refunded, null);
});

Deno.test("order view: a capacity conflict says a refund follows, and shows it once made", () => {
  const waiting = describeOrder(order({ status: "capacity_conflict" }));
  assert.match(waiting.statusLabel, /sold meanwhile: it will be refunded/);
  assert.equal(waiting.refunded, null);
  assert.deepEqual([waiting.settled, waiting.attemptDone], [true, true]);
  const refunded = describeOrder(order({ status: "refunded", amountRefunded: 4000 }));
  assert.equal(refunded.refunded, "Refunded $40.00 of $40.00");
  // A status the page does not know yet is shown in words, and polled.
  const unknown = describeOrder(order({ status: "refund_pending" }));
  assert.deepEqual([unknown.statusLabel, unknown.settled], ["refund pending", false]);
});

Deno.test("order view: amounts in minor units, zero-decimal currencies as they are", () => {
  assert.equal(formatAmount(1200, "usd"), "$12.00");
  assert.equal(formatAmount(0, "usd"), "$0.00");
  assert.equal(money(0, "usd"), "Free");
  assert.equal(money(2500, "eur"), "€25.00");
  assert.equal(formatAmount(1500, "jpy"), "¥1,500");
  assert.equal(
    describeOrder(
      order({
        status: "partially_refunded",
        amountTotal: 5000,
        amountRefunded: 1500,
        currency: "jpy",
      }),
    )
      .refunded,
    "Refunded ¥1,500 of ¥5,000",
  );
});
