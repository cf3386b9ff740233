/**
 * The checkout handler both endpoints share: validate → claim (order and hold included) →
 * Stripe checkout.sessions.create with the claim's key → record → respond. A pure function of
 * (Request, deps): index.ts builds the deps, tests build them against a real database.
 */
import type Stripe from "stripe";
import type { TokenVerifier } from "./auth.ts";
import { checkoutSessionParams, HOLD_GRACE_SECONDS } from "./checkout-session.ts";
import { fingerprint, makeStripeIdempotencyKey, OPERATION } from "./checkout-utils.ts";
import { clientAddress, type ClientAddressConfig } from "./client-address.ts";
import {
  type CheckoutClaim,
  type CheckoutClaimInput,
  claimCheckout,
  type HoldLimits,
  recordCheckout,
  releaseCheckout,
  settleCheckoutSession,
  type Sql,
  sqlState,
  type WebhookResult,
} from "./db.ts";
import {
  canonicalJsonResponse,
  corsHeaders,
  errorResponse,
  HttpError,
  readJsonBody,
} from "./http.ts";
import { inUse, runAttempt, type Timings, unavailable } from "./idempotency.ts";
import {
  type GuestCheckoutBody,
  guestCheckoutBody,
  parseBody,
  requireIdempotencyKey,
  type UserCheckoutBody,
  userCheckoutBody,
} from "./schemas.ts";

/** The database steps of a checkout; a test may wrap them to inject faults. */
export interface CheckoutStore {
  claim(input: CheckoutClaimInput): Promise<CheckoutClaim>;
  record(
    input: { operationId: string; leaseToken: string; sessionId: string; responseBody: unknown },
  ): Promise<void>;
  release(
    input: { operationId: string; leaseToken: string; keyConsumed: boolean; error?: string },
  ): Promise<string>;
  /** Applies a retrieved Checkout Session's status to its order (as the webhook would). */
  settle(session: Stripe.Checkout.Session): Promise<WebhookResult>;
}

/** The store over a real database. */
export function sqlCheckoutStore(sql: Sql): CheckoutStore {
  return {
    claim: (input) => claimCheckout(sql, input),
    record: (input) => recordCheckout(sql, input),
    release: (input) => releaseCheckout(sql, input),
    settle: (session) => settleCheckoutSession(sql, session),
  };
}

/** One structured log line per request. */
export type RequestLog = (line: Record<string, unknown>) => void;

/** What the checkout handler needs. */
export interface CheckoutDeps {
  /** "enhanced-checkout" (signed-in buyer) or "guest-checkout". */
  endpoint: "enhanced-checkout" | "guest-checkout";
  store: CheckoutStore;
  stripe: Stripe;
  siteUrl: URL;
  allowedOrigins: ReadonlySet<string>;
  sessionTtlMinutes: number;
  /**
   * How long after a session's expires_at its seats still count when Stripe has not said it
   * ended (CHECKOUT_HOLD_GRACE_MINUTES; default 60 minutes).
   */
  holdGraceSeconds?: number;
  /** Required for enhanced-checkout. */
  verifyToken?: TokenVerifier;
  /** How long an attempt may hold the operation before another request may take over. */
  leaseSeconds?: number;
  /** Hold-flooding limits for new checkouts; absent means unlimited. */
  holdLimits?: HoldLimits;
  /** Where the per-address limit reads the client's address; absent means the rightmost XFF entry. */
  clientAddress?: ClientAddressConfig;
  log?: RequestLog;
}

/** The 201 body, stored and replayed byte for byte. */
export interface CheckoutResponse {
  orderId: string;
  sessionId: string;
  url: string | null;
  expiresAt: string;
}

/** Seats outlive expires_at this long when Stripe has not said the session ended. */
const DEFAULT_HOLD_GRACE_SECONDS = 3600;
const DEFAULT_LEASE_SECONDS = 30;

