/**
 * Payments and refunds: the Charge behind each paid Checkout Session, and the Refunds API
 * (`POST /v1/refunds`, `GET /v1/refunds`, `GET /v1/refunds/:id`) with Stripe's rules
 * (docs.stripe.com/api/refunds, /refunds, /error-codes, /api/pagination,
 * /changelog/2022-11-15/deprecates-charges-auto-expand, /changelog/acacia/2024-10-28/
 * refund-webhook-update):
 * - A completed payment session's `payment_intent` has one succeeded Charge (`ch_…`) for the
 *   session's `amount_total` and `currency`; a refund names that `payment_intent` or the `charge`.
 * - Parameters: exactly one of `payment_intent` and `charge`; `amount` a positive integer in minor
 *   units (default: all that is left); `reason` duplicate, fraudulent or requested_by_customer;
 *   `metadata`. Problems with them, and an unknown payment intent or charge (`resource_missing`),
 *   are 400s naming the `param` that are not saved under the idempotency key (params.ts).
 * - Refunds never together exceed the charge: a charge refunded in full is a 400
 *   `charge_already_refunded`, an amount above what is left a 400 `amount_too_large`, and a
 *   charge with an open dispute (disputes.ts) a 400 `charge_disputed`. These depend on the charge
 *   when the endpoint runs, so, like a success, they are saved under the key.
 * - A refund is `succeeded` at once, or `pending` (option `refundStatus`) until `settleRefund`
 *   makes it `succeeded` or `failed`. `amount_refunded` counts pending and succeeded refunds; a
 *   failed one gives its amount back.
 * - `GET /v1/refunds` lists refunds newest first, filtered by `payment_intent`, `charge` (an
 *   unknown one is a 400 `resource_missing`) and `created`, in pages (list.ts).
 * - Each refund emits `refund.created` (the Refund), then `charge.refunded` (the Charge with its
 *   new `amount_refunded` and `refunded`); each settlement `refund.updated` (the Refund), then
 *   `refund.failed` if it failed. Since API version 2022-11-15 a Charge no longer embeds its
 *   `refunds` list, so neither does `charge.refunded`: a webhook learns the refunds from
 *   `refund.created`/`refund.updated`, or by listing them (`GET /v1/refunds?charge=`).
 */
import type { Dispute } from "./disputes.ts";
import { type EventOptions, notify } from "./events.ts";
import type { FormValue } from "./form.ts";
import { formatMoney, randomId } from "./helpers.ts";
import { listPage, PAGINATION_PARAMS, parsePage } from "./list.ts";
import { errorOutcome, okOutcome, type Outcome } from "./outcome.ts";
import {
  ParamError,
  parseEnum,
  parseMetadata,
  readInteger,
  readList,
  readObject,
  readString,
  rejectUnknown,
} from "./params.ts";
import type { ApiCall, Route } from "./routes.ts";
import type { CheckoutSession } from "./session-object.ts";

/** Reasons a refund may be created with. */
export type RefundReason = "duplicate" | "fraudulent" | "requested_by_customer";
/** A refund's status. */
export type RefundStatus = "pending" | "succeeded" | "failed";

/** A Charge object as the API returns it (the one charge of a paid session's PaymentIntent). */
export interface Charge {
  id: string;
  object: "charge";
  amount: number;
  amount_captured: number;
  /** Pending and succeeded refunds together. */
  amount_refunded: number;
  balance_transaction: string;
  captured: true;
  created: number;
  currency: string;
  customer: string | null;
  livemode: false;
  metadata: Record<string, string>;
  paid: true;
  payment_intent: string;
  payment_method: string;
  /** Whether it is refunded in full. */
  refunded: boolean;
  /** Whether it has a dispute (disputes.ts). */
  disputed: boolean;
  status: "succeeded";
  [field: string]: unknown;
}

/** A Refund object as the API returns it. */
export interface Refund {
  id: string;
  object: "refund";
  amount: number;
  balance_transaction: string;
  charge: string;
  created: number;
  currency: string;
  metadata: Record<string, string>;
  payment_intent: string;
  reason: RefundReason | null;
  status: RefundStatus;
  [field: string]: unknown;
}

/** The options the refund state reads (at each use, as given to `startStripeServer`). */
export interface RefundOptions extends EventOptions {
  /** The status new refunds get (default "succeeded"); pending ones wait for `settleRefund`. */
  refundStatus?: "succeeded" | "pending";
}

