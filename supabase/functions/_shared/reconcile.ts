/**
 * Reconciliation of checkout attempts that died between their claim and their record (crash,
 * timeout). Stuck attempts are taken over in the database one at a time (so each lease covers
 * one Stripe call), and Stripe is asked again with the SAME key and the SAME parameters:
 *   - Stripe replays a session (Idempotent-Replayed: true): it existed → record it;
 *   - Stripe creates one now, or refuses the parameters (e.g. expires_at is no longer 30 minutes
 *     away), or answers with an error it stores under the key (a 5xx): no session can exist →
 *     expire what was just made, mark the attempt failed and release the order's seats;
 *   - no answer (timeout, 409, 429), or the key is held with other parameters: leave it for the
 *     next run, at most `maxAttempts` runs; then the attempt is failed and its seats released.
 * It never creates a second session for an operation: everything goes through the one key.
 * Whether Stripe kept an answer under the key is decided by classifyStripeError, as for a live
 * request.
 */
import type Stripe from "stripe";
import type { CallerCheck } from "./auth.ts";
import { checkoutSessionParams } from "./checkout-session.ts";
import {
  type ArmedClaim,
  claimStuckCheckouts,
  countStuckCheckouts,
  recordCheckout,
  releaseCheckout,
  type Sql,
} from "./db.ts";
import { apiError } from "./errors.ts";
import { consoleLog, envelope, json, type RequestLog } from "./http.ts";
import { checkoutResponseBody } from "./checkout.ts";
import { classifyStripeError } from "./idempotency.ts";

/**
 * How one stuck attempt ended in this run: settled on Stripe's word, failed after too many runs
 * without one, or skipped (left for the next run, also when a live retry took it over meanwhile
 * or storing the outcome failed).
 */
export type Settlement = "settled" | "failed" | "skipped";

/** What a reconciliation run did; `remaining` are the stuck attempts still waiting after it. */
export interface ReconcileSummary {
  settled: number;
  failed: number;
  skipped: number;
  remaining: number;
}

/** What reconciliation needs. */
export interface ReconcileDeps {
  sql: Sql;
  stripe: Stripe;
  /** Attempts whose lease expired more than this many seconds ago (default 600). */
  staleSeconds?: number;
  /** Attempts settled per run (default 50). */
  limit?: number;
  /** Runs without an answer from Stripe before an attempt is given up (default 5). */
  maxAttempts?: number;
  log?: RequestLog;
}

const LEASE_SECONDS = 120;

/** Settles the stuck checkout attempts once. Safe to run concurrently with itself and live traffic. */
export async function reconcileStuckCheckouts(deps: ReconcileDeps): Promise<ReconcileSummary> {
  const log = deps.log ?? consoleLog;
  const staleSeconds = deps.staleSeconds ?? 600;
  const summary: ReconcileSummary = { settled: 0, failed: 0, skipped: 0, remaining: 0 };
  const handled: string[] = [];
  for (let i = 0; i < (deps.limit ?? 50); i++) {
    const [claim] = await claimStuckCheckouts(deps.sql, {
      staleSeconds,
      limit: 1,
      leaseSeconds: LEASE_SECONDS,
      exclude: handled,
    });
    if (!claim) break;
    handled.push(claim.operationId);
    let settlement: Settlement;
    try {
      settlement = await settle(deps, claim);
    } catch (error) {
      // Fenced (a live retry took the attempt over) or a storage error: this row only.
      settlement = "skipped";
      log({
        fn: "reconcile-checkouts",
        operation: `checkout:create:${claim.operationId}`,
        error: error instanceof Error ? error.name : typeof error,
        sqlstate: (error as { code?: string }).code,
      });
    }
    summary[settlement] += 1;
    log({
      fn: "reconcile-checkouts",
      operation: `checkout:create:${claim.operationId}`,
      outcome: settlement,
      reconcile_attempts: claim.reconcileAttempts,
    });
  }
  summary.remaining = await countStuckCheckouts(deps.sql, { staleSeconds });
  return summary;
}

async function settle(deps: ReconcileDeps, claim: ArmedClaim): Promise<Settlement> {
  const { operationId, leaseToken } = claim;
  const release = (keyConsumed: boolean, error: string) =>
    releaseCheckout(deps.sql, { operationId, leaseToken, keyConsumed, error });
  // No answer this run: try again next run, unless this was the last one allowed.
  const later = async (why: string): Promise<Settlement> => {
    if (claim.reconcileAttempts >= (deps.maxAttempts ?? 5)) {
      await release(true, `reconcile: gave up after ${claim.reconcileAttempts} runs (${why})`);
      return "failed";
    }
    await release(false, `reconcile: ${why}`);
    return "skipped";
  };

  let session: Stripe.Response<Stripe.Checkout.Session>;
  try {
    session = await deps.stripe.checkout.sessions.create(checkoutSessionParams(claim), {
      idempotencyKey: claim.stripeIdempotencyKey,
    });
  } catch (error) {
    const failure = classifyStripeError(error);
    if (failure.keyState === "answered") {
      // Refused (nothing made) or an error Stripe replays for this key: no session can exist.
      await release(true, `reconcile: no session (${failure.reason})`);
      return "settled";
    }
    return await later(
      failure.keyState === "key_reused"
        ? "Stripe holds this key with other parameters"
        : `Stripe unavailable (${failure.reason})`,
    );
  }

  if (isReplay(session)) {
    await recordCheckout(deps.sql, {
      operationId,
      leaseToken,
      sessionId: session.id,
      responseBody: checkoutResponseBody(claim, session),
    });
    return "settled";
  }
  // Stripe had nothing under the key and made a session just now. Nobody was handed its link:
  // end it, and free the seats.
  try {
    await deps.stripe.checkout.sessions.expire(session.id);
  } catch {
    // It expires by itself at expires_at; the seats are freed either way.
  }
  await release(true, "reconcile: no session existed");
  return "settled";
}

function isReplay(session: Stripe.Response<unknown>): boolean {
  const headers = session.lastResponse?.headers as unknown;
  const value = headers instanceof Headers
    ? headers.get("idempotent-replayed")
    : (headers as Record<string, string> | undefined)?.["idempotent-replayed"];
  return value === "true";
}

/** The reconcile endpoint: cron calls it with a secret key (operatorCaller). */
export function createReconcileHandler(
  deps: ReconcileDeps & { authenticate: CallerCheck },
): (request: Request) => Promise<Response> {
  return envelope(
    {
      fn: "reconcile-checkouts",
      action: "reconcile",
      log: deps.log,
      unexpected: apiError("temporarily_unavailable", { reason: "the next run retries" }),
    },
    async (request, context) => {
      await deps.authenticate(request);
      const summary = await reconcileStuckCheckouts(deps);
      context.note({ outcome: "reconciled", ...summary });
      return json(200, summary);
    },
  );
}
