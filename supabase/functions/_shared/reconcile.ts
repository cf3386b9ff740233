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
 *
 * Each run then settles refunds (`reconcileRefunds`), through the one refund path (makeRefund):
 *   - stuck refund attempts, taken over one at a time with their SAME key and parameters:
 *     refunds.create hands back the refund Stripe made under the key (or makes it now, which is
 *     what the reservation was for) → record; Stripe refused → released, key burnt, the
 *     reservation given back; no answer → left for the next run, at most `maxAttempts` runs,
 *     then released with the key burnt;
 *   - payments that found no seats (capacity_conflict): each refunded in full, exactly once,
 *     under the operation `conflict.<order id>`.
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
import { consoleLog, envelope, json, RequestContext, type RequestLog } from "./http.ts";
import { checkoutResponseBody } from "./checkout.ts";
import { fingerprint } from "./checkout-utils.ts";
import { classifyStripeError } from "./idempotency.ts";
import {
  type ArmedRefund,
  capacityConflictsToRefund,
  claimStuckRefunds,
  makeRefund,
  REFUND_OPERATION,
  type RefundStore,
  sqlRefundStore,
} from "./refunds.ts";

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

/** What a reconciliation run did with refunds. */
export interface RefundReconcileSummary {
  /**
   * Stuck refund attempts settled on Stripe's word: recorded (the refund Stripe made under the
   * key), or refused by Stripe (the reservation given back).
   */
  settled: number;
  /**
   * Stuck attempts given up after `maxAttempts` runs without an answer (the reservation given
   * back), and capacity-conflict refunds Stripe refused (tried again by later runs, at most
   * `maxAttempts` times; the refund row keeps the reason).
   */
  failed: number;
  /**
   * Left for the next run: Stripe did not answer, a live request or another reconciler holds
   * the operation, or storing the outcome failed.
   */
  skipped: number;
  /** capacity_conflict orders this run refunded in full. */
  conflictsRefunded: number;
}

/** The reconcile-checkouts answer: the checkout fields as they always were, and the refunds. */
export interface ReconcileRunSummary extends ReconcileSummary {
  refunds: RefundReconcileSummary;
}

