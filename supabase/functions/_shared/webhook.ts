/**
 * The Stripe webhook handler: verify the signature over the raw body, then store and apply the
 * event once in one database statement. Stripe redelivers anything that does not get a 2xx,
 * for up to three days, so a failure to apply answers 500 and is retried.
 */
import Stripe from "stripe";
import { processWebhookEvent, type Sql } from "./db.ts";
import { errorResponse, HttpError, json, readRawText } from "./http.ts";
import type { RequestLog } from "./checkout.ts";

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
  const log = deps.log ?? ((line) => console.log(JSON.stringify(line)));
  const cryptoProvider = Stripe.createSubtleCryptoProvider();

  return async (request) => {
    const started = performance.now();
    const entry: Record<string, unknown> = { fn: "stripe-webhook", outcome: "error" };
    let response: Response;
    try {
      response = await handle(request, deps, cryptoProvider, entry);
    } catch (error) {
      const httpError = error instanceof HttpError ? error : unavailable(error, entry);
      entry.code = httpError.code;
      response = errorResponse(httpError);
    }
    log({ ...entry, status: response.status, ms: Math.round(performance.now() - started) });
    return response;
  };
}

async function handle(
  request: Request,
  deps: WebhookDeps,
  cryptoProvider: ReturnType<typeof Stripe.createSubtleCryptoProvider>,
  entry: Record<string, unknown>,
): Promise<Response> {
  if (request.method !== "POST") {
    throw new HttpError(405, "method_not_allowed", "Cannot accept webhook: use POST", undefined, {
      allow: "POST",
    });
  }
  const signature = request.headers.get("stripe-signature");
  if (!signature) {
    throw new HttpError(
      400,
      "signature_missing",
      "Cannot accept webhook: Stripe-Signature is missing",
    );
  }
  // The signature covers the exact bytes, so the body is read raw and never re-serialized; it is
  // counted while streaming so that an oversized body is refused without being buffered.
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
    throw new HttpError(
      400,
      "signature_invalid",
      "Cannot accept webhook: the signature does not verify",
    );
  }
  if (
    !event || typeof event.id !== "string" || !/^evt_[A-Za-z0-9_]+$/.test(event.id) ||
    typeof event.type !== "string" || typeof event.data !== "object" || event.data === null
  ) {
    throw new HttpError(
      400,
      "invalid_event",
      "Cannot accept webhook: the body is not a Stripe event",
    );
  }
  entry.event = event.id;
  entry.type = event.type;

  const result = await processWebhookEvent(deps.sql, {
    id: event.id,
    type: event.type,
    livemode: event.livemode === true,
    payload: event,
  });
  entry.outcome = result.outcome;
  if (result.orderId) entry.order = result.orderId;
  if (result.detail) entry.detail = result.detail;
  if (!ACKNOWLEDGED.has(result.outcome)) {
    throw new HttpError(
      500,
      "processing_failed",
      "Cannot process webhook event now; Stripe will redeliver it",
    );
  }
  return json(200, { received: true, outcome: result.outcome });
}

function unavailable(error: unknown, entry: Record<string, unknown>): HttpError {
  entry.error = error instanceof Error ? error.name : typeof error;
  return new HttpError(
    503,
    "temporarily_unavailable",
    "Cannot process webhook event now; Stripe will redeliver it",
  );
}
