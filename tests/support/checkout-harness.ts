/**
 * Builds both checkout handlers exactly as index.ts does, but against the test database and
 * the local Stripe-compatible server, with a fresh published event per harness.
 */
import {
  createTokenVerifier,
  publishableKeyCaller,
  userCaller,
} from "../../supabase/functions/_shared/auth.ts";
import {
  type CheckoutStore,
  createCheckoutHandler,
  sqlCheckoutStore,
} from "../../supabase/functions/_shared/checkout.ts";
import type { ClientAddressConfig } from "../../supabase/functions/_shared/client-address.ts";
import type { HoldLimits, Sql } from "../../supabase/functions/_shared/db.ts";
import {
  type ReconcileDeps,
  reconcileStuckCheckouts,
  type ReconcileSummary,
} from "../../supabase/functions/_shared/reconcile.ts";
import { createStripeClient, type Stripe } from "../../supabase/functions/_shared/stripe.ts";
import { openPool } from "./database.ts";
import {
  startStripeServer,
  type StripeServer,
  type StripeServerOptions,
} from "../../local/stripe/mod.ts";
import { LOCAL_JWT_SECRET } from "../../scripts/lib/jwt.ts";

export const SITE_URL = "http://shop.test";
/** The harness project's publishable key: guest-checkout's apikey (checkoutRequest sends it). */
export const PUBLISHABLE_KEY = "sb_publishable_harness_0123456789abcdef";
export const ALLOWED_ORIGIN = "http://shop.test";

/** A published event with three tiers, made for one harness. */
export interface TestEvent {
  id: string;
  /** 5 seats, max 4 per order, 15.00 */
  floor: string;
  /** unlimited, max 10 per order, 9.99 */
  balcony: string;
  /** 1 seat */
  last: string;
}

export interface Harness {
  sql: Sql;
  stripe: StripeServer;
  /** The SDK client the handlers use, pointed at the local server. */
  stripeClient: Stripe;
  /** The current event (a test may swap in a fresh one from createEvent). */
  event: TestEvent;
  guest: (request: Request) => Promise<Response>;
  enhanced: (request: Request) => Promise<Response>;
  logs: Record<string, unknown>[];
  /** Swap to inject database faults; defaults to the real store. */
  store: CheckoutStore;
  close(): Promise<void>;
}

/** Options of {@link startHarness}. */
export interface HarnessOptions {
  /** Decorates the real store (fault injection). */
  wrapStore?: (store: CheckoutStore) => CheckoutStore;
  leaseSeconds?: number;
  holdLimits?: HoldLimits;
  /** Where the client address comes from (default: the rightmost X-Forwarded-For entry). */
  clientAddress?: ClientAddressConfig;
  /** The Stripe client's per-request timeout (default 3 s). */
  stripeTimeoutMs?: number;
  /** CHECKOUT_SESSION_TTL_MINUTES (default 30). */
  sessionTtlMinutes?: number;
  /**
   * The local Stripe server's options (e.g. `onEvent`, `refundStatus`); the server reads them at
   * each use, so a test may change them while it runs.
   */
  stripeOptions?: StripeServerOptions;
}

/** Starts the harness; `wrapStore` may decorate the real store (fault injection). */
export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const sql = openPool(10);
  const stripe = await startStripeServer(options.stripeOptions);
  const event = await createEvent(sql);
  const stripeClient = createStripeClient("sk_test_harness", {
    apiBase: new URL(stripe.url),
    timeoutMs: options.stripeTimeoutMs ?? 3_000,
  });
  const real = sqlCheckoutStore(sql);
  const store = options.wrapStore ? options.wrapStore(real) : real;
  const logs: Record<string, unknown>[] = [];
  const common = {
    store,
    stripe: stripeClient,
    siteUrl: new URL(SITE_URL),
    allowedOrigins: new Set([ALLOWED_ORIGIN]),
    sessionTtlMinutes: options.sessionTtlMinutes ?? 30,
    leaseSeconds: options.leaseSeconds,
    holdLimits: options.holdLimits,
    clientAddress: options.clientAddress,
    log: (line: Record<string, unknown>) => logs.push(line),
  };
  return {
    sql,
    stripe,
    stripeClient,
    event,
    logs,
    store,
    guest: createCheckoutHandler({
      ...common,
      endpoint: "guest-checkout",
      authenticate: publishableKeyCaller({ keys: { default: PUBLISHABLE_KEY } }),
    }),
    enhanced: createCheckoutHandler({
      ...common,
      endpoint: "enhanced-checkout",
      authenticate: userCaller(createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET })),
    }),
    async close() {
      await stripe.close();
      await sql.end({ timeout: 5 });
    },
  };
}

