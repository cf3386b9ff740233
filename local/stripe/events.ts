/**
 * The events the server emits, and how listeners hear of them: each Checkout Session completion
 * or expiry, each refund change and each dispute opened is told to `onEvent` (every event) and,
 * for sessions, to `onSessionChange`, with a copy of the object, as Stripe would deliver it to a
 * webhook endpoint. webhooks.ts turns them into signed deliveries.
 *
 * What each change emits, in this order (Stripe itself does not promise delivery order, so a
 * webhook must not depend on it):
 * - a session completed or expired: `checkout.session.completed` | `checkout.session.expired`;
 * - a refund created: `refund.created` (the Refund), then `charge.refunded` (the Charge);
 * - a pending refund settled: `refund.updated` (the Refund), then, if it failed, `refund.failed`;
 * - a dispute opened: `charge.dispute.created` (the Dispute).
 */

/** Stripe event types a Checkout Session change corresponds to. */
export type CheckoutEventType = "checkout.session.completed" | "checkout.session.expired";
/** Stripe event types a refund corresponds to (`charge.refunded` carries the Charge). */
export type RefundEventType =
  | "refund.created"
  | "charge.refunded"
  | "refund.updated"
  | "refund.failed";
/** Stripe event types a dispute corresponds to (they carry the Dispute). */
export type DisputeEventType = "charge.dispute.created";
/** Every event type the server emits. */
export type StripeEventType = CheckoutEventType | RefundEventType | DisputeEventType;

/** What an event carries beyond its object (Stripe's `request` and `data.previous_attributes`). */
export interface EventContext {
  /** The API request that caused the event; absent when none did (a customer paid). */
  request?: { id: string; idempotencyKey: string | null };
  /** The changed fields' values before the change. */
  previousAttributes?: Record<string, unknown>;
}

/**
 * The object an event is about (`data.object`): a Checkout Session, a Charge, a Refund or a
 * Dispute.
 */
export interface EventObject {
  id: string;
  object: string;
}

/** A listener for events; a returned promise is awaited where the docs of the hook say so. */
export type EventListener = (
  object: EventObject,
  type: StripeEventType,
  context: EventContext,
) => unknown;

/** The listener every module's state reads (at each use, as given to `startStripeServer`). */
export interface EventOptions {
  /**
   * Called after every event the server emits (session completed or expired, refund created,
   * charge refunded, refund updated or failed, dispute created), e.g. with
   * `createWebhookForwarder`. Sessions are also told to
   * `onSessionChange`: give a forwarder to one of the two, not both.
   */
  onEvent?: EventListener;
}

/**
 * Tells `listener` (if any) about an event with a copy of `object`; the promise settles when a
 * promise the listener returned does, and never rejects (a failing listener is logged).
 */
export function notify(
  listener: EventListener | undefined,
  event: { object: EventObject; type: StripeEventType; context?: EventContext },
): Promise<void> {
  if (!listener) return Promise.resolve();
  const failed = (error: unknown) =>
    console.error(`stripe-server: a listener threw for ${event.type}:`, error);
  try {
    const result = listener(structuredClone(event.object), event.type, event.context ?? {});
    return Promise.resolve(result).then(() => {}, failed);
  } catch (error) {
    failed(error);
    return Promise.resolve();
  }
}
