/**
 * The claim → call → record protocol around one Stripe call, generic over the operation
 * (checkout:create today, refund:create tomorrow). It decides, from how the Stripe call failed,
 * whether the Stripe key is burnt, and what the client is told. It knows no operation: errors
 * are phrased by the endpoint's envelope.
 */
import Stripe from "stripe";
import { SQLSTATE, sqlState } from "./db.ts";
import { apiError, type HttpError } from "./errors.ts";
import { canonicalJsonResponse, type RequestContext } from "./http.ts";

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
  // Stripe's error code (charge_disputed, amount_too_large, …) says why to an operator; it is
  // never personal data.
  const code = error instanceof Stripe.errors.StripeError && error.code ? ` ${error.code}` : "";
  const reason = error instanceof Error
    ? `${error.name}${status ? ` ${status}` : ""}${code}`
    : "unknown";
  if (status === undefined || status === 409 || status === 429) {
    const retryAfter = status === 429 ? 2 : 1;
    return { keyState: "no_answer", keyConsumed: false, error: unavailable(retryAfter), reason };
  }
  if (status >= 500) {
    return { keyState: "answered", keyConsumed: true, error: unavailable(2), reason };
  }
  return {
    keyState: error instanceof Stripe.errors.StripeIdempotencyError ? "key_reused" : "answered",
    keyConsumed: true,
    error: apiError("payment_provider_error"),
    reason,
  };
}

/** 503 for a payment provider that cannot be reached now; the same key retries safely. */
export function unavailable(retryAfter: number): HttpError {
  return apiError("payment_provider_unavailable", { retryAfter });
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

/** Runs an armed attempt: call Stripe, then record, or release on failure. */
export async function runAttempt<T>(steps: AttemptSteps<T>, context: RequestContext): Promise<T> {
  let result: T;
  try {
    result = await context.stripe(steps.call);
  } catch (error) {
    const failure = classifyStripeError(error);
    await context.db(() => steps.release(failure.keyConsumed, failure.reason)).catch(() => {
      // The lease runs out on its own; the next retry takes over with the same key.
    });
    throw failure.error;
  }

  try {
    await context.db(() => steps.record(result));
  } catch (error) {
    const state = sqlState(error);
    if (state === SQLSTATE.leaseNotHeld || state === SQLSTATE.alreadyCompleted) {
      // Another attempt took over while this one was slow; the client's retry gets its result.
      throw inUse(1);
    }
    // The object exists at Stripe but is not recorded: end the lease so the retry takes over at
    // once with the SAME key, and Stripe hands back this very object.
    await context.db(() => steps.release(false, "record failed")).catch(() => {});
    throw apiError("temporarily_unavailable", {
      reason: "storage is unavailable, retry with the same Idempotency-Key",
    });
  }
  return result;
}

/** 409 for a duplicate of an operation that is in flight. */
export function inUse(retryAfterSeconds: number): HttpError {
  return apiError("idempotency_key_in_use", { retryAfter: retryAfterSeconds });
}

/** The outcomes of a claim that every operation answers alike. */
export type SettledClaim =
  | { outcome: "replay"; responseStatus: number; responseBody: unknown }
  | { outcome: "conflict" }
  | { outcome: "mismatch" };

/**
 * The answer for an operation this request does not get to run: the stored response byte for
 * byte (Idempotent-Replayed: true), 409 while another attempt holds it, 422 for another request
 * under the same key.
 */
export function answerSettled(claim: SettledClaim, context: RequestContext): Response {
  switch (claim.outcome) {
    case "replay":
      context.note({ outcome: "replayed" });
      return canonicalJsonResponse(claim.responseStatus, claim.responseBody, {
        "idempotent-replayed": "true",
      });
    case "conflict":
      context.note({ outcome: "conflict" });
      throw inUse(1);
    case "mismatch":
      context.note({ outcome: "mismatch" });
      throw apiError("idempotency_key_reused");
  }
}