/** The server's charges, their refunds and disputes. */
export interface RefundState {
  options: RefundOptions;
  /** Clock in milliseconds. */
  now: () => number;
  /** Charges by id. */
  charges: Map<string, Charge>;
  /** Charge ids by PaymentIntent id. */
  chargeByPaymentIntent: Map<string, string>;
  /** Refunds by id. */
  refunds: Map<string, Refund>;
  /** Refunds actually created (replays do not count). */
  created: number;
  /** Disputes by id (disputes.ts). */
  disputes: Map<string, Dispute>;
  /** Dispute ids by Charge id: a charge has at most one. */
  disputeByCharge: Map<string, string>;
}

/** No charges, refunds or disputes yet; `options` is read at each use. */
export function createRefundState(options: RefundOptions, now: () => number): RefundState {
  return {
    options,
    now,
    charges: new Map(),
    chargeByPaymentIntent: new Map(),
    refunds: new Map(),
    created: 0,
    disputes: new Map(),
    disputeByCharge: new Map(),
  };
}

/** Forgets every charge, refund and dispute. */
export function resetRefunds(state: RefundState): void {
  state.charges.clear();
  state.chargeByPaymentIntent.clear();
  state.refunds.clear();
  state.created = 0;
  state.disputes.clear();
  state.disputeByCharge.clear();
}

function nowSeconds(state: RefundState): number {
  return Math.floor(state.now() / 1000);
}

/** Records the succeeded Charge of a session just completed with a `payment_intent`. */
export function recordPayment(state: RefundState, session: CheckoutSession): Charge {
  const paymentIntent = session.payment_intent;
  if (!paymentIntent) {
    throw new Error(`Cannot record a payment for ${session.id}: no payment_intent`);
  }
  const amount = session.amount_total ?? 0;
  const charge: Charge = {
    id: randomId("ch_", 24),
    object: "charge",
    amount,
    amount_captured: amount,
    amount_refunded: 0,
    application: null,
    application_fee: null,
    application_fee_amount: null,
    balance_transaction: randomId("txn_", 24),
    billing_details: {
      address: null,
      email: session.customer_email,
      name: null,
      phone: null,
    },
    captured: true,
    created: nowSeconds(state),
    currency: session.currency ?? "usd",
    customer: session.customer,
    description: null,
    disputed: false,
    failure_code: null,
    failure_message: null,
    livemode: false,
    metadata: {},
    outcome: {
      network_status: "approved_by_network",
      reason: null,
      risk_level: "normal",
      seller_message: "Payment complete.",
      type: "authorized",
    },
    paid: true,
    payment_intent: paymentIntent,
    payment_method: randomId("pm_", 24),
    payment_method_details: {
      card: { brand: "visa", last4: "4242", funding: "credit" },
      type: "card",
    },
    receipt_email: null,
    refunded: false,
    status: "succeeded",
  };
  state.charges.set(charge.id, charge);
  state.chargeByPaymentIntent.set(paymentIntent, charge.id);
  return charge;
}

/** The charge of a PaymentIntent, or undefined. */
export function chargeOf(state: RefundState, paymentIntentId: string): Charge | undefined {
  const id = state.chargeByPaymentIntent.get(paymentIntentId);
  return id === undefined ? undefined : state.charges.get(id);
}

/** What a PaymentIntent's charge has refunded (pending and succeeded); throws if it is unknown. */
export function refundedAmount(state: RefundState, paymentIntentId: string): number {
  const charge = chargeOf(state, paymentIntentId);
  if (!charge) throw new Error(`Cannot read refunds of ${paymentIntentId}: no such payment_intent`);
  return charge.amount_refunded;
}

/**
 * Settles a pending refund as `succeeded` or `failed` (which gives its amount back to the charge)
 * and emits `refund.updated`, then `refund.failed` if it failed; returns a copy. Throws unless
 * the refund is pending.
 */
