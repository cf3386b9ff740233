/**
 * POST /functions/v1/cancel-event (operators): parse (operator credential, then the body) →
 * mark the event cancelled (new checkouts get 409 event_cancelled) → work through its orders in
 * bounded batches until none is left or the time budget is spent: expire each open session at
 * Stripe, refund what is left of each payment (expireOrder, refundOrder) → answer where the
 * cancellation stands, counted from the rows: 200 completed, or 202 in_progress (call
 * again). Idempotent by event; concurrent calls split the work through the refund claims. A pure
 * function of (Request, deps).
 */
import type Stripe from "stripe";
import type { CallerCheck } from "./auth.ts";
import {
  cancelEvent,
  cancellationProgress,
  cancellationWork,
  expireOrder,
  refundOrder,
  type StepResult,
} from "./cancellation.ts";
import type { Sql } from "./db.ts";
import { apiError } from "./errors.ts";
import { envelope, json, readJsonBody, type RequestContext, type RequestLog } from "./http.ts";
import type { RefundStore } from "./refunds.ts";
import { cancelEventBody, parseBody } from "./schemas.ts";

/** What the cancel-event handler needs. */
export interface CancelEventDeps {
  sql: Sql;
  store: RefundStore;
  stripe: Stripe;
  /** The operator check (operatorCaller): a secret key, or the legacy service_role key. */
  authenticate: CallerCheck;
  /** How long a refund attempt holds its order before another call may take it over (30 s). */
  leaseSeconds?: number;
  /** No order is started after this many ms of the call (50 s: the call answers within 60 s). */
  budgetMs?: number;
  /** Orders read per batch (10). */
  batchSize?: number;
  log?: RequestLog;
}

/** Builds the cancel-event handler. */
export function createCancelEventHandler(
  deps: CancelEventDeps,
): (request: Request) => Promise<Response> {
  return envelope(
    {
      fn: "cancel-event",
      action: "cancel event",
      log: deps.log,
      unexpected: apiError("temporarily_unavailable", {
        reason: "the service is temporarily unavailable, call again: the cancellation resumes",
      }),
    },
    async (request, context) => {
      const deadline = performance.now() + (deps.budgetMs ?? 50_000);
      context.note({ operation: null });
      await deps.authenticate(request);
      const body = parseBody(cancelEventBody, await readJsonBody(request));
      const eventId = body.eventId.toLowerCase();
      context.note({ operation: `cancel-event:${eventId}` });
      await context.db(() => cancelEvent(deps.sql, eventId, body.reason ?? null));
      const done = await workThroughOrders(deps, eventId, deadline, context);
      const progress = await context.db(() => cancellationProgress(deps.sql, eventId));
      context.note({ outcome: progress.status, steps: done, remaining: progress.remaining });
      return json(progress.status === "completed" ? 200 : 202, { eventId, ...progress });
    },
  );
}

/** Takes each order's next step once, batch after batch, until none is left or time is up. */
async function workThroughOrders(
  deps: CancelEventDeps,
  eventId: string,
  deadline: number,
  context: RequestContext,
): Promise<Record<StepResult, number>> {
  const done: Record<StepResult, number> = { expired: 0, refunded: 0, skipped: 0, failed: 0 };
  const handled: string[] = [];
  const refundDeps = { ...deps, leaseSeconds: deps.leaseSeconds ?? 30 };
  while (performance.now() < deadline) {
    const batch = await context.db(() =>
      cancellationWork(deps.sql, { eventId, limit: deps.batchSize ?? 10, exclude: handled })
    );
    if (batch.length === 0) break;
    for (const item of batch) {
      if (performance.now() >= deadline) break;
      handled.push(item.orderId);
      const result = item.step === "expire"
        ? await expireOrder(deps, item, context)
        : await refundOrder(refundDeps, eventId, item, context);
      done[result] += 1;
    }
  }
  return done;
}