/** Runs `fn` on a fresh harness and closes it afterwards, also when `fn` throws. */
export async function withHarness(
  fn: (h: Harness) => Promise<void>,
  options: HarnessOptions = {},
): Promise<void> {
  const h = await startHarness(options);
  try {
    await fn(h);
  } finally {
    await h.close();
  }
}

/**
 * One reconciliation run against the harness's database and Stripe server: every expired lease
 * counts as stuck (`staleSeconds: 0`) and nothing is logged, unless `options` says otherwise.
 */
export function reconcileNow(
  h: Harness,
  options: Omit<ReconcileDeps, "sql" | "stripe"> = {},
): Promise<ReconcileSummary> {
  return reconcileStuckCheckouts({
    sql: h.sql,
    stripe: h.stripeClient,
    staleSeconds: 0,
    log: () => {},
    ...options,
  });
}

/** A guest-checkout body for the current event: 2 floor seats and 1 balcony seat; `extra` overrides. */
export function guestBody(h: Harness, extra: Record<string, unknown> = {}) {
  return {
    eventId: h.event.id,
    items: [{ tierId: h.event.floor, quantity: 2 }, { tierId: h.event.balcony, quantity: 1 }],
    email: "Buyer@Example.com",
    name: "Ada",
    ...extra,
  };
}

/** A published event with the three tiers of {@link TestEvent}. */
export async function createEvent(sql: Sql): Promise<TestEvent> {
  const [event] = await sql<{ id: string }[]>`
    insert into events.events (title, currency, status) values ('Harness Gig', 'usd', 'published')
    returning id`;
  const tiers = await sql<{ id: string; name: string }[]>`
    insert into events.ticket_tiers (event_id, name, unit_amount, capacity, max_per_order)
    values (${event!.id}, 'Floor', 1500, 5, 4), (${event!.id}, 'Balcony', 999, null, 10),
           (${event!.id}, 'Last seat', 5000, 1, 1)
    returning id, name`;
  const id = (name: string) => tiers.find((t) => t.name === name)!.id;
  return { id: event!.id, floor: id("Floor"), balcony: id("Balcony"), last: id("Last seat") };
}

/** A fresh storefront Idempotency-Key. */
export function newKey(): string {
  return `sf-${crypto.randomUUID()}`;
}

/**
 * A checkout POST as the storefront sends it: with the project's publishable key in `apikey`
 * (as supabase-js always sends it; `apikey: null` leaves it out) and, for a signed-in buyer,
 * the access token.
 */
export function checkoutRequest(
  body: unknown,
  options: {
    key?: string | null;
    apikey?: string | null;
    token?: string;
    headers?: Record<string, string>;
    method?: string;
  } = {},
): Request {
  const headers: Record<string, string> = {
    "content-type": "application/json",
    origin: ALLOWED_ORIGIN,
    ...(options.apikey === null ? {} : { apikey: options.apikey ?? PUBLISHABLE_KEY }),
    ...options.headers,
  };
  if (options.key !== null) headers["idempotency-key"] = options.key ?? newKey();
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  return new Request("http://functions.test/functions/v1/checkout", {
    method: options.method ?? "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** Rows that a rejected request must not add to. */
export async function rowCounts(sql: Sql): Promise<string> {
  const [row] = await sql<{ n: string }[]>`
    select concat_ws('/', (select count(*) from public.orders), (select count(*) from public.order_items),
                     (select count(*) from public.stripe_idempotency_keys)) as n`;
  return row!.n;
}
