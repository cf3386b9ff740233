/**
 * How a storefront starts a checkout: the reference for calling guest-checkout (and, with the
 * user's access token, enhanced-checkout) from the browser with supabase-js.
 *
 * - One Idempotency-Key per checkout attempt, made once and sent again on every retry of that
 *   attempt: a double click, a lost response or a reload never yields a second session.
 * - A network failure (the request may or may not have arrived), 409 idempotency_key_in_use
 *   (the same attempt is still in flight) and 503 are retried with the SAME key, after
 *   Retry-After when the server gives one. Every other error is final for that key.
 */
import {
  FunctionsFetchError,
  FunctionsHttpError,
  FunctionsRelayError,
  type SupabaseClient,
} from "@supabase/supabase-js";

/** The body guest-checkout takes (see the README's Checkout API). */
export interface GuestCheckoutRequest {
  eventId: string;
  items: { tierId: string; quantity: number }[];
  email: string;
  name?: string;
  successUrl?: string;
  cancelUrl?: string;
}

/** guest-checkout's 201 body. */
export interface CheckoutSession {
  orderId: string;
  sessionId: string;
  url: string;
  expiresAt: string;
}

/** How an attempt ended: a session to redirect to, or an error to show. */
export type CheckoutResult =
  | { ok: true; session: CheckoutSession; replayed: boolean; tries: number }
  | {
    ok: false;
    /** True when the same key may be tried again later (network, overload). */
    retryable: boolean;
    status: number | null;
    code: string;
    message: string;
    tries: number;
  };

/** Retry settings; the defaults suit a person waiting on a button. */
export interface RetryOptions {
  /** Calls per attempt, the first included (default 5). */
  maxTries?: number;
  /** Pause before the n-th retry when the server gives no Retry-After (default 400 ms · 2^n). */
  backoffMs?: (retry: number) => number;
  /** Longest pause honoured from a Retry-After header (default 5 s). */
  maxWaitMs?: number;
  sleep?: (ms: number) => Promise<void>;
}

/** A fresh Idempotency-Key (16–128 characters of A-Z a-z 0-9 _ . -). */
export function newIdempotencyKey(): string {
  return `sf-${crypto.randomUUID()}`;
}

/** Calls guest-checkout with `key`, retrying transient failures with the same key. */
export async function startGuestCheckout(
  supabase: SupabaseClient,
  request: GuestCheckoutRequest,
  key: string,
  options: RetryOptions = {},
): Promise<CheckoutResult> {
  const maxTries = options.maxTries ?? 5;
  const backoff = options.backoffMs ?? ((retry: number) => 400 * 2 ** (retry - 1));
  const sleep = options.sleep ??
    ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  let last: CheckoutResult | null = null;
  for (let tries = 1; tries <= maxTries; tries++) {
    const { data, error, response } = await supabase.functions.invoke<CheckoutSession>(
      "guest-checkout",
      { body: request, headers: { "Idempotency-Key": key } },
    );
    if (!error && data) {
      const replayed = response?.headers.get("idempotent-replayed") === "true";
      return { ok: true, session: data, replayed, tries };
    }
    last = await describeError(error, tries);
    if (!last.ok && !last.retryable) return last;
    if (tries < maxTries) {
      const retryAfter = retryAfterMs(error);
      await sleep(Math.min(retryAfter ?? backoff(tries), options.maxWaitMs ?? 5_000));
    }
  }
  return last ?? {
    ok: false,
    retryable: true,
    status: null,
    code: "no_attempt",
    message: "No attempt was made",
    tries: 0,
  };
}

async function describeError(error: unknown, tries: number): Promise<CheckoutResult> {
  if (error instanceof FunctionsHttpError) {
    const response = error.context as Response;
    const body = await response.clone().json().catch(() => null) as {
      error?: { code?: string; message?: string };
    } | null;
    const code = body?.error?.code ?? `http_${response.status}`;
    const retryable = response.status === 503 ||
      (response.status === 409 && code === "idempotency_key_in_use");
    return {
      ok: false,
      retryable,
      status: response.status,
      code,
      message: body?.error?.message ?? `The checkout failed (HTTP ${response.status})`,
      tries,
    };
  }
  // FunctionsFetchError: no answer at all (offline, connection cut, CORS); FunctionsRelayError:
  // the gateway could not reach the function. The request may have arrived: same key again.
  const network = error instanceof FunctionsFetchError || error instanceof FunctionsRelayError;
  return {
    ok: false,
    retryable: true,
    status: null,
    code: network ? "network_error" : "unexpected_error",
    message: network
      ? "The checkout service could not be reached"
      : `Unexpected answer: ${String(error)}`,
    tries,
  };
}

function retryAfterMs(error: unknown): number | null {
  if (!(error instanceof FunctionsHttpError)) return null;
  const seconds = Number((error.context as Response).headers.get("retry-after"));
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null;
}
