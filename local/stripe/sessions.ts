/**
 * Checkout Session state and the API routes for it: create, retrieve, expire, list line items.
 *
 * As on Stripe, an open session expires at `expires_at` (here: when it is next looked at), only an
 * open session can be expired, and `expand[]=line_items` embeds the line items. Each completion
 * or expiry is told to `onSessionChange` and `onEvent` (events.ts, webhooks.ts); a completed
 * payment is told to `paid` first, so its charge exists (refunds.ts) before anyone hears of it.
 */
import { type CheckoutEventType, type EventContext, type EventOptions, notify } from "./events.ts";
import type { FormObject } from "./form.ts";
import { errorOutcome, okOutcome, type Outcome } from "./outcome.ts";
import {
  parseCreateParams,
  type PriceFixture,
  readList,
  rejectUnknown,
  type ResolvedLineItem,
} from "./params.ts";
import type { ApiCall, Route } from "./routes.ts";
import {
  buildSession,
  type CheckoutSession,
  lineItemObject,
  markCompleted,
  markExpired,
} from "./session-object.ts";

/** The options the session state reads (at each use, as given to `startStripeServer`). */
export interface SessionOptions extends EventOptions {
  /** Prices that line items may reference by id. */
  prices?: Record<string, PriceFixture>;
  /**
   * Called after a session completes or expires (for a webhook forwarder). A returned promise is
   * awaited (for at most 15 s) by the hosted page's "Pay" before it redirects to `success_url`,
   * as is one `onEvent` returned.
   */
  onSessionChange?: (session: CheckoutSession, eventType: CheckoutEventType) => unknown;
}

/** The server's sessions and what it knows about them. */
export interface SessionState {
  options: SessionOptions;
  /** Base URL of the server, for the hosted page's `url`. */
  baseUrl: string;
  /** Clock in milliseconds. */
  now: () => number;
  sessions: Map<string, CheckoutSession>;
  lineItems: Map<string, ResolvedLineItem[]>;
  /** Sessions actually created (replays do not count). */
  created: number;
  /** Told about each session completed with a `payment_intent`, before any listener. */
  paid: (session: CheckoutSession) => void;
}

/** Empty session state; `options` is read at each use. */
export function createSessionState(
  options: SessionOptions,
  context: { baseUrl: string; now: () => number; paid?: (session: CheckoutSession) => void },
): SessionState {
  return {
    options,
    baseUrl: context.baseUrl,
    now: context.now,
    sessions: new Map(),
    lineItems: new Map(),
    created: 0,
    paid: context.paid ?? (() => {}),
  };
}

/** Forgets every session. */
export function resetSessions(state: SessionState): void {
  state.sessions.clear();
  state.lineItems.clear();
  state.created = 0;
}

function nowSeconds(state: SessionState): number {
  return Math.floor(state.now() / 1000);
}

const CHANGES: Record<CheckoutEventType, (session: CheckoutSession) => void> = {
  "checkout.session.completed": markCompleted,
  "checkout.session.expired": markExpired,
};

/** A session change: the session, what happens to it, and what caused it. */
export interface SessionChange {
  session: CheckoutSession;
  type: CheckoutEventType;
  context?: EventContext;
}

/**
 * Completes or expires a session and tells `onSessionChange` and `onEvent`; the promise settles
 * when promises they returned do (never rejects).
 */
export function changeSession(state: SessionState, change: SessionChange): Promise<void> {
  const { session, type } = change;
  CHANGES[type](session);
  if (type === "checkout.session.completed" && session.payment_intent) state.paid(session);
  const { onSessionChange, onEvent } = state.options;
  const event = { object: session, type, context: change.context };
  return Promise.all([
    notify(
      onSessionChange && ((object) => onSessionChange(object as CheckoutSession, type)),
      event,
    ),
    notify(onEvent, event),
  ]).then(() => {});
}

/**
 * The session with this id, or undefined. Stripe expires sessions at expires_at on its own; here
 * that happens when a session is looked at.
 */
export function findSession(state: SessionState, id: string): CheckoutSession | undefined {
  const session = state.sessions.get(id);
  if (session?.status === "open" && session.expires_at <= nowSeconds(state)) {
    changeSession(state, { session, type: "checkout.session.expired" });
  }
  return session;
}

