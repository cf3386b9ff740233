/**
 * The Stripe client: one per process, fetch-based (works in the edge runtime), a pinned API
 * version, and STRIPE_API_BASE so that stripe-mock or a local Stripe-compatible server can
 * stand in for api.stripe.com.
 */
import Stripe from "stripe";

/** The API version this code and its types are written against (stripe@23.1.0's own). */
export const STRIPE_API_VERSION = "2026-10-28.endive";

/** Options for {@link createStripeClient}. */
export interface StripeClientOptions {
  /** e.g. http://127.0.0.1:12111; null or absent for api.stripe.com. */
  apiBase?: URL | null;
  /** Per-request timeout. */
  timeoutMs?: number;
  /**
   * Retries inside one call. The SDK retries with the SAME idempotency key, which is safe, and
   * only on connection errors, 409 and 5xx that Stripe marks retryable; one retry absorbs a
   * blip without stretching the request past the claim's lease.
   */
  maxNetworkRetries?: number;
}

/** Builds the Stripe client. */
export function createStripeClient(secretKey: string, options: StripeClientOptions = {}): Stripe {
  const base = options.apiBase ?? null;
  return new Stripe(secretKey, {
    apiVersion: STRIPE_API_VERSION,
    httpClient: Stripe.createFetchHttpClient(),
    maxNetworkRetries: options.maxNetworkRetries ?? 1,
    timeout: options.timeoutMs ?? 10_000,
    telemetry: false,
    ...(base
      ? {
        host: base.hostname,
        port: base.port || (base.protocol === "https:" ? "443" : "80"),
        protocol: base.protocol === "https:" ? "https" : "http",
      }
      : {}),
  });
}

export { Stripe };
