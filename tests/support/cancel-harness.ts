/**
 * The cancel-event handler, built as index.ts builds it, against the harness's database and
 * local Stripe server, and an event roomy enough for many orders.
 */
import { operatorCaller } from "../../supabase/functions/_shared/auth.ts";
import { createCancelEventHandler } from "../../supabase/functions/_shared/cancel-event.ts";
import { type RefundStore, sqlRefundStore } from "../../supabase/functions/_shared/refunds.ts";
import type { Harness } from "./checkout-harness.ts";
import { SECRET_KEY } from "./refund-harness.ts";

/** Options of {@link cancelHandler}. */
export interface CancelHandlerOptions {
  /** Decorates the real refund store (fault injection). */
  wrapStore?: (store: RefundStore) => RefundStore;
  leaseSeconds?: number;
  budgetMs?: number;
  batchSize?: number;
}

/** The cancel-event handler over the harness. */
export function cancelHandler(
  h: Harness,
  options: CancelHandlerOptions = {},
): (request: Request) => Promise<Response> {
  const real = sqlRefundStore(h.sql);
  return createCancelEventHandler({
    sql: h.sql,
    store: options.wrapStore ? options.wrapStore(real) : real,
    stripe: h.stripeClient,
    authenticate: operatorCaller({ keys: { default: SECRET_KEY } }),
    leaseSeconds: options.leaseSeconds,
    budgetMs: options.budgetMs,
    batchSize: options.batchSize,
    log: (line) => h.logs.push(line),
  });
}

/** A cancel-event POST with the operator's secret key (`apikey: null` leaves it out). */
export function cancelRequest(
  body: unknown,
  options: { apikey?: string | null; contentType?: string; rawBody?: BodyInit } = {},
): Request {
  const headers: Record<string, string> = {
    "content-type": options.contentType ?? "application/json",
  };
  if (options.apikey !== null) headers.apikey = options.apikey ?? SECRET_KEY;
  return new Request("http://functions.test/functions/v1/cancel-event", {
    method: "POST",
    headers,
    body: options.rawBody ?? JSON.stringify(body),
  });
}

/** A published event with one tier of `capacity` seats (10.00, at most 4 per order). */
export async function roomyEvent(
  h: Harness,
  capacity = 500,
): Promise<{ eventId: string; tierId: string }> {
  const [event] = await h.sql<{ id: string }[]>`
    insert into events.events (title, currency, status) values ('Cancelled Gig', 'usd', 'published')
    returning id`;
  const [tier] = await h.sql<{ id: string }[]>`
    insert into events.ticket_tiers (event_id, name, unit_amount, capacity, max_per_order)
    values (${event!.id}, 'General', 1000, ${capacity}, 4)
    returning id`;
  return { eventId: event!.id, tierId: tier!.id };
}

/** What a cancel-event response carries. */
export interface CancelAnswer {
  status: number;
  body: {
    eventId?: string;
    status?: string;
    refunded?: number;
    expired?: number;
    failed?: number;
    remaining?: number;
    error?: { code: string; message: string };
  };
}

/** The body cancel-event answers with these counts: completed once nothing remains. */
export function expectedBody(
  eventId: string,
  counts: { refunded: number; expired: number; failed: number; remaining: number },
): CancelAnswer["body"] {
  return {
    eventId,
    status: counts.remaining === 0 ? "completed" : "in_progress",
    refunded: counts.refunded,
    expired: counts.expired,
    failed: counts.failed,
    remaining: counts.remaining,
  };
}

/** Calls the handler and reads the answer. */
export async function callCancel(
  cancel: (request: Request) => Promise<Response>,
  body: unknown,
): Promise<CancelAnswer> {
  const response = await cancel(cancelRequest(body));
  return { status: response.status, body: await response.json() };
}
