/**
 * The Stripe webhook handler: verify the signature over the raw body, then store and apply the
 * event once in one database statement. Stripe redelivers anything that does not get a 2xx,
 * for up to three days, so a failure to apply answers 500 and is retried.
 */
import Stripe from "stripe";
import { processWebhookEvent, type Sql } from "./db.ts";
import { apiError } from "./errors.ts";
import { envelope, json, readRawText, type RequestContext, type RequestLog } from "./http.ts";

/** What the webhook handler needs. */
export interface WebhookDeps {
  sql: Sql;
  stripe: Stripe;
  /** STRIPE_WEBHOOK_SECRET, `whsec_…`. */
  webhookSecret: string;
  log?: RequestLog;
}

/** Stripe's events are far below this; a larger body is not an event of ours. */
const MAX_EVENT_BYTES = 1024 * 1024;

/** Outcomes that mean "delivered, nothing more to do" (answered 200). */
const ACKNOWLEDGED = new Set([
  "paid",
  "expired",
  "cancelled",
  "awaiting_payment",
  "noop",
  "ignored",
  "duplicate",
  "unmatched",
  "mismatch",
  "capacity_conflict",
]);

/** Builds the webhook handler. */
export function createWebhookHandler(deps: WebhookDeps): (request: Request) => Promise<Response> {
  const cryptoProvider = Stripe.createSubtleCryptoProvider();
  return envelope(
    {
      fn: "stripe-webhook",
      action: "accept webhook",
      log: deps.log,
      unexpected: apiError("temporarily_unavailable", { reason: "Stripe will redeliver it" }),
    },
    (request, context) => handle(request, deps, cryptoProvider, context),
  );
}

async function handle(
  request: Request,
  deps: WebhookDeps,
  cryptoProvider: ReturnType<typeof Stripe.createSubtleCryptoProvider>,
  context: RequestContext,
): Promise<Response> {
  const signature = request.headers.get("stripe-signature");
  if (!signature) throw apiError("signature_missing");
  // The signature covers the exact bytes, so the body is read raw and never re-serialized.
  const body = await readRawText(request, MAX_EVENT_BYTES);

  let event: Stripe.Event;
  try {
    event = await deps.stripe.webhooks.constructEventAsync(
      body,
      signature,
      deps.webhookSecret,
      undefined,
      cryptoProvider,
    );
  } catch {
    throw apiError("signature_invalid");
  }
  if (
    !event || typeof event.id !== "string" || !/^evt_[A-Za-z0-9_]+$/.test(event.id) ||
    typeof event.type !== "string" || typeof event.data !== "object" || event.data === null
  ) {
    throw apiError("invalid_event");
  }
  context.note({ event: event.id, type: event.type });

  const result = await context.db(() =>
    processWebhookEvent(deps.sql, {
      id: event.id,
      type: event.type,
      livemode: event.livemode === true,
      payload: event,
    })
  );
  context.note({ outcome: result.outcome });
  if (result.orderId) context.note({ order: result.orderId });
  if (result.detail) context.note({ detail: result.detail });
  if (!ACKNOWLEDGED.has(result.outcome)) throw apiError("processing_failed");
  return json(200, { received: true, outcome: result.outcome });
}
