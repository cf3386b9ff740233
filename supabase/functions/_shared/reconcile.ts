/**
 * Reconciliation of checkout attempts that died between their claim and their record (crash,
 * timeout). For each stuck attempt, taken over in the database first, Stripe is asked again
 * with the SAME key and the SAME parameters:
 *   - Stripe replays a session (Idempotent-Replayed: true): it existed → record it;
 *   - Stripe creates one now, or rejects the parameters before executing (e.g. expires_at is
 *     no longer 30 minutes away): none existed → expire what was just made, mark the attempt
 *     failed and release the order's seats;
 *   - no answer, 409, 429, 5xx: leave it for the next run.
 * It never creates a second session for an operation: everything goes through the one key.
 */
import type Stripe from "stripe";
import type { TokenVerifier } from "./auth.ts";
import { checkoutSessionParams } from "./checkout-session.ts";
import {
  type CheckoutClaim,
  claimStuckCheckouts,
  recordCheckout,
  releaseCheckout,
  type Sql,
} from "./db.ts";
import { errorResponse, HttpError, json } from "./http.ts";
import { checkoutResponseBody } from "./checkout.ts";
import type { RequestLog } from "./checkout.ts";

/** How one stuck attempt was settled. */
export type Settlement = "recorded" | "released" | "retry_later" | "unresolved";

/** What a reconciliation run did. */
export interface ReconcileSummary {
  examined: number;
  recorded: number;
  released: number;
  retry_later: number;
  unresolved: number;
}

/** What reconciliation needs. */
export interface ReconcileDeps {
  sql: Sql;
  stripe: Stripe;
  /** Attempts whose lease expired more than this many seconds ago (default 600). */
  staleSeconds?: number;
  /** Attempts settled per run (default 50). */
  limit?: number;
  log?: RequestLog;
}

/** Settles the stuck checkout attempts once. Safe to run concurrently with itself and live traffic. */
export async function reconcileStuckCheckouts(deps: ReconcileDeps): Promise<ReconcileSummary> {
  const log = deps.log ?? ((line) => console.log(JSON.stringify(line)));
  const stuck = await claimStuckCheckouts(deps.sql, {
    staleSeconds: deps.staleSeconds ?? 600,
    limit: deps.limit ?? 50,
    leaseSeconds: 120,
  });
  const summary: ReconcileSummary = {
    examined: stuck.length,
    recorded: 0,
    released: 0,
    retry_later: 0,
    unresolved: 0,
  };
  for (const claim of stuck) {
    const settlement = await settle(deps, claim);
    summary[settlement] += 1;
    log({
      fn: "reconcile-checkouts",
      operation: `checkout:create:${claim.operationId}`,
      outcome: settlement,
    });
  }
  return summary;
}

async function settle(deps: ReconcileDeps, claim: CheckoutClaim): Promise<Settlement> {
  const operationId = claim.operationId!;
  const leaseToken = claim.leaseToken!;
  const release = (keyConsumed: boolean, error: string) =>
    releaseCheckout(deps.sql, { operationId, leaseToken, keyConsumed, error });

  if (!claim.orderId) {
    await release(false, "reconcile: the attempt has no order");
    return "unresolved";
  }

  let session: Stripe.Response<Stripe.Checkout.Session>;
  try {
    session = await deps.stripe.checkout.sessions.create(checkoutSessionParams(claim), {
      idempotencyKey: claim.stripeIdempotencyKey!,
    });
  } catch (error) {
    const status = (error as { statusCode?: number }).statusCode;
    const type = (error as { type?: string }).type;
    if (status === 400 && type === "StripeIdempotencyError") {
      // A session exists under this key with other parameters: it cannot be fetched by key.
      await release(false, "reconcile: Stripe holds this key with other parameters");
      return "unresolved";
    }
    if (status !== undefined && status >= 400 && status < 500 && status !== 409 && status !== 429) {
      // Rejected before executing, so nothing was stored under the key: no session exists.
      await release(true, `reconcile: no session (Stripe ${status})`);
      return "released";
    }
    await release(false, `reconcile: Stripe unavailable (${status ?? "no answer"})`);
    return "retry_later";
  }

  if (isReplay(session)) {
    await recordCheckout(deps.sql, {
      operationId,
      leaseToken,
      sessionId: session.id,
      responseBody: checkoutResponseBody(claim, session),
    });
    return "recorded";
  }
  // Stripe had nothing under the key and made a session just now. Nobody was handed its link:
  // end it, and free the seats.
  try {
    await deps.stripe.checkout.sessions.expire(session.id);
  } catch {
    // It expires by itself at expires_at; the seats are freed either way.
  }
  await release(true, "reconcile: no session existed");
  return "released";
}

function isReplay(session: Stripe.Response<unknown>): boolean {
  const headers = session.lastResponse?.headers as unknown;
  const value = headers instanceof Headers
    ? headers.get("idempotent-replayed")
    : (headers as Record<string, string> | undefined)?.["idempotent-replayed"];
  return value === "true";
}

/** The reconcile endpoint: cron calls it with the service role's token. */
export function createReconcileHandler(
  deps: ReconcileDeps & { verifyToken: TokenVerifier },
): (request: Request) => Promise<Response> {
  return async (request) => {
    try {
      if (request.method !== "POST") {
        throw new HttpError(405, "method_not_allowed", "Cannot reconcile: use POST", undefined, {
          allow: "POST",
        });
      }
      await deps.verifyToken(request.headers.get("authorization"));
      return json(200, await reconcileStuckCheckouts(deps));
    } catch (error) {
      if (error instanceof HttpError) return errorResponse(error);
      return errorResponse(
        new HttpError(503, "temporarily_unavailable", "Cannot reconcile now; the next run retries"),
      );
    }
  };
}
