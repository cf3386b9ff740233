/**
 * Shared pieces of the reliability suite: a storefront that retries with the same key until it
 * gets a final answer, the invariants checked after every case, and the figures it reports.
 */
import assert from "node:assert/strict";
import type { CheckoutStore } from "../../supabase/functions/_shared/checkout.ts";
import { type Harness, reconcileNow, startHarness } from "./checkout-harness.ts";
import { applySessionEvent, newEventId } from "./webhooks.ts";

/** The suites' lease: short, so that a case can outlive it and reconciliation can settle it. */
export const LEASE_SECONDS = 1;

/** The path of Stripe's Checkout Session create, where the suites inject their faults. */
export const SESSIONS = "/v1/checkout/sessions";

/** What a retrying client ended with. */
export interface FinalAnswer {
  status: number;
  body: Record<string, unknown>;
  tries: number;
}

/** Statuses after which a storefront retries with the same Idempotency-Key. */
const RETRYABLE = new Set([409, 429, 502, 503]);

/**
 * Sends until the answer is final: 201, or a non-retryable error. 502 (Stripe refused) is
 * retried too, because a real storefront shows an error and the shopper presses Pay again with
 * the same attempt key; a bounded number of tries keeps every case finite.
 */
export async function retryUntilFinal(
  send: () => Promise<Response>,
  options: { maxTries?: number; delayMs?: number } = {},
): Promise<FinalAnswer> {
  const maxTries = options.maxTries ?? 40;
  let last: FinalAnswer = { status: 0, body: {}, tries: 0 };
  for (let tries = 1; tries <= maxTries; tries++) {
    const response = await send();
    const body = await response.json().catch(() => ({}));
    last = { status: response.status, body, tries };
    if (!RETRYABLE.has(response.status)) return last;
    // A 409 other than "in use" (sold out, already paid) is an answer, not a reason to retry.
    const code = (body as { error?: { code?: string } }).error?.code;
    if (response.status === 409 && code !== "idempotency_key_in_use") return last;
    await new Promise((r) => setTimeout(r, options.delayMs ?? 100));
  }
  return last;
}

/** The violations of the invariants that {@link checkInvariants} counts; all zero when clean. */
export interface Violations {
  duplicateSessions: number;
  lostOrders: number;
  oversoldTiers: number;
  stuckAttempts: number;
  /** Operations that Stripe charged twice, or with two paid orders. */
  doublePayments: number;
  /** Sessions Stripe says are paid whose order does not hold its seats (no refund exists yet). */
  paidWithoutSeats: number;
  /** Tiers whose capacity counter disagrees with their orders (public.check_tier_capacity). */
  capacityDisagreements: number;
  /** Orders whose refunds at Stripe add up to more than they paid. */
  overRefunded: number;
  /** Orders whose refunds in the database disagree with Stripe's once everything settled. */
  refundsOutOfStep: number;
  /** Refund operations for which Stripe made more than one refund. */
  doubleRefunds: number;
}

/** Counters reported in RELIABILITY.md. */
export interface ReliabilityTally extends Violations {
  cases: number;
  requests: number;
  faultsInjected: number;
}

function noViolations(): Violations {
  return {
    duplicateSessions: 0,
    lostOrders: 0,
    oversoldTiers: 0,
    stuckAttempts: 0,
    doublePayments: 0,
    paidWithoutSeats: 0,
    capacityDisagreements: 0,
    overRefunded: 0,
    refundsOutOfStep: 0,
    doubleRefunds: 0,
  };
}

/** A fresh tally. */
export function newTally(): ReliabilityTally {
  return { cases: 0, requests: 0, faultsInjected: 0, ...noViolations() };
}

/** One reliability suite: its tally, its harnesses, the check after every case, its figures. */
export interface ReliabilitySuite {
  tally: ReliabilityTally;
  /** A harness with the suites' short lease and Stripe timeout; `wrapStore` injects DB faults. */
  start(wrapStore?: (store: CheckoutStore) => CheckoutStore): Promise<Harness>;
  /** Checks the invariants for the operations of one case and asserts the tally is clean. */
  check(h: Harness, operations: Map<string, FinalAnswer[]>): Promise<void>;
  /** Writes the suite's figure file (see {@link saveFigures}). */
  save(figures: unknown): Promise<void>;
}

