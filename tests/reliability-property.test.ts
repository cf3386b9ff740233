/**
 * Property-based reliability: random interleavings of several operations × double-clicking,
 * retrying clients × Stripe faults × failed records, against the real database and the
 * Stripe-compatible server. Whatever fast-check draws, the invariants hold.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { CheckoutStore } from "../supabase/functions/_shared/checkout.ts";
import { checkoutRequest, createEvent, type Harness, newKey } from "./support/checkout-harness.ts";
import {
  type FinalAnswer,
  reliabilitySuite,
  retryUntilFinal,
  SESSIONS,
} from "./support/reliability.ts";
import { refundHandler, refundRequest } from "./support/refund-harness.ts";
import { applySessionEvent } from "./support/webhooks.ts";
import type { CheckoutSession, Fault } from "../local/stripe/mod.ts";

const RUNS = 20;
const REFUNDS = "/v1/refunds";
const SEED = 20261128;

const stripeFault: fc.Arbitrary<Fault> = fc.oneof(
  fc.constant<Fault>({ kind: "reset_before", path: SESSIONS }),
  fc.constant<Fault>({ kind: "reset_after", path: SESSIONS }),
  fc.record({
    kind: fc.constant("status" as const),
    status: fc.constantFrom(429, 500, 503),
    storeUnderKey: fc.boolean(),
    path: fc.constant(SESSIONS),
  }),
  fc.record({
    kind: fc.constant("latency" as const),
    ms: fc.integer({ min: 0, max: 1_400 }),
    path: fc.constant(SESSIONS),
  }),
  fc.record({
    kind: fc.constant("timeout" as const),
    ms: fc.integer({ min: 50, max: 900 }),
    path: fc.constant(SESSIONS),
  }),
);

const scenario = fc.record({
  /** Seats asked by each operation (floor tier: 5 seats, max 4 per order). */
  operations: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 4 }),
  clientsPerOperation: fc.integer({ min: 1, max: 3 }),
  stripeFaults: fc.array(stripeFault, { maxLength: 6 }),
  /** How many record calls die (the process is gone before the record lands). */
  failedRecords: fc.integer({ min: 0, max: 2 }),
  /**
   * What happens to each session after it was handed out, before the clients retry past its
   * expires_at: nothing; paid in its last second with the webhook late (it arrives only when
   * the invariants are checked); paid with the webhook racing the retries; expired by Stripe
   * with the expiry event racing the retries; or still open at Stripe with no word at all.
   */
  afterlife: fc.constantFrom("none", "paid_late", "paid_racing", "expired_racing", "unseen"),
  /**
   * Refunds asked for each order paid by then: an amount (or all that is left), each sent by
   * one or two operators at once with the same key, all of them concurrently, with faults on
   * Stripe's refunds endpoint.
   */
  refunds: fc.array(
    fc.record({
      amount: fc.option(fc.integer({ min: 1, max: 6_000 }), { nil: undefined }),
      senders: fc.integer({ min: 1, max: 2 }),
    }),
    { maxLength: 3 },
  ),
  refundFaults: fc.array(
    fc.oneof(
      fc.constant<Fault>({ kind: "reset_before", path: REFUNDS }),
      fc.constant<Fault>({ kind: "reset_after", path: REFUNDS }),
      fc.record({
        kind: fc.constant("status" as const),
        status: fc.constantFrom(429, 500, 503),
        storeUnderKey: fc.boolean(),
        path: fc.constant(REFUNDS),
      }),
    ),
    { maxLength: 3 },
  ),
});

/** Refunds of the orders paid in the database, as `s.refunds` says; their final answers. */
async function refundPaidOrders(
  h: Harness,
  refund: (request: Request) => Promise<Response>,
  specs: { amount?: number; senders: number }[],
): Promise<FinalAnswer[]> {
  const paid = await h.sql<{ id: string }[]>`
    select id from public.orders where event_id = ${h.event.id}
      and status in ('paid', 'partially_refunded')`;
  const finals = await Promise.all(paid.flatMap(({ id }) =>
    specs.flatMap((spec) => {
      const key = newKey();
      const body = { orderId: id, ...(spec.amount ? { amount: spec.amount } : {}) };
      return Array.from(
        { length: spec.senders },
        () => retryUntilFinal(() => refund(refundRequest(body, { key }))),
      );
    })
  ));
  return finals;
}

type Afterlife = "none" | "paid_late" | "paid_racing" | "expired_racing" | "unseen";

/** Stripe's word for one session (if any), then the operation's clients retry past expires_at. */
async function afterlife(
  h: Harness,
  kind: Afterlife,
  won: FinalAnswer,
  retry: () => Promise<FinalAnswer>,
  clients: number,
): Promise<FinalAnswer[]> {
  const sessionId = String(won.body.sessionId);
  let event: CheckoutSession | null = null;
  if (kind === "paid_late" || kind === "paid_racing") {
    const paid = h.stripe.completeSession(sessionId);
    if (kind === "paid_racing") event = paid;
  }
  if (kind === "expired_racing") event = h.stripe.expireSession(sessionId);
  await h.sql`update public.orders set hold_expires_at = now() - interval '1 second'
              where id = ${String(won.body.orderId)}`;
  const type = event?.status === "complete"
    ? "checkout.session.completed"
    : "checkout.session.expired";
  const [, ...answers] = await Promise.all([
    event
      ? applySessionEvent(h.sql, { type, session: event }).then((r) =>
        assert.ok(["paid", "expired", "noop"].includes(r.outcome), JSON.stringify(r))
      )
      : Promise.resolve(),
    ...Array.from({ length: clients }, retry),
  ]);
  return answers as FinalAnswer[];
}

