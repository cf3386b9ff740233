/**
 * Checkout Session state and the API routes for it: create, retrieve, expire, list line items.
 *
 * As on Stripe, an open session expires at `expires_at` (here: when it is next looked at), only an
 * open session can be expired, and `expand[]=line_items` embeds the line items. Each completion
 * or expiry is told to `onSessionChange` (see webhooks.ts).
 */
import type { FormObject } from "./form.ts";
import { errorOutcome, okOutcome, type Outcome } from "./outcome.ts";
import {
  parseCreateParams,
  type PriceFixture,
  readList,
  rejectUnknown,
  type ResolvedLineItem,
} from "./params.ts";
import {
  buildSession,
  type CheckoutSession,
  lineItemObject,
  markCompleted,
  markExpired,
} from "./session-object.ts";

/** Stripe event types a Checkout Session change corresponds to. */
export type CheckoutEventType = "checkout.session.completed" | "checkout.session.expired";

/** The options the session state reads (at each use, as given to `startStripeServer`). */
export interface SessionOptions {
  /** Prices that line items may reference by id. */
  prices?: Record<string, PriceFixture>;
  /**
   * Called after a session completes or expires (for a webhook forwarder). A returned promise is
   * awaited (for at most 15 s) by the hosted page's "Pay" before it redirects to `success_url`.
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
}

/** Empty session state; `options` is read at each use. */
export function createSessionState(
  options: SessionOptions,
  clock: { baseUrl: string; now: () => number },
): SessionState {
  return {
    options,
    baseUrl: clock.baseUrl,
    now: clock.now,
    sessions: new Map(),
    lineItems: new Map(),
    created: 0,
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

/**
 * Completes or expires `session` and tells `onSessionChange`; the promise settles when a promise
 * it returned does (never rejects).
 */
export function changeSession(
  state: SessionState,
  session: CheckoutSession,
  eventType: CheckoutEventType,
): Promise<void> {
  CHANGES[eventType](session);
  const failed = (error: unknown) =>
    console.error(`stripe-server: onSessionChange threw for ${eventType}:`, error);
  try {
    const result = state.options.onSessionChange?.(structuredClone(session), eventType);
    return Promise.resolve(result).then(() => {}, failed);
  } catch (error) {
    failed(error);
    return Promise.resolve();
  }
}

/**
 * The session with this id, or undefined. Stripe expires sessions at expires_at on its own; here
 * that happens when a session is looked at.
 */
export function findSession(state: SessionState, id: string): CheckoutSession | undefined {
  const session = state.sessions.get(id);
  if (session?.status === "open" && session.expires_at <= nowSeconds(state)) {
    changeSession(state, session, "checkout.session.expired");
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
  changeSession(state, session, eventType);
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

/** One API call as a route sees it: decoded parameters and the path's captured ids. */
export interface ApiCall {
  state: SessionState;
  params: FormObject;
  pathArgs: string[];
}

/** An endpoint: method, path pattern and handler. */
export interface Route {
  method: "GET" | "POST";
  pattern: RegExp;
  handle: (call: ApiCall) => Outcome;
}

const ROUTES: Route[] = [
  { method: "POST", pattern: /^\/v1\/checkout\/sessions$/, handle: createSession },
  { method: "GET", pattern: /^\/v1\/checkout\/sessions\/([^/]+)$/, handle: retrieveSession },
  { method: "POST", pattern: /^\/v1\/checkout\/sessions\/([^/]+)\/expire$/, handle: expireSession },
  {
    method: "GET",
    pattern: /^\/v1\/checkout\/sessions\/([^/]+)\/line_items$/,
    handle: listLineItems,
  },
];

const EXPAND_ONLY = new Set(["expand"]);
const LIST_PARAMS = new Set(["expand", "limit", "starting_after", "ending_before"]);

function createSession({ state, params }: ApiCall): Outcome {
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

function retrieveSession({ state, params, pathArgs: [id = ""] }: ApiCall): Outcome {
  rejectUnknown(params, EXPAND_ONLY);
  const session = findSession(state, id);
  return session ? okOutcome(withExpansions(state, session, params)) : missingSession(id);
}

// Stripe: "A Checkout Session can be expired when it is in one of these statuses: open".
function expireSession({ state, params, pathArgs: [id = ""] }: ApiCall): Outcome {
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
  changeSession(state, session, "checkout.session.expired");
  return okOutcome(withExpansions(state, session, params));
}

function listLineItems({ state, params, pathArgs: [id = ""] }: ApiCall): Outcome {
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

/** A path segment decoded, or as it is when it is not valid percent-encoding. */
export function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** The route for a request, with its path arguments, or the 404 or 405 Stripe answers. */
export function findRoute(
  method: string,
  path: string,
): { route: Route; args: string[] } | Outcome {
  const candidates = ROUTES.flatMap((route) => {
    const match = route.pattern.exec(path);
    return match ? [{ route, args: match.slice(1).map(decodePathSegment) }] : [];
  });
  const hit = candidates.find((candidate) => candidate.route.method === method);
  if (hit) return hit;
  if (candidates.length > 0) {
    const allowed = candidates.map((candidate) => candidate.route.method).join(", ");
    return {
      ...errorOutcome(405, {
        type: "invalid_request_error",
        message: `Unrecognized request URL (${method}: ${path}). This path accepts ${allowed}.`,
      }),
      headers: { allow: allowed },
    };
  }
  return errorOutcome(404, {
    type: "invalid_request_error",
    message: `Unrecognized request URL (${method}: ${path}).`,
  });
}
