/**
 * Disputes (docs.stripe.com/api/disputes/object, /disputes): a customer's bank disputes a paid
 * session's charge. Tests open one with `server.disputePayment(paymentIntentId)`, standing in for
 * the cardholder; there is no API route (on Stripe the bank opens disputes, not the merchant).
 * - The Dispute (`dp_…`) names the `charge` and `payment_intent`, disputes the charge's amount
 *   (or less), has a `reason` (default `fraudulent`, what Stripe's dispute test card gives) and
 *   the status of a chargeback awaiting evidence, `needs_response`; the charge becomes
 *   `disputed: true`. A charge has at most one dispute.
 * - While such a dispute is open the charge cannot be refunded (`is_charge_refundable: false`):
 *   `POST /v1/refunds` answers 400 `charge_disputed` (refunds.ts).
 * - Opening it emits `charge.dispute.created` (the Dispute), with no `request`: no API call
 *   caused it.
 */
import { notify } from "./events.ts";
import { randomId } from "./helpers.ts";
import { chargeOf, type RefundState } from "./refunds.ts";

/** Reasons a dispute may be opened with (Stripe's dispute categories). */
export type DisputeReason =
  | "bank_cannot_process"
  | "check_returned"
  | "credit_not_processed"
  | "customer_initiated"
  | "debit_not_authorized"
  | "duplicate"
  | "fraudulent"
  | "general"
  | "incorrect_account_details"
  | "insufficient_funds"
  | "noncompliant"
  | "product_not_received"
  | "product_unacceptable"
  | "subscription_canceled"
  | "unrecognized";

/** A Dispute object as the API returns it. */
export interface Dispute {
  id: string;
  object: "dispute";
  amount: number;
  charge: string;
  created: number;
  currency: string;
  is_charge_refundable: boolean;
  livemode: false;
  metadata: Record<string, string>;
  payment_intent: string;
  reason: DisputeReason;
  status: "needs_response";
  [field: string]: unknown;
}

/** What `disputePayment` may be told beyond the payment intent. */
export interface DisputeOptions {
  /** Disputed amount in minor units, 1 to the charge's amount (default: the charge's amount). */
  amount?: number;
  /** Default `fraudulent`. */
  reason?: DisputeReason;
}

// Stripe gives the merchant a few weeks to respond; the exact window varies by network.
const EVIDENCE_WINDOW_SECONDS = 21 * 24 * 3600;

const EMPTY_EVIDENCE = Object.fromEntries(
  ("access_activity_log billing_address cancellation_policy cancellation_policy_disclosure " +
    "cancellation_rebuttal customer_communication customer_email_address customer_name " +
    "customer_purchase_ip customer_signature duplicate_charge_documentation " +
    "duplicate_charge_explanation duplicate_charge_id product_description receipt refund_policy " +
    "refund_policy_disclosure refund_refusal_explanation service_date service_documentation " +
    "shipping_address shipping_carrier shipping_date shipping_documentation " +
    "shipping_tracking_number uncategorized_file uncategorized_text").split(" ").map((field) => [
      field,
      null,
    ]),
);

/**
 * Opens a dispute on the charge of `paymentIntentId`, as the customer's bank would, and emits
 * `charge.dispute.created`; returns a copy. Throws for an unknown payment intent, a charge
 * already disputed, or an amount outside 1..the charge's amount.
 */
export function disputePayment(
  state: RefundState,
  paymentIntentId: string,
  options: DisputeOptions = {},
): Dispute {
  const charge = chargeOf(state, paymentIntentId);
  if (!charge) throw new Error(`Cannot dispute ${paymentIntentId}: no such payment_intent`);
  if (state.disputeByCharge.has(charge.id)) {
    throw new Error(`Cannot dispute ${paymentIntentId}: charge ${charge.id} is already disputed`);
  }
  const amount = options.amount ?? charge.amount;
  if (!Number.isInteger(amount) || amount < 1 || amount > charge.amount) {
    throw new Error(
      `Cannot dispute ${paymentIntentId}: amount must be an integer 1..${charge.amount}`,
    );
  }
  const created = Math.floor(state.now() / 1000);
  const dispute: Dispute = {
    id: randomId("dp_", 24),
    object: "dispute",
    amount,
    balance_transactions: [],
    charge: charge.id,
    created,
    currency: charge.currency,
    enhanced_eligibility_types: [],
    evidence: { ...EMPTY_EVIDENCE, enhanced_evidence: {} },
    evidence_details: {
      due_by: created + EVIDENCE_WINDOW_SECONDS,
      enhanced_eligibility: {},
      has_evidence: false,
      past_due: false,
      submission_count: 0,
      submission_method: "not_submitted",
    },
    intended_submission_method: null,
    is_charge_refundable: false,
    livemode: false,
    metadata: {},
    payment_intent: charge.payment_intent,
    payment_method_details: {
      card: { brand: "visa", case_type: "chargeback", network: "visa", network_reason_code: null },
      type: "card",
    },
    reason: options.reason ?? "fraudulent",
    status: "needs_response",
  };
  state.disputes.set(dispute.id, dispute);
  state.disputeByCharge.set(charge.id, dispute.id);
  charge.disputed = true;
  notify(state.options.onEvent, { object: dispute, type: "charge.dispute.created" });
  return structuredClone(dispute);
}
