/**
 * The Stripe webhook handler: verify the signature over the raw body, fetch from Stripe what the
 * event no longer carries (charge.refunded: the charge's refunds), then store and apply the
 * event once in one database statement. Stripe redelivers anything that does not get a 2xx,
 * for up to three days, so a failure to fetch (503) or to apply (500) is retried.
 */
import Stripe from "stripe";
import { processWebhookEvent, type Sql } from "./db.ts";
import { apiError } from "./errors.ts";
import { classifyStripeError } from "./idempotency.ts";
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
  "refund",
  "disputed",
]);

/** The SDK's ceiling for auto-pagination; far more refunds than a charge ever gets. */
const MAX_CHARGE_REFUNDS = 10_000;

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

  const related = await relatedObjects(deps.stripe, event, context);
  const result = await context.db(() =>
    processWebhookEvent(deps.sql, {
      id: event.id,
      type: event.type,
      livemode: event.livemode === true,
      payload: event,
      related,
    })
  );
  context.note({ outcome: result.outcome });
  if (result.orderId) context.note({ order: result.orderId });
  if (result.detail) context.note({ detail: result.detail });
  if (!ACKNOWLEDGED.has(result.outcome)) throw apiError("processing_failed");
  return json(200, { received: true, outcome: result.outcome });
}

/**
 * What the event does not carry and the database needs to apply it, asked of Stripe before
 * anything is stored. charge.refunded: since API version 2022-11-15 the Charge no longer embeds
 * its refunds, so they are listed (every page). If Stripe cannot answer, the delivery is
 * answered 503 and nothing is stored, so Stripe redelivers it: the event is never marked
 * processed without the refunds it is about.
 */
async function relatedObjects(
  stripe: Stripe,
  event: Stripe.Event,
  context: RequestContext,
): Promise<Record<string, unknown> | undefined> {
  if (event.type !== "charge.refunded") return undefined;
  const chargeId = (event.data.object as { id?: unknown }).id;
  // ch_… for cards, py_… for some other payment methods.
  if (typeof chargeId !== "string" || !/^[A-Za-z0-9_]{1,255}$/.test(chargeId)) {
    throw apiError("invalid_event", { reason: "charge.refunded names no charge" });
  }
  let refunds: Stripe.Refund[];
  try {
    refunds = await context.stripe(() =>
      stripe.refunds.list({ charge: chargeId, limit: 100 }).autoPagingToArray({
        limit: MAX_CHARGE_REFUNDS,
      })
    );
  } catch (error) {
    context.note({ stripe_error: classifyStripeError(error).reason });
    throw apiError("payment_provider_unavailable", {
      reason: "the charge's refunds could not be listed; Stripe redelivers the event",
      retryAfter: 1,
    });
  }
  context.note({ refunds_listed: refunds.length });
  return { refunds };
}
