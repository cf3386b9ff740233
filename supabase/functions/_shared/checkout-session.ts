/**
 * The Checkout Session parameters of an order, built only from what the database returned for
 * it. The live request and the reconciler both use this, so a retried Stripe call under the
 * same key sends exactly the same parameters (Stripe rejects a key reused with others).
 */
import type Stripe from "stripe";
import type { CheckoutClaim } from "./db.ts";

/** Stripe accepts a session's `expires_at` from 30 minutes to 24 hours after its creation. */
export const STRIPE_SESSION_MIN_SECONDS = 30 * 60;
export const STRIPE_SESSION_MAX_SECONDS = 24 * 60 * 60;

/**
 * Seconds the seat hold (and so `expires_at`) adds to the session TTL, so that the 30-minute
 * minimum still holds when the Stripe call starts a little after the hold.
 */
export const HOLD_GRACE_SECONDS = 120;

/** Parameters for stripe.checkout.sessions.create for the claimed order. */
export function checkoutSessionParams(claim: CheckoutClaim): Stripe.Checkout.SessionCreateParams {
  const { orderId, eventId, currency, holdExpiresAt, stripeIdempotencyKey, successUrl, cancelUrl } =
    claim;
  if (
    !orderId || !eventId || !currency || !holdExpiresAt || !stripeIdempotencyKey || !successUrl ||
    !cancelUrl
  ) {
    throw new Error("Cannot build Checkout Session parameters: the claim has no complete order");
  }
  const metadata = { order_id: orderId, event_id: eventId, operation_key: stripeIdempotencyKey };
  return {
    mode: "payment",
    line_items: claim.lines.map((line) => ({
      quantity: line.quantity,
      price_data: {
        currency,
        unit_amount: line.unit_amount,
        product_data: { name: line.product_name, metadata: { tier_id: line.tier_id } },
      },
    })),
    client_reference_id: orderId,
    metadata,
    payment_intent_data: { metadata },
    ...(claim.customerEmail ? { customer_email: claim.customerEmail } : {}),
    success_url: successUrl,
    cancel_url: cancelUrl,
    // The seat hold and the session end together.
    expires_at: Math.floor(holdExpiresAt.getTime() / 1000),
  };
}
