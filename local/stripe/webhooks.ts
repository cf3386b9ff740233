/**
 * Webhook forwarding, as `stripe listen --forward-to` does: with `createWebhookForwarder` as
 * `onEvent` (every event: sessions completed or expired, refunds created, updated or failed,
 * charges refunded, disputes created) or as `onSessionChange` (sessions only), events are
 * delivered signed (`Stripe-Signature: t=…,v1=…`) to a webhook endpoint, retried (bounded) as
 * Stripe retries a failed delivery.
 */
import type { CheckoutEventType, EventContext, EventObject, StripeEventType } from "./events.ts";
import { randomId } from "./helpers.ts";
import type { CheckoutSession } from "./session-object.ts";

/** The API version stamped on forwarded events (the one the project's SDK pins). */
export const WEBHOOK_API_VERSION = "2026-10-28.endive";

/** Options for `createWebhookForwarder`. */
export interface WebhookForwarderOptions {
  /** The endpoint to POST events to; a function is asked at each delivery. */
  url: string | (() => string);
  /** The endpoint's signing secret (`whsec_...`). */
  secret: string;
  /** Deliveries tried per event, with a doubling pause between them (default 4). */
  attempts?: number;
  /** Per-delivery timeout (default 10 s). */
  timeoutMs?: number;
  /** One line per delivery attempt (default: console.log). */
  log?: (line: string) => void;
}

/** How an event's delivery ended. */
export interface WebhookDelivery {
  eventId: string;
  type: StripeEventType;
  /** The endpoint's last status, or null when it was never reached. */
  status: number | null;
  attempts: number;
}

/** The `Stripe-Signature` header Stripe sends: `t=<unix seconds>,v1=<hex HMAC-SHA256>`. */
export async function stripeSignatureHeader(
  payload: string,
  secret: string,
  timestamp: number = Math.floor(Date.now() / 1000),
): Promise<string> {
  const mac = await hmacSha256(secret, new TextEncoder().encode(`${timestamp}.${payload}`));
  const hex = Array.from(mac, (byte) => byte.toString(16).padStart(2, "0"));
  return `t=${timestamp},v1=${hex.join("")}`;
}

/** HMAC-SHA256 of `data` under `secret` (Stripe's webhook signatures, HS256 tokens). */
export async function hmacSha256(
  secret: string,
  data: Uint8Array<ArrayBuffer>,
): Promise<Uint8Array> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
}

/**
 * The event JSON Stripe sends about `object`: `data.previous_attributes` and `request` (the API
 * request and idempotency key behind it, null for none) from `context`.
 */
export function stripeEvent(
  object: EventObject,
  type: StripeEventType,
  context: EventContext = {},
): string {
  const data = context.previousAttributes
    ? { object, previous_attributes: context.previousAttributes }
    : { object };
  return JSON.stringify(
    {
      id: randomId("evt_", 24),
      object: "event",
      api_version: WEBHOOK_API_VERSION,
      created: Math.floor(Date.now() / 1000),
      data,
      livemode: false,
      pending_webhooks: 1,
      request: {
        id: context.request?.id ?? null,
        idempotency_key: context.request?.idempotencyKey ?? null,
      },
      type,
    },
    null,
    2,
  );
}

/** The event Stripe sends for a Checkout Session change. */
export function checkoutSessionEvent(session: CheckoutSession, type: CheckoutEventType): string {
  return stripeEvent(session, type);
}

/**
 * An `onEvent` (or `onSessionChange`) that POSTs each event signed to `url`, retrying (bounded)
 * on a network failure or a non-2xx answer, as Stripe retries a failed delivery.
 */
export function createWebhookForwarder(
  options: WebhookForwarderOptions,
): (
  object: EventObject,
  type: StripeEventType,
  context?: EventContext,
) => Promise<WebhookDelivery> {
  const attempts = Math.max(1, options.attempts ?? 4);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const log = options.log ?? ((line: string) => console.log(line));
  return async (object, type, context) => {
    const payload = stripeEvent(object, type, context);
    const eventId = (JSON.parse(payload) as { id: string }).id;
    const delivery: WebhookDelivery = { eventId, type, status: null, attempts: 0 };
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (attempt > 1) await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
      delivery.attempts = attempt;
      const url = typeof options.url === "function" ? options.url() : options.url;
      let outcome: string;
      try {
        const response = await fetch(url, {
          method: "POST",
          headers: {
            "content-type": "application/json; charset=utf-8",
            "stripe-signature": await stripeSignatureHeader(payload, options.secret),
            "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
          },
          body: payload,
          signal: AbortSignal.timeout(timeoutMs),
        });
        await response.body?.cancel();
        delivery.status = response.status;
        outcome = String(response.status);
      } catch (error) {
        outcome = `failed (${error instanceof Error ? error.message : String(error)})`;
      }
      log(`stripe-server: ${type} ${eventId} for ${object.id} -> ${url}: ${outcome}`);
      if (delivery.status !== null && delivery.status >= 200 && delivery.status < 300) break;
    }
    return delivery;
  };
}