/** A suite whose figures are saved under `name`. */
export function reliabilitySuite(name: string): ReliabilitySuite {
  const tally = newTally();
  return {
    tally,
    start: (wrapStore) =>
      startHarness({ leaseSeconds: LEASE_SECONDS, stripeTimeoutMs: 500, wrapStore }),
    async check(h, operations) {
      await checkInvariants(h, operations, tally, { leaseSeconds: LEASE_SECONDS });
      assertClean(tally);
    },
    save: (figures) => saveFigures(name, figures),
  };
}

/**
 * The invariants, for the operations (client Idempotency-Keys) of one case:
 * - at most one live (open) Stripe session per operation, and every session handed out but one
 *   has ended at Stripe;
 * - no order lost: every 201 names an order that exists with that very session;
 * - no tier oversold, counted either way (the counters, and the orders recounted);
 * - every tier's capacity counter agrees with its orders (public.check_tier_capacity);
 * - nothing stuck: once leases have run out, reconciliation leaves no attempt in progress;
 * - no operation is ever paid twice, and every session Stripe says is paid has its order paid
 *   (holding its seats) once its webhook has arrived, however late;
 * - the refunds of an order never add up to more than it paid, and once nothing is in flight
 *   the database's refunds of each order add up to what Stripe refunded.
 * Counts violations into `tally` (the suite asserts they are all zero) and returns nothing.
 */
export async function checkInvariants(
  h: Harness,
  operations: Map<string, FinalAnswer[]>,
  tally: ReliabilityTally,
  options: { leaseSeconds: number },
): Promise<void> {
  tally.cases += 1;
  for (const [key, answers] of operations) {
    const open = [...h.stripe.sessions.values()].filter((s) =>
      s.status === "open" && s.metadata.operation_key?.startsWith(`checkout:create:${key}:`)
    );
    if (open.length > 1) tally.duplicateSessions += open.length - 1;
    const ok = answers.filter((a) => a.status === 201);
    // Clients may be handed several sessions only when each earlier one ended at Stripe (a
    // renewal after its expiry): never two that could be paid.
    const live = new Set(
      ok.map((a) => String(a.body.sessionId)).filter((id) =>
        h.stripe.sessions.get(id)?.status !== "expired"
      ),
    );
    if (live.size > 1) tally.duplicateSessions += 1;
    for (const answer of ok) {
      const [order] = await h.sql<{ session: string | null; status: string }[]>`
        select stripe_checkout_session_id as session, status from public.orders where id = ${
        String(answer.body.orderId)
      }`;
      if (!order || order.session !== answer.body.sessionId) tally.lostOrders += 1;
    }
  }

  await checkPayments(h, [...operations.keys()], tally);

  const oversold = await h.sql<{ id: string }[]>`
    select t.id from events.ticket_tiers t
    where t.event_id = ${h.event.id} and t.capacity is not null
      and greatest(private.tier_seats_taken(t.id), private.tier_seats_recounted(t.id)) > t.capacity`;
  tally.oversoldTiers += oversold.length;
  await checkCapacityCounters(h, tally);

  // Let every lease run out, reconcile, and check nothing of this case is still in flight.
  await new Promise((r) => setTimeout(r, options.leaseSeconds * 1000 + 100));
  await reconcileNow(h);
  const keys = [...operations.keys()];
  const [stuck] = await h.sql<{ n: number }[]>`
    select count(*)::int as n from public.stripe_idempotency_keys
    where operation_type = 'checkout:create' and operation_id = any(${keys})
      and status = 'in_progress' and lease_expires_at < now()`;
  tally.stuckAttempts += stuck?.n ?? 0;
  // Reconciliation released or settled orders too: the counters must still agree.
  await checkCapacityCounters(h, tally);
  await checkRefunds(h, tally);
}