/** What reconciliation needs. */
export interface ReconcileDeps {
  sql: Sql;
  stripe: Stripe;
  /** The refund steps (default: over `sql`); a test may wrap them to inject faults. */
  refundStore?: RefundStore;
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
        ...errorFields(error),
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

/** One reconciliation run: the stuck checkouts, then the refunds. */
export async function reconcile(deps: ReconcileDeps): Promise<ReconcileRunSummary> {
  const checkouts = await reconcileStuckCheckouts(deps);
  const refunds = await reconcileRefunds(deps);
  return { ...checkouts, refunds };
}

/**
 * Settles the stuck refund attempts, then refunds in full the payments that found no seats.
 * Safe to run concurrently with itself and live traffic: every refund goes through its
 * operation's claim and key.
 */
export async function reconcileRefunds(deps: ReconcileDeps): Promise<RefundReconcileSummary> {
  const log = deps.log ?? consoleLog;
  const store = deps.refundStore ?? sqlRefundStore(deps.sql);
  const maxAttempts = deps.maxAttempts ?? 5;
  const limit = deps.limit ?? 50;
  const summary: RefundReconcileSummary = {
    settled: 0,
    failed: 0,
    skipped: 0,
    conflictsRefunded: 0,
  };
  const note = (operationId: string, fields: Record<string, unknown>) =>
    log({ fn: "reconcile-checkouts", operation: `${REFUND_OPERATION}:${operationId}`, ...fields });

  const handled: string[] = [];
  for (let i = 0; i < limit; i++) {
    const [claim] = await claimStuckRefunds(deps.sql, {
      staleSeconds: deps.staleSeconds ?? 600,
      limit: 1,
      leaseSeconds: LEASE_SECONDS,
      exclude: handled,
    });
    if (!claim) break;
    handled.push(claim.operationId);
    const context = new RequestContext();
    let outcome: RefundEnding | "skipped";
    try {
      outcome = await attemptRefund(deps, store, claim, context, {
        lastRun: claim.reconcileAttempts >= maxAttempts,
      });
    } catch (error) {
      // Fenced (a live retry took the attempt over) or a storage error: this row only.
      outcome = "skipped";
      note(claim.operationId, errorFields(error));
    }
    summary[STUCK_COUNTS[outcome]] += 1;
    note(claim.operationId, {
      outcome,
      reconcile_attempts: claim.reconcileAttempts,
      stripe_ms: Math.round(context.stripeMs),
    });
  }

  const done: string[] = [];
  for (let i = 0; i < limit; i++) {
    const [conflict] = await capacityConflictsToRefund(deps.sql, {
      limit: 1,
      maxAttempts,
      exclude: done,
    });
    if (!conflict) break;
    done.push(conflict.orderId);
    const context = new RequestContext();
    let outcome: RefundEnding | ConflictClaimEnding | "skipped";
    try {
      outcome = await refundConflict(deps, store, conflict, context);
    } catch (error) {
      // The claim refused (e.g. the order was refunded meanwhile) or storage failed.
      outcome = "skipped";
      note(conflict.operationId, errorFields(error));
    }
    const counted = CONFLICT_COUNTS[outcome];
    if (counted) summary[counted] += 1;
    note(conflict.operationId, {
      outcome,
      source: "capacity_conflict",
      order: conflict.orderId,
      stripe_ms: Math.round(context.stripeMs),
    });
  }
  return summary;
}

/**
 * How a refund attempt ended: recorded (Stripe's refund applied), refused (Stripe answered with
 * an error: key burnt, reservation given back), gave_up (no answer on the last run allowed:
 * likewise), later (no answer: the attempt waits, with its key, for the next run).
 */
type RefundEnding = "recorded" | "refused" | "gave_up" | "later";

/** A conflict's claim that needs no Stripe call: another run refunded it, or holds it now. */
type ConflictClaimEnding = "replayed" | "in_flight" | "mismatch";

/** Where a stuck attempt's ending is counted ("skipped": fenced, or storage failed). */
const STUCK_COUNTS: Record<RefundEnding | "skipped", keyof RefundReconcileSummary> = {
  recorded: "settled",
  refused: "settled",
  gave_up: "failed",
  later: "skipped",
  skipped: "skipped",
};

/** Where a conflict's ending is counted; a replay (refunded by another run) is not. */
const CONFLICT_COUNTS: Record<
  RefundEnding | ConflictClaimEnding | "skipped",
  keyof RefundReconcileSummary | null
> = {
  recorded: "conflictsRefunded",
  refused: "failed",
  gave_up: "failed",
  later: "skipped",
  in_flight: "skipped",
  mismatch: "skipped",
  skipped: "skipped",
  replayed: null,
};

/**
 * Runs an armed refund attempt through makeRefund (the one refund path) and says how it ended.
 * On the last run allowed, an attempt Stripe did not answer is given up (released with its key
 * burnt); never one whose refund Stripe made and whose record failed: that one keeps its key,
 * so the next run gets the same refund back. Throws when the attempt was fenced or its outcome
 * could not be stored.
 */
async function attemptRefund(
  deps: ReconcileDeps,
  store: RefundStore,
  claim: ArmedRefund,
  context: RequestContext,
  options: { lastRun: boolean },
): Promise<RefundEnding> {
  let stripeAnswered = false;
  let released: RefundEnding | undefined;
  const watched: RefundStore = {
    ...store,
    record: (input) => {
      stripeAnswered = true;
      return store.record(input);
    },
    release: async (input) => {
      const giveUp = options.lastRun && !input.keyConsumed && !stripeAnswered;
      const status = await store.release({
        ...input,
        keyConsumed: input.keyConsumed || giveUp,
        error: giveUp
          ? `reconcile: gave up after ${claim.reconcileAttempts} runs (${input.error})`
          : `reconcile: ${input.error}`,
      });
      released = giveUp ? "gave_up" : input.keyConsumed ? "refused" : "later";
      return status;
    },
  };
  try {
    await makeRefund({ store: watched, stripe: deps.stripe }, claim, context);
    return "recorded";
  } catch (error) {
    if (released === undefined) throw error;
    return released;
  }
}

/** Refunds one capacity_conflict order in full: claim `conflict.<order id>`, then makeRefund. */
async function refundConflict(
  deps: ReconcileDeps,
  store: RefundStore,
  conflict: { orderId: string; operationId: string },
  context: RequestContext,
): Promise<RefundEnding | ConflictClaimEnding> {
  const requestFingerprint = await fingerprint({
    source: "capacity_conflict",
    orderId: conflict.orderId,
  });
  const claim = await context.db(() =>
    store.claim({
      operationId: conflict.operationId,
      requestFingerprint,
      orderId: conflict.orderId,
      source: "capacity_conflict",
      leaseSeconds: LEASE_SECONDS,
    })
  );
  switch (claim.outcome) {
    case "replay":
      return "replayed";
    case "conflict":
      return "in_flight";
    case "mismatch":
      return "mismatch";
  }
  // A no-answer attempt is left in flight: a later run takes it over as a stuck refund.
  return await attemptRefund(deps, store, claim, context, { lastRun: false });
}

/** A failure for the log: its name and SQLSTATE only, never its message. */
function errorFields(error: unknown): Record<string, unknown> {
  return {
    error: error instanceof Error ? error.name : typeof error,
    sqlstate: (error as { code?: string }).code,
  };
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
      const summary = await reconcile(deps);
      context.note({ outcome: "reconciled", ...summary });
      return json(200, summary);
    },
  );
}