/** Completes or expires an open session by hand; returns a copy. Throws unless it is open. */
export function changeOpenSession(
  state: SessionState,
  id: string,
  eventType: CheckoutEventType,
): CheckoutSession {
  const session = findSession(state, id);
  if (!session) throw new Error(`Cannot change session ${id}: no such session`);
  if (session.status !== "open") {
    throw new Error(`Cannot change session ${id}: its status is ${session.status}, not open`);
  }
  changeSession(state, { session, type: eventType });
  return structuredClone(session);
}

/** Expires every open session whose `expires_at` has passed; returns their ids. */
export function sweepExpired(state: SessionState): string[] {
  return [...state.sessions.keys()].filter((id) => {
    const wasOpen = state.sessions.get(id)?.status === "open";
    return wasOpen && findSession(state, id)?.status === "expired";
  });
}

// ---------------------------------------------------------------------------------------------
// API routes
// ---------------------------------------------------------------------------------------------

/** The Checkout Session endpoints, bound to `state`. */
export function sessionRoutes(state: SessionState): Route[] {
  return [
    {
      method: "POST",
      pattern: /^\/v1\/checkout\/sessions$/,
      handle: (call) => createSession(state, call),
    },
    {
      method: "GET",
      pattern: /^\/v1\/checkout\/sessions\/([^/]+)$/,
      handle: (call) => retrieveSession(state, call),
    },
    {
      method: "POST",
      pattern: /^\/v1\/checkout\/sessions\/([^/]+)\/expire$/,
      handle: (call) => expireSession(state, call),
    },
    {
      method: "GET",
      pattern: /^\/v1\/checkout\/sessions\/([^/]+)\/line_items$/,
      handle: (call) => listLineItems(state, call),
    },
  ];
}

const EXPAND_ONLY = new Set(["expand"]);
const LIST_PARAMS = new Set(["expand", "limit", "starting_after", "ending_before"]);

function createSession(state: SessionState, { params }: ApiCall): Outcome {
  const now = nowSeconds(state);
  const input = parseCreateParams(params, { nowSeconds: now, prices: state.options.prices ?? {} });
  const session = buildSession(input, state.baseUrl, now);
  state.sessions.set(session.id, session);
  state.lineItems.set(session.id, input.lineItems);
  state.created += 1;
  return okOutcome(withExpansions(state, session, params));
}

function missingSession(id: string): Outcome {
  return errorOutcome(404, {
    type: "invalid_request_error",
    code: "resource_missing",
    param: "session",
    message: `No such checkout.session: '${id}'`,
  });
}

function retrieveSession(state: SessionState, { params, pathArgs: [id = ""] }: ApiCall): Outcome {
  rejectUnknown(params, EXPAND_ONLY);
  const session = findSession(state, id);
  return session ? okOutcome(withExpansions(state, session, params)) : missingSession(id);
}

// Stripe: "A Checkout Session can be expired when it is in one of these statuses: open".
function expireSession(state: SessionState, call: ApiCall): Outcome {
  const { params, pathArgs: [id = ""] } = call;
  rejectUnknown(params, EXPAND_ONLY);
  const session = findSession(state, id);
  if (!session) return missingSession(id);
  if (session.status !== "open") {
    // The endpoint ran and refused, so this answer is saved under the key like any other.
    return errorOutcome(400, {
      type: "invalid_request_error",
      message: `Only Checkout Sessions with a status of "open" can be expired; ` +
        `${id} has status "${session.status}".`,
    }, true);
  }
  changeSession(state, {
    session,
    type: "checkout.session.expired",
    context: { request: call.request },
  });
  return okOutcome(withExpansions(state, session, params));
}

function listLineItems(state: SessionState, { params, pathArgs: [id = ""] }: ApiCall): Outcome {
  rejectUnknown(params, LIST_PARAMS);
  const session = findSession(state, id);
  if (!session) return missingSession(id);
  return okOutcome(lineItemList(state, session));
}

function lineItemList(state: SessionState, session: CheckoutSession): Record<string, unknown> {
  const items = state.lineItems.get(session.id) ?? [];
  return {
    object: "list",
    data: items.map((item) => lineItemObject(item, session.created)),
    has_more: false,
    url: `/v1/checkout/sessions/${session.id}/line_items`,
  };
}

function withExpansions(
  state: SessionState,
  session: CheckoutSession,
  params: FormObject,
): unknown {
  const expand = readList(params.expand, "expand") ?? [];
  const copy: Record<string, unknown> = structuredClone(session);
  if (expand.includes("line_items")) copy.line_items = lineItemList(state, session);
  return copy;
}
