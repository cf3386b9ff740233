/**
 * The checkout handler both endpoints share, in its natural phases: parse the request (auth,
 * Idempotency-Key, body, fingerprint) → claim (order and hold included; past expires_at, ask
 * Stripe first) → answer an existing operation, or create the session with the claim's key and
 * record it. A pure function of (Request, deps): index.ts builds the deps, tests build them
 * against a real database and the local Stripe server.
 */
import type Stripe from "stripe";
import type { CallerCheck } from "./auth.ts";
import { checkoutSessionParams, HOLD_GRACE_SECONDS } from "./checkout-session.ts";
import { fingerprint, makeStripeIdempotencyKey, OPERATION } from "./checkout-utils.ts";
import { clientAddress, type ClientAddressConfig } from "./client-address.ts";
import { DEFAULT_LOCK_TIMEOUT_MS } from "./config.ts";
import {
  type ArmedClaim,
  type CheckoutClaim,
  type CheckoutClaimInput,
  claimCheckout,
  type HoldLimits,
  recordCheckout,
  releaseCheckout,
  settleCheckoutSession,
  type Sql,
  SQLSTATE,
  sqlState,
  type WebhookResult,
} from "./db.ts";
import { apiError, type ErrorCode, sqlFunctionError } from "./errors.ts";
import {
  canonicalJsonResponse,
  envelope,
  readJsonBody,
  type RequestContext,
  type RequestLog,
} from "./http.ts";
import { answerSettled, runAttempt, unavailable } from "./idempotency.ts";
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
  /**
   * Checks the caller from the headers, before the body is read: the user's access token for
   * enhanced-checkout (userCaller), a publishable key for guest-checkout (publishableKeyCaller).
   */
  authenticate: CallerCheck;
  /** How long an attempt may hold the operation before another request may take over. */
  leaseSeconds?: number;
  /** Hold-flooding limits for new checkouts; absent means unlimited. */
  holdLimits?: HoldLimits;
  /** Where the per-address limit reads the client's address; absent means the rightmost XFF entry. */
  clientAddress?: ClientAddressConfig;
  /**
   * The longest a claim waits for its tier's lock (CHECKOUT_LOCK_TIMEOUT_MS; default 2000 ms);
   * beyond it the buyer gets 503 temporarily_unavailable with Retry-After and nothing is written.
   */
  lockTimeoutMs?: number;
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

/** The checkout SQL functions' SQLSTATEs, as API errors. */
const SQL_ERRORS: Record<string, ErrorCode> = {
  CK001: "event_not_found",
  CK002: "tier_not_found",
  CK003: "sold_out",
  CK004: "quantity_exceeds_limit",
  CK005: "sales_closed",
  CK006: "too_many_pending_checkouts",
  CK007: "order_already_paid",
  CK008: "event_cancelled",
  "22023": "validation_failed",
};

/** The foreign key from public.orders.user_id to auth.users. */
const USER_FK = "orders_user_id_fkey";

type Buyer = { userId: string } | { email: string; name: string | null };

/** Where Stripe sends the buyer when the request names no URL. */
interface DefaultRedirects {
  successUrl: string;
  cancelUrl: string;
}

/** Builds the handler for one endpoint. */
export function createCheckoutHandler(deps: CheckoutDeps): (request: Request) => Promise<Response> {
  // {CHECKOUT_SESSION_ID} is Stripe's template and must stay unescaped, so it is appended, not
  // passed through URL.
  const defaults: DefaultRedirects = {
    successUrl: `${
      new URL("/checkout/success", deps.siteUrl).href
    }?session_id={CHECKOUT_SESSION_ID}`,
    cancelUrl: new URL("/checkout/cancel", deps.siteUrl).href,
  };
  return envelope(
    {
      fn: deps.endpoint,
      action: "create checkout",
      cors: { allowedOrigins: deps.allowedOrigins },
      log: deps.log,
    },
    async (request, context) => {
      context.note({ operation: null });
      const input = await parseCheckout(request, deps, defaults, context);
      const claim = await claimWithStripesWord(deps, input, context);
      context.note({ claim: claim.outcome });
      if (!isArmed(claim)) return answerExisting(claim, context);
      return await createSession(deps, claim, context);
    },
  );
}

/** Auth, Idempotency-Key, body and fingerprint: the claim's input, or a 4xx. */
async function parseCheckout(
  request: Request,
  deps: CheckoutDeps,
  defaults: DefaultRedirects,
  context: RequestContext,
): Promise<CheckoutClaimInput> {
  // Who calls, from the headers alone: a refused caller has had nothing read or written.
  const caller = await deps.authenticate(request);
  const claims = deps.endpoint === "enhanced-checkout"
    ? (caller.kind === "user" ? caller.claims : null)
    : null;
  if (deps.endpoint === "enhanced-checkout" && !claims) {
    throw apiError("unauthorized", { reason: "not authenticated: a signed-in user is required" });
  }
  const clientKey = requireIdempotencyKey(request);
  context.note({ operation: `${OPERATION.checkoutCreate}:${clientKey}` });
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
  return {
    operationId: clientKey,
    stripeIdempotencyKey: makeStripeIdempotencyKey(OPERATION.checkoutCreate, clientKey),
    requestFingerprint,
    leaseToken: crypto.randomUUID(),
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
    lockTimeoutMs: deps.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS,
  };
}

