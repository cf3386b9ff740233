/**
 * A local stand-in for api.stripe.com, for `npm start`, the bench and the tests.
 *
 * It serves the Checkout Session and Refund calls this project makes, with Stripe's documented
 * semantics for authentication, form-encoded parameters, idempotent requests and errors, so that
 * code using the official `stripe` SDK (pointed here with `host`/`port`/`protocol`) behaves as it
 * would against Stripe. Tests inspect what happened (`sessions`, `refunds`, `requests`) and
 * inject faults (`faults`).
 *
 * Stripe behaviour encoded (docs.stripe.com/api/idempotent_requests, /error-low-level,
 * /api/errors, /payments/checkout/managing-limited-inventory, and the SDK's pinned API spec); an
 * API request goes through these steps in Stripe's order, each rule in the module named:
 * 1. the API key (auth.ts): a missing or wrong one is a 401;
 * 2. the `Idempotency-Key` header (idempotency.ts): 1 to 255 characters, else a 400;
 * 3. the form body, decoded from Stripe's bracket encoding (form.ts), and the route (routes.ts,
 *    with the endpoints of sessions.ts and refunds.ts): an unknown path is a 404, a wrong method
 *    a 405;
 * 4. the endpoint, run under the key (idempotency.ts): its first result (500s too) is saved per
 *    API key and replayed for the same parameters; other parameters are a 400
 *    `idempotency_error`, a request while the first runs a 409 `idempotency_key_in_use`; keys
 *    are forgotten after 24 hours. Parameter problems (params.ts: unknown parameters, `expires_at`
 *    30 minutes to 24 hours ahead, line items, metadata; refunds.ts: payment_intent or charge,
 *    amount, reason) are 400s that are not saved; refusals that depend on state when the endpoint
 *    runs (a session no longer open, `charge_already_refunded`, `amount_too_large`,
 *    `charge_disputed`) are saved.
 * An injected fault (faults.ts) acts around these steps; connection faults cut the client's TCP
 * connection through a relay. Outside /v1/, a session's `url` serves the hosted checkout page
 * (page.ts), and `createWebhookForwarder` (webhooks.ts) delivers the server's events (events.ts:
 * sessions completed or expired, `refund.created`, `charge.refunded`, `refund.updated`,
 * `refund.failed`, `charge.dispute.created`) signed.
 *
 * Run it alone with: deno run --allow-net local/stripe/server.ts --port 12111
 *   [--forward-to http://127.0.0.1:54321/functions/v1/stripe-webhook --webhook-secret whsec_...]
 */
import { apiKeyOf, authError } from "./auth.ts";
import {
  acceptClients,
  clientGone,
  closeRelays,
  createRelays,
  dropConnection,
  type Fault,
  faultOutcome,
  type Relays,
  takeFault,
} from "./faults.ts";
import { type Dispute, type DisputeOptions, disputePayment } from "./disputes.ts";
import { decodeStripeForm, FormDecodeError, type FormObject } from "./form.ts";
import { HOST, randomId, sleep } from "./helpers.ts";
import {
  createIdempotencyStore,
  fingerprint,
  type IdempotencyStore,
  invalidKeyOutcome,
  runIdempotent,
} from "./idempotency.ts";
import { errorOutcome, type Outcome } from "./outcome.ts";
import { pageResponse } from "./page.ts";
import { ParamError, paramErrorOutcome } from "./params.ts";
import {
  type Charge,
  createRefundState,
  recordPayment,
  type Refund,
  refundedAmount,
  type RefundOptions,
  refundRoutes,
  type RefundState,
  resetRefunds,
  settleRefund,
} from "./refunds.ts";
import { type ApiCall, findRoute, type Route } from "./routes.ts";
import type { CheckoutSession } from "./session-object.ts";
import {
  changeOpenSession,
  createSessionState,
  resetSessions,
  type SessionOptions,
  sessionRoutes,
  type SessionState,
  sweepExpired,
} from "./sessions.ts";
import { createWebhookForwarder } from "./webhooks.ts";