Deno.test(`property: ${RUNS} random interleavings of clients, retries and faults keep every invariant`, async () => {
  const failures = { records: 0 };
  const suite = reliabilitySuite("property");
  const h = await suite.start((store): CheckoutStore => ({
    ...store,
    record: (input) => {
      if (failures.records > 0) {
        failures.records -= 1;
        return Promise.reject(new Error("process died before the record"));
      }
      return store.record(input);
    },
  }));
  const tally = suite.tally;
  const refund = refundHandler(h);
  const outcomes: Record<string, number> = {};
  try {
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        h.stripe.faults.length = 0;
        h.stripe.faults.push(...s.stripeFaults);
        failures.records = s.failedRecords;
        tally.faultsInjected += s.stripeFaults.length + s.failedRecords;
        h.event = await createEvent(h.sql); // fresh capacity for every run

        const operations = new Map<string, FinalAnswer[]>();
        const retries = new Map<string, () => Promise<FinalAnswer>>();
        await Promise.all(s.operations.map(async (quantity, i) => {
          const key = newKey();
          const body = {
            eventId: h.event.id,
            items: [{ tierId: h.event.floor, quantity }],
            email: `p${i}@example.com`,
          };
          const send = () => {
            tally.requests += 1;
            return h.guest(checkoutRequest(body, { key }));
          };
          const finals = await Promise.all(
            Array.from({ length: s.clientsPerOperation }, () => retryUntilFinal(send)),
          );
          operations.set(key, finals);
          retries.set(key, () => retryUntilFinal(send));
        }));

        for (const finals of operations.values()) {
          for (const final of finals) {
            const label = final.status === 201
              ? "201"
              : `${final.status} ${(final.body.error as { code?: string })?.code}`;
            outcomes[label] = (outcomes[label] ?? 0) + 1;
            assert.ok(
              final.status === 201 ||
                (final.status === 409 &&
                  (final.body.error as { code: string }).code === "sold_out"),
              `final answers are a session or sold out: ${JSON.stringify(final)}`,
            );
          }
          const sessions = new Set(
            finals.filter((f) => f.status === 201).map((f) => f.body.sessionId),
          );
          assert.ok(sessions.size <= 1, "all clients of one operation got the same session");
        }

        if (s.afterlife !== "none") {
          await Promise.all([...operations].map(async ([key, finals]) => {
            const won = finals.find((f) => f.status === 201);
            if (!won) return;
            const later = await afterlife(
              h,
              s.afterlife,
              won,
              retries.get(key)!,
              s.clientsPerOperation,
            );
            const paid = s.afterlife === "paid_late" || s.afterlife === "paid_racing";
            for (const final of later) {
              const label = `after ${s.afterlife}: ${final.status} ${
                (final.body.error as { code?: string })?.code ?? ""
              }`;
              outcomes[label] = (outcomes[label] ?? 0) + 1;
              const code = (final.body.error as { code?: string })?.code;
              assert.ok(
                paid
                  ? final.status === 409 && code === "order_already_paid"
                  : final.status === 201 || (final.status === 409 && code === "sold_out"),
                `after ${s.afterlife}: ${JSON.stringify(final)}`,
              );
            }
            const renewed = new Set(
              later.filter((f) => f.status === 201).map((f) => f.body.sessionId),
            );
            assert.ok(renewed.size <= 1, "the retries share one renewed session");
            assert.ok(!renewed.has(won.body.sessionId), "a renewal is a new session");
            finals.push(...later);
          }));
        }
        if (s.refunds.length > 0) {
          h.stripe.faults.length = 0;
          h.stripe.faults.push(...s.refundFaults);
          tally.faultsInjected += s.refundFaults.length;
          for (const final of await refundPaidOrders(h, refund, s.refunds)) {
            const code = (final.body.error as { code?: string })?.code;
            const label = `refund: ${final.status} ${code ?? ""}`;
            outcomes[label] = (outcomes[label] ?? 0) + 1;
            assert.ok(
              final.status === 201 || (final.status === 409 && code === "refund_exceeds_amount"),
              `a refund is made or refused for what is left: ${JSON.stringify(final)}`,
            );
          }
        }
        await suite.check(h, operations);
      }),
      { numRuns: RUNS, seed: SEED, endOnFailure: true },
    );
  } finally {
    h.stripe.faults.length = 0;
    await h.close();
    await suite.save({ runs: RUNS, seed: SEED, tally, outcomes });
  }
  console.log(
    `property: ${RUNS} runs, ${JSON.stringify(tally)}, outcomes ${JSON.stringify(outcomes)}`,
  );
});