export function settleRefund(
  state: RefundState,
  settlement: { id: string; status: "succeeded" | "failed" },
): Refund {
  const { id, status } = settlement;
  const refund = state.refunds.get(id);
  if (!refund) throw new Error(`Cannot settle refund ${id}: no such refund`);
  if (refund.status !== "pending") {
    throw new Error(`Cannot settle refund ${id}: its status is ${refund.status}, not pending`);
  }
  const previousAttributes: Record<string, unknown> = { status: refund.status };
  refund.status = status;
  if (status === "failed") {
    previousAttributes.failure_balance_transaction = null;
    previousAttributes.failure_reason = null;
    refund.failure_balance_transaction = randomId("txn_", 24);
    refund.failure_reason = "expired_or_canceled_card";
    const charge = state.charges.get(refund.charge);
    if (charge) {
      charge.amount_refunded -= refund.amount;
      charge.refunded = charge.amount_refunded >= charge.amount;
    }
  }
  notify(state.options.onEvent, {
    object: refund,
    type: "refund.updated",
    context: { previousAttributes },
  });
  if (status === "failed") notify(state.options.onEvent, { object: refund, type: "refund.failed" });
  return structuredClone(refund);
}

// ---------------------------------------------------------------------------------------------
// API routes
// ---------------------------------------------------------------------------------------------

/** The Refunds endpoints, bound to `state`. */
export function refundRoutes(state: RefundState): Route[] {
  return [
    { method: "POST", pattern: /^\/v1\/refunds$/, handle: (call) => createRefund(state, call) },
    { method: "GET", pattern: /^\/v1\/refunds$/, handle: (call) => listRefunds(state, call) },
    {
      method: "GET",
      pattern: /^\/v1\/refunds\/([^/]+)$/,
      handle: (call) => retrieveRefund(state, call),
    },
  ];
}

// Top-level parameters of RefundCreateParams in the SDK's pinned API version; the ones not
// modelled here are accepted and ignored.
const CREATE_PARAMS = new Set(
  ("amount charge currency customer expand instructions_email metadata origin payment_intent " +
    "reason refund_application_fee reverse_transfer").split(" "),
);
const REASONS: readonly RefundReason[] = ["duplicate", "fraudulent", "requested_by_customer"];
const EXPAND_ONLY = new Set(["expand"]);

interface RefundInput {
  target: { param: "payment_intent" | "charge"; id: string };
  amount: number | undefined;
  reason: RefundReason | null;
  metadata: Record<string, string>;
}

/** Validates `POST /v1/refunds` parameters as Stripe does; throws `ParamError`. */
function parseRefundParams(params: ApiCall["params"]): RefundInput {
  rejectUnknown(params, CREATE_PARAMS);
  const paymentIntent = readString(params.payment_intent, "payment_intent") || undefined;
  const charge = readString(params.charge, "charge") || undefined;
  if (paymentIntent && charge) {
    throw new ParamError(
      "You may only specify one of these parameters: charge, payment_intent.",
      "payment_intent",
      "parameters_exclusive",
    );
  }
  if (!paymentIntent && !charge) {
    throw new ParamError(
      "One of the following params should be provided for this request: payment_intent or charge.",
      "payment_intent",
      "parameter_missing",
    );
  }
  const amount = readInteger(params.amount, "amount");
  if (amount !== undefined && amount < 1) {
    throw new ParamError("Invalid positive integer", "amount", "parameter_invalid_integer");
  }
  const reason = readString(params.reason, "reason") || undefined;
  readList(params.expand, "expand");
  return {
    target: paymentIntent
      ? { param: "payment_intent", id: paymentIntent }
      : { param: "charge", id: charge ?? "" },
    amount,
    reason: reason === undefined ? null : parseEnum(reason, REASONS, "reason"),
    metadata: parseMetadata(params.metadata, "metadata"),
  };
}

// A payment intent or charge named in the parameters and not found is a parameter problem.
function targetCharge(state: RefundState, target: RefundInput["target"]): Charge {
  const charge = target.param === "payment_intent"
    ? chargeOf(state, target.id)
    : state.charges.get(target.id);
  if (!charge) {
    throw new ParamError(
      `No such ${target.param}: '${target.id}'`,
      target.param,
      "resource_missing",
    );
  }
  return charge;
}