/** Options for `startStripeServer`. */
export interface StripeServerOptions extends SessionOptions, RefundOptions {
  /** Port to listen on (default: a free one). */
  port?: number;
  /** Accept only this secret key (default: any key starting with `sk_test_`). */
  secretKey?: string;
  /** Clock in milliseconds, for `created`, `expires_at` checks and idempotency key expiry. */
  now?: () => number;
}

/** One API request as the server saw it. */
export interface RequestRecord {
  requestId: string;
  method: string;
  path: string;
  idempotencyKey: string | null;
  stripeVersion: string | null;
  /** Status sent, or null if none was (still running, or the connection was dropped). */
  status: number | null;
  replayed: boolean;
  fault: Fault["kind"] | null;
}

/** A running server. */
export interface StripeServer extends AsyncDisposable {
  /** Base URL, e.g. `http://127.0.0.1:12111`. */
  readonly url: string;
  readonly port: number;
  /** Sessions by id. */
  readonly sessions: Map<string, CheckoutSession>;
  /** Charges by id: one per session completed with a `payment_intent`. */
  readonly charges: Map<string, Charge>;
  /** Refunds by id. */
  readonly refunds: Map<string, Refund>;
  /** Disputes by id (`disputePayment`). */
  readonly disputes: Map<string, Dispute>;
  /** API requests in arrival order. */
  readonly requests: RequestRecord[];
  /** Pending faults; push to add. Each is removed when a request takes it. */
  readonly faults: Fault[];
  /** Sessions actually created (replays do not count). */
  sessionsCreated(): number;
  /** Marks an open session paid, as if the customer completed Checkout. */
  completeSession(id: string): CheckoutSession;
  /** Expires an open session, as Stripe does at `expires_at`. */
  expireSession(id: string): CheckoutSession;
  /** Expires every open session whose `expires_at` has passed; returns their ids. */
  sweepExpired(): string[];
  /** Refunds actually created (replays do not count). */
  refundsCreated(): number;
  /** What a PaymentIntent's charge has refunded, pending and succeeded; throws if it is unknown. */
  refundedAmount(paymentIntentId: string): number;
  /**
   * Settles a pending refund (option `refundStatus: "pending"`), emitting `refund.updated`, then
   * `refund.failed` for a failure.
   */
  settleRefund(id: string, status: "succeeded" | "failed"): Refund;
  /**
   * Opens a dispute (`needs_response`) on a paid session's charge, as the customer's bank would,
   * emitting `charge.dispute.created`; the charge can no longer be refunded (`charge_disputed`).
   */
  disputePayment(paymentIntentId: string, options?: DisputeOptions): Dispute;
  /** Forgets sessions, charges, refunds, disputes, requests, faults and idempotency keys. */
  reset(): void;
  close(): Promise<void>;
}

interface State {
  options: StripeServerOptions;
  checkout: SessionState;
  refunds: RefundState;
  /** Every endpoint, in the order they are matched. */
  routes: Route[];
  idempotency: IdempotencyStore;
  requests: RequestRecord[];
  faults: Fault[];
  /** Aborted on close, so pending delays end and nothing outlives the server. */
  lifetime: AbortController;
  relays: Relays;
}

// ---------------------------------------------------------------------------------------------
// Request pipeline
// ---------------------------------------------------------------------------------------------

interface ApiRequest {
  request: Request;
  info: Deno.ServeHandlerInfo;
  record: RequestRecord;
  apiKey: string | null;
  body: string;
  /** The fault this request took, if any. */
  fault: Fault | null;
}

async function handleHttp(
  state: State,
  request: Request,
  info: Deno.ServeHandlerInfo,
): Promise<Response> {
  const requestId = randomId("req_", 14);
  const path = new URL(request.url).pathname;
  if (!path.startsWith("/v1/")) {
    return await pageResponse(request, {
      state: state.checkout,
      requestId,
      closed: state.lifetime.signal,
    });
  }
  const record: RequestRecord = {
    requestId,
    method: request.method,
    path,
    idempotencyKey: request.method === "POST" ? request.headers.get("idempotency-key") : null,
    stripeVersion: request.headers.get("stripe-version"),
    status: null,
    replayed: false,
    fault: null,
  };
  state.requests.push(record);
  const call: ApiRequest = {
    request,
    info,
    record,
    apiKey: apiKeyOf(request),
    body: await request.text(),
    fault: null,
  };
  call.fault = takeFault(state.faults, {
    method: record.method,
    path,
    idempotencyKey: record.idempotencyKey,
    params: safeDecode(call),
  });
  record.fault = call.fault?.kind ?? null;
  return await answerWithFault(state, call);
}

