/** Signed Stripe webhook deliveries for tests, made the way Stripe signs them. */
import Stripe from "stripe";
import {
  processWebhookEvent,
  type Sql,
  type WebhookResult,
} from "../../supabase/functions/_shared/db.ts";
import { type CheckoutSession, WEBHOOK_API_VERSION } from "../../local/stripe/mod.ts";

/** The signing secret the tests configure stripe-webhook with. */
export const TEST_WEBHOOK_SECRET = "whsec_test_secret_for_local_runs_only";

const signer = new Stripe("sk_test_signer");
const cryptoProvider = Stripe.createSubtleCryptoProvider();

/** A fresh Stripe-style event id, `evt_` and 32 hex digits unless another prefix is given. */
export function newEventId(prefix = "evt_"): string {
  return `${prefix}${crypto.randomUUID().replaceAll("-", "")}`;
}

/** A Stripe event JSON for a Checkout Session. */
export function sessionEvent(
  type: string,
  session: Partial<CheckoutSession> & { id: string },
  id = newEventId(),
): string {
  return JSON.stringify({
    id,
    object: "event",
    api_version: WEBHOOK_API_VERSION,
    created: Math.floor(Date.now() / 1000),
    livemode: false,
    pending_webhooks: 1,
    type,
    data: { object: session },
  });
}

/** A POST to stripe-webhook with a valid (or deliberately broken) Stripe-Signature. */
export async function signedDelivery(
  payload: string,
  options: { secret?: string; timestamp?: number; signature?: string | null } = {},
): Promise<Request> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.signature !== null) {
    headers["stripe-signature"] = options.signature ??
      await signer.webhooks.generateTestHeaderStringAsync({
        payload,
        secret: options.secret ?? TEST_WEBHOOK_SECRET,
        timestamp: options.timestamp,
        cryptoProvider,
      });
  }
  return new Request("http://functions.test/functions/v1/stripe-webhook", {
    method: "POST",
    headers,
    body: payload,
  });
}

/**
 * Applies a Stripe event for a Checkout Session through the webhook's own SQL function
 * (process_stripe_webhook_event), as stripe-webhook does once the signature checked out.
 */
export function applySessionEvent(
  sql: Sql,
  event: { type: string; session: unknown; id?: string },
): Promise<WebhookResult> {
  return processWebhookEvent(sql, {
    id: event.id ?? newEventId(),
    type: event.type,
    livemode: false,
    payload: { type: event.type, data: { object: event.session } },
  });
}