/** Maps the checkout SQL functions' SQLSTATEs to HTTP errors. */
const SQL_ERRORS: Record<string, [number, string]> = {
  CK001: [404, "event_not_found"],
  CK002: [404, "tier_not_found"],
  CK003: [409, "sold_out"],
  CK004: [400, "quantity_exceeds_limit"],
  CK005: [409, "sales_closed"],
  CK006: [429, "too_many_pending_checkouts"],
  CK007: [409, "order_already_paid"],
  "22023": [400, "validation_failed"],
};

/** The foreign key from public.orders.user_id to auth.users. */
const USER_FK = "orders_user_id_fkey";

type Buyer = { userId: string } | { email: string; name: string | null };

/** Builds the handler for one endpoint. */
export function createCheckoutHandler(deps: CheckoutDeps): (request: Request) => Promise<Response> {
  if (deps.endpoint === "enhanced-checkout" && !deps.verifyToken) {
    throw new Error("enhanced-checkout needs a token verifier");
  }
  const log = deps.log ?? ((line) => console.log(JSON.stringify(line)));
  // {CHECKOUT_SESSION_ID} is Stripe's template and must stay unescaped, so it is appended, not
  // passed through URL.
  const defaults: DefaultRedirects = {
    successUrl: `${
      new URL("/checkout/success", deps.siteUrl).href
    }?session_id={CHECKOUT_SESSION_ID}`,
    cancelUrl: new URL("/checkout/cancel", deps.siteUrl).href,
  };

  return async (request) => {
    const started = performance.now();
    const timings: Timings = { stripeMs: 0, dbMs: 0 };
    const entry: Record<string, unknown> = { fn: deps.endpoint, operation: null, outcome: "error" };
    const cors = corsHeaders({ allowedOrigins: deps.allowedOrigins }, request);
    let response: Response;
    try {
      response = await handle(request, deps, defaults, timings, entry);
    } catch (error) {
      const httpError = error instanceof HttpError ? error : unexpected(error, entry);
      entry.code = httpError.code;
      response = errorResponse(httpError);
    }
    for (const [name, value] of Object.entries(cors)) response.headers.set(name, value);
    log({
      ...entry,
      status: response.status,
      stripe_ms: round(timings.stripeMs),
      db_ms: round(timings.dbMs),
      ms: round(performance.now() - started),
    });
    return response;
  };
}

/** Where Stripe sends the buyer when the request names no URL. */
interface DefaultRedirects {
  successUrl: string;
  cancelUrl: string;
}

