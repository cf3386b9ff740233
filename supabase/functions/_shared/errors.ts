/**
 * Every error the functions answer with, in one table: HTTP status, stable machine code, what
 * went wrong, and the Retry-After a client should honour. A response's message is
 * `Cannot <action>: <reason>`, the action being the endpoint's ("create checkout"), so shared
 * code (body limits, the idempotency protocol) never names an operation it does not know.
 */

interface ErrorSpec {
  status: number;
  /** The default reason; a call may give a more precise one. */
  reason: string;
  /** Seconds; a call may give another. */
  retryAfter?: number;
}

const CATALOGUE = {
  invalid_json: { status: 400, reason: "the body is not valid JSON" },
  validation_failed: { status: 400, reason: "the request body is invalid" },
  idempotency_key_missing: { status: 400, reason: "the Idempotency-Key header is required" },
  idempotency_key_invalid: {
    status: 400,
    reason: "Idempotency-Key must be 16-128 characters of A-Z a-z 0-9 _ . -",
  },
  quantity_exceeds_limit: { status: 400, reason: "more tickets than the tier allows per order" },
  redirect_url_not_allowed: { status: 400, reason: "a redirect URL is not on an allowed origin" },
  signature_missing: { status: 400, reason: "Stripe-Signature is missing" },
  signature_invalid: { status: 400, reason: "the signature does not verify" },
  invalid_event: { status: 400, reason: "the body is not a Stripe event" },
  unauthorized: { status: 401, reason: "the credentials are missing or invalid" },
  event_not_found: { status: 404, reason: "event not found or not on sale" },
  tier_not_found: { status: 404, reason: "a tier does not belong to this event" },
  order_not_found: { status: 404, reason: "the order does not exist" },
  method_not_allowed: { status: 405, reason: "use POST" },
  idempotency_key_in_use: {
    status: 409,
    reason: "a request with this Idempotency-Key is in progress, retry shortly",
    retryAfter: 1,
  },
  sold_out: { status: 409, reason: "a tier is sold out" },
  sales_closed: { status: 409, reason: "a tier is not on sale now" },
  order_already_paid: { status: 409, reason: "this order is already paid" },
  event_cancelled: { status: 409, reason: "the event is cancelled" },
  order_not_paid: { status: 409, reason: "the order is not paid" },
  refund_exceeds_amount: { status: 409, reason: "the amount is more than what is left to refund" },
  refund_in_doubt: {
    status: 409,
    reason: "an earlier attempt of this refund may have reached Stripe; an operator must check",
  },
  payload_too_large: { status: 413, reason: "the body is too large" },
  unsupported_media_type: { status: 415, reason: "Content-Type must be application/json" },
  idempotency_key_reused: {
    status: 422,
    reason: "this Idempotency-Key was used for a different request",
  },
  too_many_pending_checkouts: {
    status: 429,
    reason: "too many unpaid checkouts are pending",
    retryAfter: 60,
  },
  processing_failed: {
    status: 500,
    reason: "the event could not be applied now; Stripe redelivers it",
  },
  payment_provider_error: { status: 502, reason: "the payment provider refused the request" },
  payment_provider_unavailable: {
    status: 503,
    reason: "the payment provider is unavailable, retry with the same Idempotency-Key",
    retryAfter: 1,
  },
  temporarily_unavailable: {
    status: 503,
    reason: "the service is temporarily unavailable, retry with the same Idempotency-Key",
    retryAfter: 1,
  },
} as const satisfies Record<string, ErrorSpec>;

/** A machine-readable error code. */
export type ErrorCode = keyof typeof CATALOGUE;

/** Options of {@link HttpError}. */
export interface HttpErrorOptions {
  /** Machine-readable detail, e.g. zod issue paths. */
  details?: unknown;
  headers?: Record<string, string>;
}

/** An error that becomes an HTTP response; `message` is the reason, without the action. */
export class HttpError extends Error {
  readonly details: unknown;
  readonly headers: Record<string, string>;

  constructor(
    readonly status: number,
    readonly code: string,
    reason: string,
    options: HttpErrorOptions = {},
  ) {
    super(reason);
    this.name = "HttpError";
    this.details = options.details;
    this.headers = options.headers ?? {};
  }
}

/** Options of {@link apiError}. */
export interface ApiErrorOptions extends HttpErrorOptions {
  reason?: string;
  retryAfter?: number;
}

/** The catalogued error `code`, with its status and Retry-After. */
export function apiError(code: ErrorCode, options: ApiErrorOptions = {}): HttpError {
  const spec: ErrorSpec = CATALOGUE[code];
  const retryAfter = options.retryAfter ?? spec.retryAfter;
  return new HttpError(spec.status, code, options.reason ?? spec.reason, {
    details: options.details,
    headers: {
      ...(retryAfter === undefined ? {} : { "retry-after": String(retryAfter) }),
      ...options.headers,
    },
  });
}

/**
 * An error a SQL function raised, as the catalogued error its SQLSTATE stands for in `codes`, or
 * undefined when it stands for none. The function's message already says what was wrong
 * ("Cannot create checkout: tier X is sold out"): its reason is kept, without the action.
 */
export function sqlFunctionError(
  error: unknown,
  state: string | undefined,
  codes: Readonly<Record<string, ErrorCode>>,
  options: { retryAfter?: number } = {},
): HttpError | undefined {
  const code = state ? codes[state] : undefined;
  if (!code) return undefined;
  const reason = error instanceof Error ? error.message.replace(/^Cannot [^:]*: /, "") : undefined;
  return apiError(code, { reason, retryAfter: options.retryAfter });
}
