/**
 * The claim → call → record protocol around one Stripe call, generic over the operation
 * (checkout:create today, refund:create or payout:create tomorrow). It decides, from how the
 * Stripe call failed, whether the Stripe key is burnt, and what the client is told.
 */
import Stripe from "stripe";
import { SQLSTATE, sqlState } from "./db.ts";
import { HttpError } from "./http.ts";

/**
 * What Stripe kept under the key after a failed call: the one rule every path (live request,
 * reconciliation) decides by.
 * - `no_answer`: timeout, connection lost, or 409/429, which Stripe does not store: a retry with
 *   the SAME key gets the original object if one was made;
 * - `answered`: any other answer; a 5xx is stored and replayed, a 4xx means the request was
 *   refused (no object was made): either way the key has nothing more to give;
 * - `key_reused`: the key is held with other parameters (400 idempotency_error): whatever was
 *   made under it cannot be fetched by key.
 */
export type StripeKeyState = "no_answer" | "answered" | "key_reused";

/** How a failed Stripe call ends the attempt and what the client hears. */
export interface StripeFailure {
  keyState: StripeKeyState;
  /** The key is burnt: the next attempt needs a new one. */
  keyConsumed: boolean;
  error: HttpError;
  /** For the log; never the secret key or personal data. */
  reason: string;
}

/** Classifies a failed Stripe call (see {@link StripeKeyState}). */
export function classifyStripeError(error: unknown): StripeFailure {
  const status = error instanceof Stripe.errors.StripeError ? error.statusCode : undefined;
  const reason = error instanceof Error ? `${error.name}${status ? ` ${status}` : ""}` : "unknown";
  if (status === undefined || status === 409 || status === 429) {
    const keyState = "no_answer";
    return { keyState, keyConsumed: false, error: unavailable(status === 429 ? 2 : 1), reason };
  }
  if (status >= 500) {
    return { keyState: "answered", keyConsumed: true, error: unavailable(2), reason };
  }
  return {
    keyState: error instanceof Stripe.errors.StripeIdempotencyError ? "key_reused" : "answered",
    keyConsumed: true,
    error: new HttpError(
      502,
      "payment_provider_error",
      "Cannot create checkout: the payment provider refused the request",
    ),
    reason,
  };
}

/** 503 for a payment provider that cannot be reached now; the same key retries safely. */
export function unavailable(retryAfter: number): HttpError {
  return new HttpError(
    503,
    "payment_provider_unavailable",
    "Cannot create checkout: the payment provider is unavailable, retry with the same Idempotency-Key",
    undefined,
    { "retry-after": String(retryAfter) },
  );
}

/** The steps of one armed attempt; each store step is one database statement. */
export interface AttemptSteps<T> {
  /** The Stripe call, made with the claim's key. */
  call: () => Promise<T>;
  /** Completes the attempt with the call's result. */
  record: (result: T) => Promise<void>;
  /** Ends the failed attempt. */
  release: (keyConsumed: boolean, reason: string) => Promise<void>;
}

/** Time spent, for the request's log line. */
export interface Timings {
  stripeMs: number;
  dbMs: number;
}

/** Runs an armed attempt: call Stripe, then record, or release on failure. */
export async function runAttempt<T>(steps: AttemptSteps<T>, timings: Timings): Promise<T> {
  let result: T;
  const callStarted = performance.now();
  try {
    result = await steps.call();
  } catch (error) {
    timings.stripeMs += performance.now() - callStarted;
    const failure = classifyStripeError(error);
    await timed(timings, () => steps.release(failure.keyConsumed, failure.reason)).catch(() => {
      // The lease runs out on its own; the next retry takes over with the same key.
    });
    throw failure.error;
  }
  timings.stripeMs += performance.now() - callStarted;

  try {
    await timed(timings, () => steps.record(result));
  } catch (error) {
    const state = sqlState(error);
    if (state === SQLSTATE.leaseNotHeld || state === SQLSTATE.alreadyCompleted) {
      // Another attempt took over while this one was slow; the client's retry gets its result.
      throw inUse(1);
    }
    // The session exists at Stripe but is not recorded: end the lease so the retry takes over at
    // once with the SAME key, and Stripe hands back this very session.
    await timed(timings, () => steps.release(false, "record failed")).catch(() => {});
    throw new HttpError(
      503,
      "temporarily_unavailable",
      "Cannot create checkout: storage is unavailable, retry with the same Idempotency-Key",
      undefined,
      { "retry-after": "1" },
    );
  }
  return result;
}

/** 409 for a duplicate of an operation that is in flight. */
export function inUse(retryAfterSeconds: number): HttpError {
  return new HttpError(
    409,
    "idempotency_key_in_use",
    "Cannot create checkout: a request with this Idempotency-Key is in progress, retry shortly",
    undefined,
    { "retry-after": String(retryAfterSeconds) },
  );
}

async function timed<T>(timings: Timings, step: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await step();
  } finally {
    timings.dbMs += performance.now() - started;
  }
}