async function handle(
  request: Request,
  deps: CheckoutDeps,
  defaults: DefaultRedirects,
  timings: Timings,
  entry: Record<string, unknown>,
): Promise<Response> {
  if (request.method === "OPTIONS") {
    entry.outcome = "preflight";
    return new Response(null, { status: 204 });
  }
  if (request.method !== "POST") {
    throw new HttpError(
      405,
      "method_not_allowed",
      `Cannot ${request.method} a checkout: use POST`,
      undefined,
      {
        allow: "POST, OPTIONS",
      },
    );
  }

  const claims = deps.verifyToken
    ? await deps.verifyToken(request.headers.get("authorization"))
    : null;
  const clientKey = requireIdempotencyKey(request);
  entry.operation = `${OPERATION.checkoutCreate}:${clientKey}`;
  const raw = await readJsonBody(request);

  let body: UserCheckoutBody | GuestCheckoutBody;
  let buyer: Buyer;
  if (claims) {
    body = parseBody(userCheckoutBody, raw);
    buyer = { userId: claims.sub };
  } else {
    const guest = parseBody(guestCheckoutBody, raw);
    body = guest;
    buyer = { email: guest.email.trim().toLowerCase(), name: guest.name ?? null };
  }
  const successUrl = redirectUrl(body.successUrl, "successUrl", deps) ?? defaults.successUrl;
  const cancelUrl = redirectUrl(body.cancelUrl, "cancelUrl", deps) ?? defaults.cancelUrl;
  const items = [...body.items].sort((a, b) => a.tierId.localeCompare(b.tierId));

  // Who asked, where, and for what: a key replayed by another buyer or endpoint is a mismatch.
  const requestFingerprint = await fingerprint({
    endpoint: deps.endpoint,
    buyer,
    eventId: body.eventId.toLowerCase(),
    items: items.map((i) => ({ tierId: i.tierId.toLowerCase(), quantity: i.quantity })),
    successUrl,
    cancelUrl,
  });

  const leaseToken = crypto.randomUUID();
  const claimInput: CheckoutClaimInput = {
    operationId: clientKey,
    stripeIdempotencyKey: makeStripeIdempotencyKey(OPERATION.checkoutCreate, clientKey),
    requestFingerprint,
    leaseToken,
    eventId: body.eventId,
    items,
    userId: "userId" in buyer ? buyer.userId : null,
    guestEmail: "email" in buyer ? buyer.email : null,
    guestName: "email" in buyer ? buyer.name : null,
    successUrl,
    cancelUrl,
    clientAddress: clientAddress(request, deps.clientAddress),
    limits: deps.holdLimits,
    holdSeconds: deps.sessionTtlMinutes * 60 + HOLD_GRACE_SECONDS,
    holdGraceSeconds: deps.holdGraceSeconds ?? DEFAULT_HOLD_GRACE_SECONDS,
    leaseSeconds: deps.leaseSeconds ?? DEFAULT_LEASE_SECONDS,
  };
  let claim = await claimTimed(deps, claimInput, timings);
  if (claim.outcome === "verify") {
    // Past the session's expires_at only Stripe knows whether it was paid: ask, store the
    // answer, then claim again (which now renews, or finds the order paid).
    entry.verified = await settleWithStripe(deps, claim, timings);
    claim = await claimTimed(deps, claimInput, timings);
  }
  entry.claim = claim.outcome;

  switch (claim.outcome) {
    case "replay":
      entry.outcome = "replayed";
      return canonicalJsonResponse(claim.responseStatus ?? 200, claim.responseBody, {
        "idempotent-replayed": "true",
      });
    case "conflict":
      entry.outcome = "conflict";
      throw inUse(1);
    case "mismatch":
      entry.outcome = "mismatch";
      throw new HttpError(
        422,
        "idempotency_key_reused",
        "Cannot create checkout: this Idempotency-Key was used for a different request",
      );
    case "paid":
      entry.outcome = "paid";
      throw alreadyPaid();
    case "verify":
      // Stripe's answer could not be stored on the order: never open a second session blind.
      entry.outcome = "unverified";
      throw unavailable(2);
  }

  // created | takeover | retry | renew: this request holds the lease and the key.
  const key = claim.stripeIdempotencyKey!;
  const held = claim.leaseToken!;
  const params = checkoutSessionParams(claim);
  const session = await runAttempt<Stripe.Checkout.Session>({
    call: () => deps.stripe.checkout.sessions.create(params, { idempotencyKey: key }),
    record: (created) =>
      deps.store.record({
        operationId: clientKey,
        leaseToken: held,
        sessionId: created.id,
        responseBody: checkoutResponseBody(claim, created),
      }),
    release: async (keyConsumed, reason) => {
      await deps.store.release({
        operationId: clientKey,
        leaseToken: held,
        keyConsumed,
        error: reason,
      });
    },
  }, timings);

  entry.outcome = "created";
  return canonicalJsonResponse(201, checkoutResponseBody(claim, session), {
    "idempotent-replayed": "false",
  });
}

async function claimTimed(
  deps: CheckoutDeps,
  input: CheckoutClaimInput,
  timings: Timings,
): Promise<CheckoutClaim> {
  const started = performance.now();
  try {
    return await deps.store.claim(input);
  } catch (error) {
    throw fromSqlError(error);
  } finally {
    timings.dbMs += performance.now() - started;
  }
}

