/**
 * What the storefront's order view shows for an order (storefront/app.ts renders it): the status
 * label, the total, the items, and what Stripe has refunded. Pure, so it is tested without a
 * browser or a database (tests/storefront-order-view.test.ts).
 */

/** Order statuses (public.orders.status). */
export type OrderStatus =
  | "pending"
  | "paid"
  | "expired"
  | "cancelled"
  | "partially_refunded"
  | "refunded"
  | "capacity_conflict";

/** An order as the storefront server's `/api/orders` answers it. */
export interface OrderInfo {
  id: string;
  status: OrderStatus | string;
  amountTotal: number;
  /** Refunds Stripe confirmed, in minor units; absent (0) before orders have the column. */
  amountRefunded?: number;
  currency: string;
  items: { name: string; quantity: number }[];
}

/** The texts of the order view. */
export interface OrderView {
  /** The status as shown: the status itself for the original ones ("paid"), else in words. */
  statusLabel: string;
  /** "$40.00" (or "Free"). */
  total: string;
  /** "2 × General admission, 1 × VIP". */
  items: string;
  /** "Refunded $12.00 of $40.00", or null when nothing was refunded. */
  refunded: string | null;
  /** True once the order no longer changes by itself: the page stops polling. */
  settled: boolean;
  /** True once the attempt was paid (even if refunded since): a new purchase gets a new key. */
  attemptDone: boolean;
}

const LABELS: Record<string, string> = {
  pending: "pending",
  paid: "paid",
  expired: "expired",
  cancelled: "cancelled",
  partially_refunded: "partially refunded",
  refunded: "refunded",
  capacity_conflict: "paid, but the seats were sold meanwhile: it will be refunded",
};

const PAID = new Set(["paid", "partially_refunded", "refunded", "capacity_conflict"]);
const SETTLED = new Set([...PAID, "expired", "cancelled"]);

// Stripe's zero-decimal currencies: amounts are in the major unit (docs.stripe.com/currencies).
const ZERO_DECIMAL = new Set(
  "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split(" "),
);

/** An amount in minor units with its currency symbol: 4000 usd → "$40.00". */
export function formatAmount(amount: number, currency: string): string {
  const digits = ZERO_DECIMAL.has(currency.toLowerCase()) ? 0 : 2;
  return new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: currency.toUpperCase(),
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(amount / 10 ** digits);
}

/** A price: `formatAmount`, or "Free" for 0. */
export function money(amount: number, currency: string): string {
  return amount === 0 ? "Free" : formatAmount(amount, currency);
}

/** The order view's texts for `order`. */
export function describeOrder(order: OrderInfo): OrderView {
  const refundedAmount = Math.max(0, order.amountRefunded ?? 0);
  return {
    statusLabel: LABELS[order.status] ?? order.status.replaceAll("_", " "),
    total: money(order.amountTotal, order.currency),
    items: order.items.map((item) => `${item.quantity} × ${item.name}`).join(", "),
    refunded: refundedAmount > 0
      ? `Refunded ${formatAmount(refundedAmount, order.currency)} of ` +
        `${formatAmount(order.amountTotal, order.currency)}`
      : null,
    settled: SETTLED.has(order.status),
    attemptDone: PAID.has(order.status),
  };
}