/**
 * The claim. Past the session's expires_at only Stripe knows whether it was paid: the claim
 * says verify, Stripe is asked and its answer stored, then the claim runs again (and now
 * renews, or finds the order paid).
 */
async function claimWithStripesWord(
  deps: CheckoutDeps,
  input: CheckoutClaimInput,
  context: RequestContext,
): Promise<CheckoutClaim> {
  const claim = () =>
    context.db(() => deps.store.claim(input)).catch((e) => {
      throw fromSqlError(e);
    });
  const first = await claim();
  if (first.outcome !== "verify") return first;
  context.note({ verified: await settleWithStripe(deps, first, context) });
  return await claim();
}

function isArmed(claim: CheckoutClaim): claim is ArmedClaim {
  return ["created", "takeover", "retry", "renew", "reconcile"].includes(claim.outcome);
}

/** The answer for an operation this request does not get to run. */
function answerExisting(claim: Exclude<CheckoutClaim, ArmedClaim>, context: RequestContext) {
  switch (claim.outcome) {
    case "replay":
    case "conflict":
    case "mismatch":
      return answerSettled(claim, context);
    case "paid":
      context.note({ outcome: "paid" });
      throw apiError("order_already_paid");
    case "verify":
      // Stripe's answer could not be stored on the order: never open a second session blind.
      context.note({ outcome: "unverified" });
      throw unavailable(2);
  }
}

/** This request holds the lease and the key: create the session, record it, answer 201. */
async function createSession(
  deps: CheckoutDeps,
  claim: ArmedClaim,
  context: RequestContext,
): Promise<Response> {
  const { operationId, leaseToken } = claim;
  const session = await runAttempt<Stripe.Checkout.Session>({
    call: () =>
      deps.stripe.checkout.sessions.create(checkoutSessionParams(claim), {
        idempotencyKey: claim.stripeIdempotencyKey,
      }),
    record: (created) =>
      deps.store.record({
        operationId,
        leaseToken,
        sessionId: created.id,
        responseBody: checkoutResponseBody(claim, created),
      }),
    release: async (keyConsumed, reason) => {
      await deps.store.release({ operationId, leaseToken, keyConsumed, error: reason });
    },
  }, context);
  context.note({ outcome: "created" });
  return canonicalJsonResponse(201, checkoutResponseBody(claim, session), {
    "idempotent-replayed": "false",
  });
}

/**
 * Asks Stripe how the claim's session ended and stores the answer on the order: complete → the
 * order is fulfilled (as the webhook would) and the buyer hears 409 order_already_paid; open →
 * expired first, so it can no longer be paid while a new one is opened; expired → nothing more.
 * Stripe unreachable → 503, nothing renewed. Returns the session's final status, for the log.
 */
async function settleWithStripe(
  deps: CheckoutDeps,
  claim: Extract<CheckoutClaim, { outcome: "verify" }>,
  context: RequestContext,
): Promise<string> {
  const id = claim.stripeSessionId;
  if (!id) throw unavailable(2);
  const sessions = deps.stripe.checkout.sessions;
  const session = await context.stripe(async () => {
    const found = await sessions.retrieve(id);
    if (found.status !== "open") return found;
    // A refusal here usually means it completed a moment ago: look again.
    return await sessions.expire(id).catch(() => sessions.retrieve(id));
  }).catch(() => {
    throw unavailable(2);
  });
  await context.db(() => deps.store.settle(session));
  if (session.status === "complete") throw apiError("order_already_paid");
  return session.status ?? "unknown";
}

/** The 201 body for a claimed order and its session. */
export function checkoutResponseBody(
  claim: ArmedClaim,
  session: Stripe.Checkout.Session,
): CheckoutResponse {
  return {
    orderId: claim.order.orderId,
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
    throw apiError("redirect_url_not_allowed", {
      reason: `${field} is not on an allowed origin`,
      details: [{ path: [field], code: "redirect_url_not_allowed", message: "origin not allowed" }],
    });
  }
  return value;
}

function fromSqlError(error: unknown): unknown {
  const state = sqlState(error);
  // A validly signed token whose user no longer exists (deleted, tokens still unexpired): a
  // retry can never succeed, so it is the token that is bad, not the service.
  if (state === "23503" && (error as { constraint_name?: string }).constraint_name === USER_FK) {
    return apiError("unauthorized", {
      reason: "the token's user does not exist",
      headers: { "www-authenticate": 'Bearer error="invalid_token"' },
    });
  }
  // The tier (or the operation's row) stayed locked past CHECKOUT_LOCK_TIMEOUT_MS: the claim
  // rolled back whole, so the same key may simply come again.
  if (state === SQLSTATE.lockTimeout) {
    return apiError("temporarily_unavailable", {
      reason: "too many checkouts of this tier at once, retry with the same Idempotency-Key",
      retryAfter: 1,
    });
  }
  // CK006 carries the seconds until a pending hold frees up in its DETAIL.
  const detail = Number((error as { detail?: string }).detail);
  return sqlFunctionError(error, state, SQL_ERRORS, {
    retryAfter: state === "CK006" && Number.isFinite(detail) ? detail : undefined,
  }) ?? error;
}