/**
 * Asks Stripe how the claim's session ended and stores the answer on the order: complete → the
 * order is fulfilled (as the webhook would) and the buyer hears 409 order_already_paid; open →
 * expired first, so it can no longer be paid while a new one is opened; expired → nothing more.
 * Stripe unreachable → 503, nothing renewed. Returns the session's final status, for the log.
 */
async function settleWithStripe(
  deps: CheckoutDeps,
  claim: CheckoutClaim,
  timings: Timings,
): Promise<string> {
  const id = claim.stripeSessionId;
  if (!id) throw unavailable(2);
  const stripeStarted = performance.now();
  let session: Stripe.Checkout.Session;
  try {
    session = await deps.stripe.checkout.sessions.retrieve(id);
    if (session.status === "open") {
      // A refusal here usually means it completed a moment ago: look again.
      session = await deps.stripe.checkout.sessions.expire(id).catch(() =>
        deps.stripe.checkout.sessions.retrieve(id)
      );
    }
  } catch {
    throw unavailable(2);
  } finally {
    timings.stripeMs += performance.now() - stripeStarted;
  }
  const dbStarted = performance.now();
  try {
    await deps.store.settle(session);
  } finally {
    timings.dbMs += performance.now() - dbStarted;
  }
  if (session.status === "complete") throw alreadyPaid();
  return session.status ?? "unknown";
}

function alreadyPaid(): HttpError {
  return new HttpError(
    409,
    "order_already_paid",
    "Cannot create checkout: this order is already paid",
  );
}

/** The 201 body for a claimed order and its session. */
export function checkoutResponseBody(
  claim: CheckoutClaim,
  session: Stripe.Checkout.Session,
): CheckoutResponse {
  return {
    orderId: claim.orderId!,
    sessionId: session.id,
    url: session.url,
    expiresAt: new Date(session.expires_at * 1000).toISOString(),
  };
}

/** The request's redirect URL when it is on an allowed origin; undefined when absent. */
function redirectUrl(
  value: string | undefined,
  field: string,
  deps: CheckoutDeps,
): string | undefined {
  if (value === undefined) return undefined;
  if (!deps.allowedOrigins.has(new URL(value).origin)) {
    throw new HttpError(
      400,
      "redirect_url_not_allowed",
      `Cannot create checkout: ${field} is not on an allowed origin`,
      [
        { path: [field], code: "redirect_url_not_allowed", message: "origin not allowed" },
      ],
    );
  }
  return value;
}

function fromSqlError(error: unknown): unknown {
  const state = sqlState(error);
  // A validly signed token whose user no longer exists (deleted, tokens still unexpired): a
  // retry can never succeed, so it is the token that is bad, not the service.
  if (state === "23503" && (error as { constraint_name?: string }).constraint_name === USER_FK) {
    return new HttpError(
      401,
      "unauthorized",
      "Cannot authenticate: the token's user does not exist",
      undefined,
      { "www-authenticate": 'Bearer error="invalid_token"' },
    );
  }
  const mapped = state ? SQL_ERRORS[state] : undefined;
  if (!mapped) return error;
  const message = error instanceof Error ? error.message : "Cannot create checkout";
  // CK006 carries the seconds until a pending hold frees up in its DETAIL.
  const retryAfter = state === "CK006"
    ? { "retry-after": String((error as { detail?: string }).detail ?? "60") }
    : undefined;
  return new HttpError(mapped[0], mapped[1], message, undefined, retryAfter);
}

function unexpected(error: unknown, entry: Record<string, unknown>): HttpError {
  // Name and SQLSTATE only: messages can carry connection strings or parameters.
  entry.error = error instanceof Error ? error.name : typeof error;
  const state = sqlState(error);
  if (state) entry.sqlstate = state;
  return new HttpError(
    503,
    "temporarily_unavailable",
    "Cannot create checkout: the service is temporarily unavailable, retry with the same Idempotency-Key",
    undefined,
    { "retry-after": "1" },
  );
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