/** Per paid order of the case's event: Stripe's refunds against what it paid and what we hold. */
async function checkRefunds(h: Harness, tally: ReliabilityTally): Promise<void> {
  // One operation, one refund: Stripe made at most one refund per operation (its stable id),
  // whatever retries, takeovers and new keys it went through.
  const made = new Map<string, number>();
  for (const request of h.stripe.requests) {
    if (request.method !== "POST" || request.path !== "/v1/refunds") continue;
    if (request.status !== 200 || request.replayed || !request.idempotencyKey) continue;
    const operation = request.idempotencyKey.split(":").slice(0, 3).join(":");
    made.set(operation, (made.get(operation) ?? 0) + 1);
  }
  tally.doubleRefunds = [...made.values()].filter((count) => count > 1).length;
  const orders = await h.sql<
    { id: string; pi: string; total: number; held: number; reserved: number; in_flight: number }[]
  >`
    select o.id, o.stripe_payment_intent_id as pi, o.amount_total as total,
           coalesce(sum(r.amount) filter (where r.status in ('pending', 'requires_action', 'succeeded')), 0)::int as held,
           coalesce(sum(r.amount) filter (where r.status not in ('failed', 'canceled')), 0)::int as reserved,
           count(r.id) filter (where r.status = 'reserved')::int as in_flight
    from public.orders o left join public.refunds r on r.order_id = o.id
    where o.event_id = ${h.event.id} and o.stripe_payment_intent_id is not null
    group by o.id`;
  for (const order of orders) {
    const refunded = h.stripe.refundedAmount(order.pi);
    // Counted on both sides: Stripe's total (the local server itself refuses more than the
    // charge), and what the database let through (every refund not failed, reserved included).
    if (refunded > order.total || order.reserved > order.total) tally.overRefunded += 1;
    if (order.in_flight > 0 || order.held !== refunded) {
      console.error(`refunds out of step: ${JSON.stringify({ ...order, refunded })}`);
      tally.refundsOutOfStep += 1;
    }
  }
}

/** Tiers (of any event) whose counter disagrees with the orders; each is printed. */
async function checkCapacityCounters(h: Harness, tally: ReliabilityTally): Promise<void> {
  const disagreeing = await h.sql<Record<string, unknown>[]>`
    select * from public.check_tier_capacity()`;
  for (const tier of disagreeing) {
    console.error(`capacity counter disagrees: ${JSON.stringify(tier)}`);
  }
  tally.capacityDisagreements += disagreeing.length;
}

/** Late webhooks arrive for every paid session; then payments are counted per operation. */
async function checkPayments(h: Harness, keys: string[], tally: ReliabilityTally): Promise<void> {
  for (const key of keys) {
    const paid = [...h.stripe.sessions.values()].filter((s) =>
      s.status === "complete" && s.metadata.operation_key?.startsWith(`checkout:create:${key}:`)
    );
    if (paid.length > 1) tally.doublePayments += paid.length - 1;
    for (const session of paid) {
      await applySessionEvent(h.sql, {
        id: newEventId("evt_late_"),
        type: "checkout.session.completed",
        session,
      });
      const [order] = await h.sql<{ status: string }[]>`
        select status from public.orders where id = ${session.metadata.order_id ?? null}::uuid`;
      // Refunded on purpose (in part or whole) is not a payment without seats.
      if (!["paid", "partially_refunded", "refunded"].includes(order?.status ?? "")) {
        tally.paidWithoutSeats += 1;
      }
    }
    const [orders] = await h.sql<{ n: number }[]>`
      select count(*)::int as n from public.orders
      where checkout_operation_id = ${key} and paid_at is not null`;
    if ((orders?.n ?? 0) > 1) tally.doublePayments += orders!.n - 1;
  }
}

/** Asserts a tally found no violation. */
export function assertClean(tally: ReliabilityTally): void {
  const none = noViolations();
  const found = Object.fromEntries(
    Object.keys(none).map((name) => [name, tally[name as keyof Violations]]),
  );
  assert.deepEqual(found, none);
}

/** Writes a figure file under .test-artifacts/reliability/ for RELIABILITY.md. */
export async function saveFigures(name: string, figures: unknown): Promise<void> {
  const dir = new URL("../../.test-artifacts/reliability/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(new URL(`${name}.json`, dir), JSON.stringify(figures, null, 2) + "\n");
}
