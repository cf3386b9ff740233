/**
 * The Checkout Session parameters of an order, built only from what the database returned for
 * it. The live request and the reconciler both use this, so a retried Stripe call under the
 * same key sends exactly the same parameters (Stripe rejects a key reused with others).
 */
import type Stripe from "stripe";
import type { ArmedClaim } from "./db.ts";

/** Stripe accepts a session's `expires_at` from 30 minutes to 24 hours after its creation. */
export const STRIPE_SESSION_MIN_SECONDS = 30 * 60;
export const STRIPE_SESSION_MAX_SECONDS = 24 * 60 * 60;

/**
 * Seconds the seat hold (and so `expires_at`) adds to the session TTL, so that the 30-minute
 * minimum still holds when the Stripe call starts a little after the hold.
 */
export const HOLD_GRACE_SECONDS = 120;

/** Parameters for stripe.checkout.sessions.create for the claimed order. */
export function checkoutSessionParams(claim: ArmedClaim): Stripe.Checkout.SessionCreateParams {
  const { order, stripeIdempotencyKey } = claim;
  const metadata = {
    order_id: order.orderId,
    event_id: order.eventId,
    operation_key: stripeIdempotencyKey,
  };
  return {
    mode: "payment",
    line_items: order.lines.map((line) => ({
      quantity: line.quantity,
      price_data: {
        currency: order.currency,
        unit_amount: line.unit_amount,
        product_data: { name: line.product_name, metadata: { tier_id: line.tier_id } },
      },
    })),
    client_reference_id: order.orderId,
    metadata,
    payment_intent_data: { metadata },
    ...(order.customerEmail ? { customer_email: order.customerEmail } : {}),
    success_url: order.successUrl,
    cancel_url: order.cancelUrl,
    // Stripe's session ends at the claim's expires_at; the seats may outlive it (see the grace).
    expires_at: Math.floor(order.holdExpiresAt.getTime() / 1000),
  };
}
