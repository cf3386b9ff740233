/**
 * The Checkout Session object as Stripe's API returns it, built from validated create parameters
 * with the values Stripe gives a plain new session, its line item objects, and its completion and
 * expiry (Stripe clears `url` once a session is no longer open).
 */
import { randomId } from "./helpers.ts";
import type { CheckoutMode, CreateInput, ResolvedLineItem, UiMode } from "./params.ts";

/** A Checkout Session object as the API returns it. */
export interface CheckoutSession {
  id: string;
  object: "checkout.session";
  mode: CheckoutMode;
  ui_mode: UiMode;
  status: "open" | "complete" | "expired";
  payment_status: "unpaid" | "paid" | "no_payment_required";
  url: string | null;
  client_secret: string | null;
  amount_subtotal: number | null;
  amount_total: number | null;
  currency: string | null;
  customer: string | null;
  customer_email: string | null;
  client_reference_id: string | null;
  metadata: Record<string, string>;
  created: number;
  expires_at: number;
  livemode: false;
  success_url: string | null;
  cancel_url: string | null;
  payment_intent: string | null;
  [field: string]: unknown;
}

/** A new open session for validated create parameters. */
export function buildSession(
  input: CreateInput,
  baseUrl: string,
  nowSeconds: number,
): CheckoutSession {
  const id = randomId("cs_test_", 58);
  const total = input.mode === "setup"
    ? null
    : input.lineItems.reduce((sum, item) => sum + item.unitAmount * item.quantity, 0);
  const hosted = input.uiMode === "hosted_page";
  return {
    id,
    object: "checkout.session",
    ...SESSION_DEFAULTS,
    mode: input.mode,
    ui_mode: input.uiMode,
    status: "open",
    payment_status: input.mode === "setup" ? "no_payment_required" : "unpaid",
    url: hosted ? `${baseUrl}/c/pay/${id}` : null,
    client_secret: hosted ? null : `${id}_secret_${randomId("", 24)}`,
    amount_subtotal: total,
    amount_total: total,
    currency: input.currency,
    customer: input.customer,
    customer_creation: input.mode === "subscription" ? null : "if_required",
    customer_email: input.customerEmail,
    client_reference_id: input.clientReferenceId,
    metadata: input.metadata,
    created: nowSeconds,
    expires_at: input.expiresAt,
    livemode: false,
    success_url: input.successUrl,
    cancel_url: input.cancelUrl,
    ...(input.returnUrl ? { return_url: input.returnUrl } : {}),
    payment_intent: null,
    total_details: total === null
      ? null
      : { amount_discount: 0, amount_shipping: 0, amount_tax: 0 },
  };
}

// The rest of the Session object's fields, with the values Stripe gives a plain new session.
const SESSION_DEFAULTS = {
  adaptive_pricing: null,
  after_expiration: null,
  allow_promotion_codes: null,
  allowed_payment_method_types: null,
  automatic_tax: { enabled: false, liability: null, provider: null, status: null },
  billing_address_collection: null,
  collected_information: null,
  consent: null,
  consent_collection: null,
  currency_conversion: null,
  custom_fields: [],
  custom_text: {
    after_submit: null,
    shipping_address: null,
    submit: null,
    terms_of_service_acceptance: null,
  },
  customer_account: null,
  customer_details: null,
  discounts: [],
  integration_identifier: null,
  invoice: null,
  invoice_creation: null,
  locale: null,
  managed_payments: null,
  origin_context: null,
  payment_link: null,
  payment_method_collection: "always",
  payment_method_configuration_details: null,
  payment_method_options: {},
  payment_method_types: ["card"],
  permissions: null,
  recovered_from: null,
  saved_payment_method_options: null,
  setup_intent: null,
  shipping_address_collection: null,
  shipping_cost: null,
  shipping_options: [],
  submit_type: null,
  subscription: null,
  wallet_options: null,
} as const;

/** A line item as `GET /v1/checkout/sessions/:id/line_items` lists it. */
export function lineItemObject(item: ResolvedLineItem, created: number): Record<string, unknown> {
  const amount = item.unitAmount * item.quantity;
  return {
    id: item.id,
    object: "item",
    amount_discount: 0,
    amount_subtotal: amount,
    amount_tax: 0,
    amount_total: amount,
    currency: item.currency,
    description: item.name,
    price: {
      id: item.priceId,
      object: "price",
      active: true,
      billing_scheme: "per_unit",
      created,
      currency: item.currency,
      livemode: false,
      metadata: {},
      product: item.productId,
      type: "one_time",
      unit_amount: item.unitAmount,
      unit_amount_decimal: String(item.unitAmount),
    },
    quantity: item.quantity,
  };
}

/** Marks a session paid (or set up), as the customer completing Checkout does. */
export function markCompleted(session: CheckoutSession): void {
  session.status = "complete";
  session.url = null;
  if (session.mode === "setup") {
    session.setup_intent = randomId("seti_", 24);
    return;
  }
  session.payment_status = "paid";
  if (session.mode === "subscription") session.subscription = randomId("sub_", 24);
  else session.payment_intent = randomId("pi_", 24);
  session.customer_details = { email: session.customer_email, name: null, phone: null };
}

/** Marks a session expired. */
export function markExpired(session: CheckoutSession): void {
  session.status = "expired";
  session.url = null;
}