async function answerWithFault(state: State, call: ApiRequest): Promise<Response> {
  const { fault, info } = call;
  if (fault?.kind === "reset_before") return dropConnection(state.relays, info);
  // A status fault without storeUnderKey stands for an edge failure: nothing ran, nothing saved.
  if (fault?.kind === "status" && !fault.storeUnderKey) {
    return respond(call, faultOutcome(fault, false));
  }
  const outcome = await answerApi(state, call);
  if (fault?.kind === "reset_after") return dropConnection(state.relays, info);
  if (fault?.kind === "timeout") {
    // Stop waiting once the client has hung up: nobody is left to answer.
    const gone = clientGone(state.relays, info);
    await sleep(fault.ms, AbortSignal.any([state.lifetime.signal, ...(gone ? [gone] : [])]));
  }
  return respond(call, outcome);
}

/** Authentication, idempotency, routing, in Stripe's order; only endpoint results are saved. */
async function answerApi(state: State, call: ApiRequest): Promise<Outcome> {
  const { record } = call;
  const denied = authError(call.apiKey, state.options.secretKey);
  if (denied) return denied;
  const key = record.idempotencyKey;
  const invalidKey = invalidKeyOutcome(key);
  if (invalidKey) return invalidKey;
  let params: FormObject;
  try {
    params = decodeParams(call);
  } catch (error) {
    if (error instanceof FormDecodeError) return paramErrorOutcome(new ParamError(error.message));
    throw error;
  }
  const found = findRoute(state.routes, record);
  if (!("route" in found)) return found;
  const execute = () =>
    executeRoute(state, {
      route: found.route,
      call: {
        params,
        pathArgs: found.args,
        request: { id: record.requestId, idempotencyKey: key },
      },
      fault: call.fault,
    });
  if (key === null || call.apiKey === null) return await execute();
  return await runIdempotent(state.idempotency, {
    apiKey: call.apiKey,
    key,
    requestId: record.requestId,
    fingerprint: fingerprint(record.method, record.path, params),
  }, execute);
}

async function executeRoute(
  state: State,
  { route, call, fault }: { route: Route; call: ApiCall; fault: Fault | null },
): Promise<Outcome> {
  // Latency stands for a slow endpoint: Stripe keeps working even if the client gives up.
  if (fault?.kind === "latency") await sleep(fault.ms, state.lifetime.signal);
  if (fault?.kind === "status") return faultOutcome(fault, true);
  try {
    return route.handle(call);
  } catch (error) {
    if (error instanceof ParamError) return paramErrorOutcome(error);
    // An unexpected failure after execution began is a saved 500, as on Stripe.
    console.error("stripe-server: endpoint failed:", error);
    return errorOutcome(500, { type: "api_error", message: "An unknown error occurred." }, true);
  }
}

function decodeParams(call: ApiRequest): FormObject {
  if (call.request.method === "GET") return decodeStripeForm(new URL(call.request.url).search);
  const type = call.request.headers.get("content-type") ?? "";
  if (call.body !== "" && !type.startsWith("application/x-www-form-urlencoded")) {
    throw new FormDecodeError(
      `Invalid request: v1 endpoints take application/x-www-form-urlencoded bodies, not ${type}.`,
    );
  }
  return decodeStripeForm(call.body);
}

// Fault filters see the parameters even when they cannot be decoded (then as empty).
function safeDecode(call: ApiRequest): FormObject {
  try {
    return decodeParams(call);
  } catch {
    return {};
  }
}

function respond(call: ApiRequest, outcome: Outcome): Response {
  const { record } = call;
  record.status = outcome.status;
  record.replayed = outcome.replayed === true;
  const headers = new Headers({
    "content-type": "application/json",
    "request-id": record.requestId,
  });
  if (record.stripeVersion) headers.set("stripe-version", record.stripeVersion);
  if (record.idempotencyKey) headers.set("idempotency-key", record.idempotencyKey);
  if (outcome.replayed) {
    headers.set("idempotent-replayed", "true");
    if (outcome.originalRequestId) headers.set("original-request", outcome.originalRequestId);
  }
  for (const [name, value] of Object.entries(outcome.headers ?? {})) headers.set(name, value);
  return new Response(JSON.stringify(outcome.body, null, 2), { status: outcome.status, headers });
}