function createRefund(state: RefundState, call: ApiCall): Outcome {
  const input = parseRefundParams(call.params);
  const charge = targetCharge(state, input.target);
  const disputeId = state.disputeByCharge.get(charge.id);
  if (disputeId !== undefined && state.disputes.get(disputeId)?.is_charge_refundable === false) {
    return errorOutcome(400, {
      type: "invalid_request_error",
      code: "charge_disputed",
      message: `Charge ${charge.id} has been charged back; it cannot be refunded while its ` +
        `dispute ${disputeId} is open.`,
    }, true);
  }
  const left = charge.amount - charge.amount_refunded;
  if (charge.refunded || left <= 0) {
    return errorOutcome(400, {
      type: "invalid_request_error",
      code: "charge_already_refunded",
      message: `Charge ${charge.id} has already been refunded.`,
    }, true);
  }
  const amount = input.amount ?? left;
  if (amount > left) {
    const limit = charge.amount_refunded === 0 ? "charge amount" : "unrefunded amount on charge";
    return errorOutcome(400, {
      type: "invalid_request_error",
      code: "amount_too_large",
      param: "amount",
      message: `Refund amount (${formatMoney(amount, charge.currency)}) is greater than ` +
        `${limit} (${formatMoney(left, charge.currency)})`,
    }, true);
  }
  const refund: Refund = {
    id: randomId("re_", 24),
    object: "refund",
    amount,
    balance_transaction: randomId("txn_", 24),
    charge: charge.id,
    created: nowSeconds(state),
    currency: charge.currency,
    customer: charge.customer,
    metadata: input.metadata,
    payment_intent: charge.payment_intent,
    payment_method: charge.payment_method,
    reason: input.reason,
    receipt_number: null,
    source_transfer_reversal: null,
    status: state.options.refundStatus ?? "succeeded",
    transfer_reversal: null,
  };
  state.refunds.set(refund.id, refund);
  state.created += 1;
  notify(state.options.onEvent, {
    object: refund,
    type: "refund.created",
    context: { request: call.request },
  });
  const previousAttributes: Record<string, unknown> = { amount_refunded: charge.amount_refunded };
  charge.amount_refunded += amount;
  if (charge.amount_refunded >= charge.amount) {
    previousAttributes.refunded = charge.refunded;
    charge.refunded = true;
  }
  notify(state.options.onEvent, {
    object: charge,
    type: "charge.refunded",
    context: { request: call.request, previousAttributes },
  });
  return okOutcome(structuredClone(refund));
}

function retrieveRefund(state: RefundState, { params, pathArgs: [id = ""] }: ApiCall): Outcome {
  rejectUnknown(params, EXPAND_ONLY);
  const refund = state.refunds.get(id);
  if (refund) return okOutcome(structuredClone(refund));
  return errorOutcome(404, {
    type: "invalid_request_error",
    code: "resource_missing",
    param: "id",
    message: `No such refund: '${id}'`,
  });
}

// Parameters of RefundListParams in the SDK's pinned API version.
const LIST_PARAMS = new Set([
  "charge",
  "created",
  "expand",
  "payment_intent",
  ...PAGINATION_PARAMS,
]);
const RANGE_KEYS = new Set(["gt", "gte", "lt", "lte"]);

/** `created` as a list filter: an exact Unix time or a range (`created[gte]=…`). */
function parseCreated(value: FormValue | undefined): (created: number) => boolean {
  if (value === undefined || value === "") return () => true;
  if (typeof value === "string") {
    const exact = readInteger(value, "created");
    return (created) => created === exact;
  }
  const range = readObject(value, "created") ?? {};
  rejectUnknown(range, RANGE_KEYS);
  const bound = (key: string) => readInteger(range[key], `created[${key}]`);
  const [gt, gte, lt, lte] = [bound("gt"), bound("gte"), bound("lt"), bound("lte")];
  return (created) =>
    (gt === undefined || created > gt) && (gte === undefined || created >= gte) &&
    (lt === undefined || created < lt) && (lte === undefined || created <= lte);
}

function listRefunds(state: RefundState, { params }: ApiCall): Outcome {
  rejectUnknown(params, LIST_PARAMS);
  const paymentIntent = readString(params.payment_intent, "payment_intent") || undefined;
  const chargeId = readString(params.charge, "charge") || undefined;
  readList(params.expand, "expand");
  const inRange = parseCreated(params.created);
  const page = parsePage(params);
  // Filters name existing objects, as when creating a refund.
  if (paymentIntent) targetCharge(state, { param: "payment_intent", id: paymentIntent });
  if (chargeId) targetCharge(state, { param: "charge", id: chargeId });
  // Newest first; refunds created in the same second, the later one first.
  const ordered = [...state.refunds.values()].reverse().sort((a, b) => b.created - a.created);
  const list = listPage(ordered, {
    page,
    keep: (refund) =>
      (paymentIntent === undefined || refund.payment_intent === paymentIntent) &&
      (chargeId === undefined || refund.charge === chargeId) && inRange(refund.created),
    url: "/v1/refunds",
    noun: "refund",
  });
  return okOutcome(structuredClone(list));
}
