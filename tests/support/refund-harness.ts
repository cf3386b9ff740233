/**
 * Paid orders and the refund-order handler, built as index.ts builds it, against the harness's
 * database and local Stripe server.
 */
import { operatorCaller } from "../../supabase/functions/_shared/auth.ts";
import { settleCheckoutSession } from "../../supabase/functions/_shared/db.ts";
import { createRefundOrderHandler } from "../../supabase/functions/_shared/refund-order.ts";
import { type RefundStore, sqlRefundStore } from "../../supabase/functions/_shared/refunds.ts";
import { checkoutRequest, guestBody, type Harness } from "./checkout-harness.ts";

/** The harness project's secret key: what operators send in `apikey`. */
export const SECRET_KEY = "sb_secret_harness_0123456789abcdef";

/** A guest order paid at Stripe and applied as the webhook would; `extra` overrides the body. */
export async function paidOrder(
  h: Harness,
  extra: Record<string, unknown> = {},
): Promise<{ orderId: string; sessionId: string; paymentIntent: string; amount: number }> {
  const response = await h.guest(checkoutRequest(guestBody(h, extra)));
  if (response.status !== 201) throw new Error(`checkout answered ${response.status}`);
  const { orderId, sessionId } = await response.json();
  const session = h.stripe.completeSession(sessionId);
  const applied = await settleCheckoutSession(h.sql, session);
  if (applied.outcome !== "paid") throw new Error(`the payment was ${applied.outcome}`);
  return {
    orderId,
    sessionId,
    paymentIntent: session.payment_intent!,
    amount: session.amount_total!,
  };
}

/** The refund-order handler over the harness; `wrapStore` may inject faults. */
export function refundHandler(
  h: Harness,
  options: { wrapStore?: (store: RefundStore) => RefundStore; leaseSeconds?: number } = {},
): (request: Request) => Promise<Response> {
  const real = sqlRefundStore(h.sql);
  return createRefundOrderHandler({
    store: options.wrapStore ? options.wrapStore(real) : real,
    stripe: h.stripeClient,
    authenticate: operatorCaller({ keys: { default: SECRET_KEY } }),
    leaseSeconds: options.leaseSeconds,
    log: (line) => h.logs.push(line),
  });
}

/** A refund-order POST with the operator's secret key (`apikey: null` leaves it out). */
export function refundRequest(
  body: unknown,
  options: { key?: string | null; apikey?: string | null } = {},
): Request {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.apikey !== null) headers.apikey = options.apikey ?? SECRET_KEY;
  if (options.key !== null) headers["idempotency-key"] = options.key ?? `op-${crypto.randomUUID()}`;
  return new Request("http://functions.test/functions/v1/refund-order", {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
}

/** The order's state and what it refunded, from the database. */
export async function orderRefunds(
  h: Harness,
  orderId: string,
): Promise<{ status: string; amountRefunded: number; reserved: number; rows: number }> {
  const [row] = await h.sql<
    { status: string; amount_refunded: number; reserved: number; rows: number }[]
  >`
    select o.status, o.amount_refunded,
           coalesce(sum(r.amount) filter (where r.status not in ('failed', 'canceled')), 0)::int as reserved,
           count(r.id)::int as rows
    from public.orders o left join public.refunds r on r.order_id = o.id
    where o.id = ${orderId}::uuid
    group by o.id`;
  if (!row) throw new Error(`no order ${orderId}`);
  return {
    status: row.status,
    amountRefunded: row.amount_refunded,
    reserved: row.reserved,
    rows: row.rows,
  };
}
