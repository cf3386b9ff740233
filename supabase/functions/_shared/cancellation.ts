/**
 * The steps of an event's cancellation (see supabase/migrations/*_event_cancellation.sql): the
 * SQL calls, one statement each, and what cancel-event does for one order. Nothing is queued:
 * what is left to do is read from the orders, so a second caller, a retry after a crash or a
 * later run finds the same work. Refunds go through the one refund path (refunds.ts).
 */
import type Stripe from "stripe";
import { fingerprint } from "./checkout-utils.ts";
import { settleCheckoutSession, type Sql, sqlState } from "./db.ts";
import { apiError, HttpError } from "./errors.ts";
import type { RequestContext } from "./http.ts";
import { makeRefund, type RefundStore } from "./refunds.ts";

/** One order the cancellation can act on now (event_cancellation_work). */
export interface CancellationItem {
  orderId: string;
  /** expire: its open Checkout Session; refund: what is left of its payment. */
  step: "expire" | "refund";
  sessionId: string | null;
  /** The refund:create operation of this order's refund: cancel.<event id>.<order id>. */
  operationId: string;
}

/** Where a cancellation stands, counted from the rows (event_cancellation_progress). */
export interface CancellationProgress {
  status: "in_progress" | "completed";
  refunded: number;
  expired: number;
  failed: number;
  remaining: number;
}

/** How one order's step ended in this call (for the log line). */
export type StepResult = "expired" | "refunded" | "skipped" | "failed";

/** Marks the event cancelled (once: a later call keeps the first time and reason); 404 if unknown. */
export async function cancelEvent(sql: Sql, eventId: string, reason: string | null): Promise<void> {
  try {
    await sql`select 1 from public.cancel_event(${eventId}::uuid, ${reason})`;
  } catch (error) {
    if (sqlState(error) !== "CE001") throw error;
    throw apiError("event_not_found", { reason: "the event does not exist" });
  }
}

/** The next `limit` orders to expire or refund, skipping those this call already handled. */
export async function cancellationWork(
  sql: Sql,
  input: { eventId: string; limit: number; exclude: string[] },
): Promise<CancellationItem[]> {
  const rows = await sql<
    {
      order_id: string;
      step: "expire" | "refund";
      session_id: string | null;
      operation_id: string;
    }[]
  >`
    select w.order_id, w.step, w.stripe_checkout_session_id as session_id, w.operation_id
    from public.event_cancellation_work(${input.eventId}::uuid, ${input.limit}::int,
      ${input.exclude}::uuid[]) w`;
  return rows.map((row) => ({
    orderId: row.order_id,
    step: row.step,
    sessionId: row.session_id,
    operationId: row.operation_id,
  }));
}

/** The cancellation's cumulative counts; the event must be cancelled. */
export async function cancellationProgress(
  sql: Sql,
  eventId: string,
): Promise<CancellationProgress> {
  const [row] = await sql<CancellationProgress[]>`
    select p.status, p.refunded::int, p.expired::int, p.failed::int, p.remaining::int
    from public.event_cancellation_progress(${eventId}::uuid) p`;
  if (!row) throw new Error("Cannot read cancellation progress: the event is not cancelled");
  return row;
}

/**
 * Expires the order's open session at Stripe. A refusal usually means the buyer just paid, so
 * the session is retrieved; either way Stripe's word is applied as the webhook would (a payment
 * that lands now becomes capacity_conflict, refunded by a later call). No word from Stripe:
 * failed for now, the next call asks again.
 */
export async function expireOrder(
  deps: { sql: Sql; stripe: Stripe },
  item: CancellationItem,
  context: RequestContext,
): Promise<StepResult> {
  const id = item.sessionId;
  if (!id) return "skipped";
  const sessions = deps.stripe.checkout.sessions;
  let session: Stripe.Checkout.Session;
  try {
    session = await context.stripe(() => sessions.expire(id).catch(() => sessions.retrieve(id)));
  } catch {
    return "failed";
  }
  const settled = await context.db(() => settleCheckoutSession(deps.sql, session));
  return settled.outcome === "expired" ? "expired" : "skipped";
}

/**
 * Refunds what is left of the order's payment, through the one claim → refunds.create → record
 * path. A replay (done already), a live lease (another caller holds it) or nothing left to
 * refund is skipped; Stripe's refusal is kept on the refund row by the release and retried by a
 * later call; no answer keeps the key for the takeover.
 */
export async function refundOrder(
  deps: { store: RefundStore; stripe: Stripe; leaseSeconds: number },
  eventId: string,
  item: CancellationItem,
  context: RequestContext,
): Promise<StepResult> {
  const requestFingerprint = await fingerprint({
    endpoint: "cancel-event",
    eventId: eventId.toLowerCase(),
    orderId: item.orderId,
  });
  let claim;
  try {
    claim = await context.db(() =>
      deps.store.claim({
        operationId: item.operationId,
        requestFingerprint,
        orderId: item.orderId,
        source: "cancellation",
        leaseSeconds: deps.leaseSeconds,
      })
    );
  } catch (error) {
    // RF003: nothing left (another refund holds it); RF002: no longer paid (refunded meanwhile).
    if (sqlState(error) === "RF003" || sqlState(error) === "RF002") return "skipped";
    // RF005: an earlier attempt is in doubt: an operator's, never a second refund.
    if (sqlState(error) === "RF005") return "failed";
    throw error;
  }
  if (claim.outcome === "replay" || claim.outcome === "conflict") return "skipped";
  if (claim.outcome === "mismatch") return "failed";
  try {
    await makeRefund(deps, claim, context);
    return "refunded";
  } catch (error) {
    if (error instanceof HttpError) return "failed";
    throw error;
  }
}