// ---------------------------------------------------------------------------------------------
// Server lifecycle
// ---------------------------------------------------------------------------------------------

/** Starts the server on 127.0.0.1 (`options.port`, or a free port). */
export function startStripeServer(options: StripeServerOptions = {}): Promise<StripeServer> {
  const listener = Deno.listen({ hostname: HOST, port: options.port ?? 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const now = options.now ?? Date.now;
  const lifetime = new AbortController();
  const refunds = createRefundState(options, now);
  const checkout = createSessionState(options, {
    baseUrl: `http://${HOST}:${port}`,
    now,
    paid: (session) => recordPayment(refunds, session),
  });
  const state: State = {
    options,
    checkout,
    refunds,
    routes: [...sessionRoutes(checkout), ...refundRoutes(refunds)],
    idempotency: createIdempotencyStore(now),
    requests: [],
    faults: [],
    lifetime,
    relays: createRelays(lifetime.signal),
  };
  const http = Deno.serve(
    { hostname: HOST, port: 0, onListen: () => {} },
    (request, info) => handleHttp(state, request, info),
  );
  const accepting = acceptClients(state.relays, { listener, upstreamPort: http.addr.port });
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= shutdown(state, { listener, http, accepting });
    return closing;
  };
  return Promise.resolve(serverHandle(state, { port, close }));
}

async function shutdown(
  state: State,
  running: { listener: Deno.Listener; http: Deno.HttpServer; accepting: Promise<void> },
): Promise<void> {
  state.lifetime.abort();
  running.listener.close();
  await running.accepting;
  await closeRelays(state.relays);
  await running.http.shutdown();
}

function serverHandle(
  state: State,
  { port, close }: { port: number; close: () => Promise<void> },
): StripeServer {
  const { checkout, refunds } = state;
  return {
    url: checkout.baseUrl,
    port,
    sessions: checkout.sessions,
    charges: refunds.charges,
    refunds: refunds.refunds,
    disputes: refunds.disputes,
    requests: state.requests,
    faults: state.faults,
    sessionsCreated: () => checkout.created,
    completeSession: (id) => changeOpenSession(checkout, id, "checkout.session.completed"),
    expireSession: (id) => changeOpenSession(checkout, id, "checkout.session.expired"),
    sweepExpired: () => sweepExpired(checkout),
    refundsCreated: () => refunds.created,
    refundedAmount: (paymentIntentId) => refundedAmount(refunds, paymentIntentId),
    settleRefund: (id, status) => settleRefund(refunds, { id, status }),
    disputePayment: (paymentIntentId, options) => disputePayment(refunds, paymentIntentId, options),
    reset: () => {
      resetSessions(checkout);
      resetRefunds(refunds);
      state.requests.length = 0;
      state.faults.length = 0;
      state.idempotency.entries.clear();
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

// ---------------------------------------------------------------------------------------------
// Command line: deno run --allow-net local/stripe/server.ts [--port N] [--forward-to URL ...]
// ---------------------------------------------------------------------------------------------

function argValue(args: string[], name: string): string | undefined {
  const index = args.indexOf(name);
  return index === -1 ? undefined : args[index + 1];
}

function portFromArgs(args: string[]): number {
  const value = argValue(args, "--port") ?? "12111";
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`Cannot start stripe-server: --port must be 0-65535, got ${value}`);
  }
  return port;
}

if (import.meta.main) {
  const forwardTo = argValue(Deno.args, "--forward-to");
  const secret = argValue(Deno.args, "--webhook-secret");
  if (forwardTo && !secret) {
    throw new Error("Cannot start stripe-server: --forward-to needs --webhook-secret whsec_...");
  }
  const server = await startStripeServer({
    port: portFromArgs(Deno.args),
    onEvent: forwardTo && secret ? createWebhookForwarder({ url: forwardTo, secret }) : undefined,
  });
  console.log(server.url);
  const stop = () => server.close().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
