/**
 * What an API call produced, before the server writes it out, and Stripe's error bodies
 * (docs.stripe.com/api/errors: `{ "error": { "type", "message", "code"?, "param"? } }`).
 */

/** The `error` object of a Stripe error response. */
export interface StripeErrorBody {
  type: "invalid_request_error" | "idempotency_error" | "api_error";
  message: string;
  code?: string;
  param?: string;
}

/** What an API call produced, before it is written out. */
export interface Outcome {
  status: number;
  body: unknown;
  /** Whether the idempotency layer saves it (only once the endpoint began executing). */
  storable: boolean;
  replayed?: boolean;
  originalRequestId?: string;
  headers?: Record<string, string>;
}

/** A Stripe error answer; `storable` only when the endpoint ran and refused. */
export function errorOutcome(status: number, error: StripeErrorBody, storable = false): Outcome {
  return { status, body: { error }, storable };
}

/** A 200 answer from an endpoint (saved under the idempotency key). */
export function okOutcome(body: unknown): Outcome {
  return { status: 200, body, storable: true };
}
