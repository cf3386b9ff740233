/**
 * Reconciliation of attempts that died between claim and record: settled to exactly one
 * session or a released hold, safe beside live traffic and beside itself.
 */
import assert from "node:assert/strict";
import { operatorCaller } from "../supabase/functions/_shared/auth.ts";
import type { CheckoutStore } from "../supabase/functions/_shared/checkout.ts";
import { createReconcileHandler } from "../supabase/functions/_shared/reconcile.ts";
import {
  checkoutRequest,
  type Harness,
  newKey,
  reconcileNow,
  startHarness,
  withHarness,
} from "./support/checkout-harness.ts";
import { LOCAL_JWT_SECRET, signJwt, userToken } from "../scripts/lib/jwt.ts";

/** While `on`, attempts die after their claim. */
interface Kill {
  on: boolean;
}

/** A harness whose attempts "die" after the claim: record and release never reach the database. */
function withDyingAttempts(fn: (h: Harness, kill: Kill) => Promise<void>) {
  const kill: Kill = { on: true };
  return withHarness(async (h) => {
    // Reconciliation is global: park attempts that other tests left stuck on purpose, so that
    // this test's Stripe server only ever sees this test's operations.
    await h.sql`
      update public.stripe_idempotency_keys set status = 'failed', lease_token = null, lease_expires_at = null
      where status = 'in_progress' and operation_type = 'checkout:create'`;
    await fn(h, kill);
  }, {
    leaseSeconds: 1,
    wrapStore: (store): CheckoutStore => ({
      ...store,
      record: (input) => kill.on ? Promise.reject(new Error("killed")) : store.record(input),
      release: (input) => kill.on ? Promise.reject(new Error("killed")) : store.release(input),
    }),
  });
}

function body(h: Harness, quantity = 1) {
  return {
    eventId: h.event.id,
    items: [{ tierId: h.event.floor, quantity }],
    email: "late@example.com",
  };
}

async function waitForLeases() {
  await new Promise((r) => setTimeout(r, 1_100));
}

/**
 * One checkout per key of `tier` (default floor) while attempts die, each answered 503; then
 * attempts live again and every lease runs out: the keys are stuck, waiting for reconciliation.
 */
async function leaveStuck(
  h: Harness,
  kill: Kill,
  options: { keys: string[]; tier?: "floor" | "balcony" },
): Promise<void> {
  const tierId = h.event[options.tier ?? "floor"];
  for (const key of options.keys) {
    const response = await h.guest(
      checkoutRequest({ ...body(h), items: [{ tierId, quantity: 1 }] }, { key }),
    );
    assert.equal(response.status, 503);
  }
  kill.on = false;
  await waitForLeases();
}

/** Stripe answers the next Checkout Session create only after `ms`. */
function slowNextCreate(h: Harness, ms: number): void {
  h.stripe.faults.push({ kind: "timeout", ms, method: "POST", path: "/v1/checkout/sessions" });
}

async function floorTaken(h: Harness): Promise<number> {
  const [row] = await h.sql<
    { n: string }[]
  >`select private.tier_seats_taken(${h.event.floor}) as n`;
  return Number(row!.n);
}

Deno.test("a crash after Stripe created the session is settled by recording that same session", () =>
  withDyingAttempts(async (h, kill) => {
    const key = newKey();
    assert.equal((await h.guest(checkoutRequest(body(h), { key }))).status, 503);
    assert.equal(h.stripe.sessionsCreated(), 1);
    kill.on = false;
    await waitForLeases();

    const summary = await reconcileNow(h);
    assert.deepEqual(summary, { settled: 1, failed: 0, skipped: 0, remaining: 0 });
    assert.equal(h.stripe.sessionsCreated(), 1, "no second session");
    const [order] = await h.sql<{ stripe_checkout_session_id: string; status: string }[]>`
      select o.stripe_checkout_session_id, o.status from public.orders o where o.event_id = ${h.event.id}`;
    assert.equal(order?.status, "pending");
    assert.ok(h.stripe.sessions.has(order!.stripe_checkout_session_id));

    const retry = await h.guest(checkoutRequest(body(h), { key }));
    assert.equal(retry.status, 201);
    assert.equal(retry.headers.get("idempotent-replayed"), "true");
    assert.equal((await retry.json()).sessionId, order!.stripe_checkout_session_id);
  }));

Deno.test("a crash before Stripe saw the request is settled by releasing the hold, and the retry works", () =>
  withDyingAttempts(async (h, kill) => {
    const key = newKey();
    // Every try of the first attempt is dropped before Stripe handles it.
    for (let i = 0; i < 3; i++) {
      h.stripe.faults.push({ kind: "reset_before", path: "/v1/checkout/sessions" });
    }
    assert.equal((await h.guest(checkoutRequest(body(h, 3), { key }))).status, 503);
    assert.equal(h.stripe.sessionsCreated(), 0);
    assert.equal(await floorTaken(h), 3, "the dead attempt still holds its seats");
    kill.on = false;
    h.stripe.faults.length = 0;
    await waitForLeases();

    const summary = await reconcileNow(h);
    assert.deepEqual(summary, { settled: 1, failed: 0, skipped: 0, remaining: 0 });
    assert.equal(await floorTaken(h), 0, "the seats are free again");
    const open = [...h.stripe.sessions.values()].filter((s) => s.status === "open");
    assert.equal(open.length, 0, "no payable session was left behind");

    const retry = await h.guest(checkoutRequest(body(h, 3), { key }));
    assert.equal(retry.status, 201);
    assert.equal(h.stripe.sessions.get((await retry.json()).sessionId)?.status, "open");
  }));

Deno.test("reconcilers running concurrently settle each stuck attempt exactly once", () =>
  withDyingAttempts(async (h, kill) => {
    const keys = Array.from({ length: 6 }, newKey);
    await leaveStuck(h, kill, { keys, tier: "balcony" });
    const runs = await Promise.all(Array.from({ length: 3 }, () => reconcileNow(h)));
    assert.equal(runs.reduce((n, r) => n + r.settled, 0), keys.length, JSON.stringify(runs));
    assert.equal(runs.reduce((n, r) => n + r.failed + r.skipped, 0), 0, JSON.stringify(runs));
    assert.equal(h.stripe.sessionsCreated(), keys.length, "one session per operation, never two");
    const again = await reconcileNow(h);
    assert.deepEqual(
      again,
      { settled: 0, failed: 0, skipped: 0, remaining: 0 },
      "nothing is left stuck",
    );
  }));

Deno.test("a live retry during reconciliation waits (409) and then replays the reconciled session", () =>
  withDyingAttempts(async (h, kill) => {
    const key = newKey();
    await leaveStuck(h, kill, { keys: [key] });
    // Slow answer (a replay is answered from Stripe's store, so latency must come after it).
    h.stripe.faults.push({ kind: "timeout", ms: 300, path: "/v1/checkout/sessions" });
    const reconciling = reconcileNow(h);
    await new Promise((r) => setTimeout(r, 100));
    const during = await h.guest(checkoutRequest(body(h), { key }));
    assert.equal(
      during.status,
      409,
      `the reconciler holds the operation: ${JSON.stringify(h.logs.at(-1))}`,
    );
    assert.equal((await reconciling).settled, 1);
    const after = await h.guest(checkoutRequest(body(h), { key }));
    assert.equal(after.headers.get("idempotent-replayed"), "true");
    assert.equal(h.stripe.sessionsCreated(), 1);
  }));

Deno.test("recent attempts are left alone: only leases expired longer than the threshold are reconciled", () =>
  withDyingAttempts(async (h, kill) => {
    await leaveStuck(h, kill, { keys: [newKey()] });
    const summary = await reconcileNow(h, { staleSeconds: 600 });
    assert.equal(summary.settled + summary.failed + summary.skipped, 0);
  }));

Deno.test("reconcile-checkouts accepts only a secret key or the legacy service role's token", async () => {
  const h = await startHarness();
  try {
    const secretKey = "sb_secret_reconcile_test_0123456789";
    const handler = createReconcileHandler({
      sql: h.sql,
      stripe: h.stripeClient,
      staleSeconds: 600,
      log: () => {},
      authenticate: operatorCaller({ keys: { default: secretKey }, jwtSecret: LOCAL_JWT_SECRET }),
    });
    const call = (token?: string, apikey?: string) =>
      handler(
        new Request("http://functions.test/functions/v1/reconcile-checkouts", {
          method: "POST",
          headers: {
            ...(token ? { authorization: `Bearer ${token}` } : {}),
            ...(apikey ? { apikey } : {}),
          },
        }),
      );
    assert.equal((await call()).status, 401);
    assert.equal(
      (await call(await userToken(crypto.randomUUID()))).status,
      401,
      "a user is not cron",
    );
    const anon = await signJwt({ role: "anon", exp: Math.floor(Date.now() / 1000) + 60 });
    assert.equal((await call(anon)).status, 401);
    assert.equal((await call(undefined, "sb_publishable_reconcile_test")).status, 401);
    assert.equal((await call(undefined, `${secretKey}x`)).status, 401, "another secret key");
    const service = await signJwt({
      role: "service_role",
      exp: Math.floor(Date.now() / 1000) + 60,
    });
    for (
      const [why, ok] of [
        ["the legacy service_role token", await call(service)],
        ["a secret key in apikey", await call(undefined, secretKey)],
      ] as const
    ) {
      assert.equal(ok.status, 200, why);
      const answer = await ok.json();
      assert.deepEqual(Object.keys(answer).sort(), [
        "failed",
        "refunds",
        "remaining",
        "settled",
        "skipped",
      ]);
      assert.deepEqual(Object.keys(answer.refunds).sort(), [
        "conflictsRefunded",
        "failed",
        "settled",
        "skipped",
      ]);
    }
  } finally {
    await h.close();
  }
});

/** A stuck attempt whose every try died before Stripe saw it: no session exists under its key. */
async function stuckBeforeStripe(h: Harness, key = newKey(), quantity = 1): Promise<string> {
  for (let i = 0; i < 3; i++) {
    h.stripe.faults.push({ kind: "reset_before", path: "/v1/checkout/sessions" });
  }
  assert.equal((await h.guest(checkoutRequest(body(h, quantity), { key }))).status, 503);
  h.stripe.faults.length = 0;
  return key;
}

async function operationStatus(h: Harness, key: string): Promise<string | undefined> {
  const [row] = await h.sql<{ status: string }[]>`
    select status from public.stripe_idempotency_keys
    where operation_type = 'checkout:create' and operation_id = ${key}`;
  return row?.status;
}

Deno.test("a 5xx that Stripe stores under the key settles the attempt at once: failed, hold released", () =>
  withDyingAttempts(async (h, kill) => {
    const key = await stuckBeforeStripe(h, newKey(), 2);
    kill.on = false;
    await waitForLeases();
    h.stripe.faults.push({
      kind: "status",
      status: 500,
      storeUnderKey: true,
      method: "POST",
      path: "/v1/checkout/sessions",
    });
    const reconcile = () => reconcileNow(h);
    assert.deepEqual(await reconcile(), { settled: 1, failed: 0, skipped: 0, remaining: 0 });
    assert.equal(await operationStatus(h, key), "failed");
    assert.equal(await floorTaken(h), 0, "the seats are free");
    assert.deepEqual(await reconcile(), { settled: 0, failed: 0, skipped: 0, remaining: 0 });
  }));

Deno.test("an attempt Stripe never answers for is retried at most RECONCILE_MAX_ATTEMPTS runs, then failed and released", () =>
  withDyingAttempts(async (h, kill) => {
    const key = await stuckBeforeStripe(h);
    kill.on = false;
    await waitForLeases();
    for (let i = 0; i < 20; i++) {
      h.stripe.faults.push({ kind: "reset_before", path: "/v1/checkout/sessions" });
    }
    const reconcile = () => reconcileNow(h, { maxAttempts: 2 });
    assert.deepEqual(await reconcile(), { settled: 0, failed: 0, skipped: 1, remaining: 1 });
    assert.equal(await floorTaken(h), 1, "while it may still be answered, the hold stays");
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(await reconcile(), { settled: 0, failed: 1, skipped: 0, remaining: 0 });
    assert.equal(await operationStatus(h, key), "failed");
    assert.equal(await floorTaken(h), 0);
    assert.deepEqual(await reconcile(), { settled: 0, failed: 0, skipped: 0, remaining: 0 });
  }));

Deno.test("reconciliation takes stuck attempts one at a time: a live retry of another is not locked out meanwhile", () =>
  withDyingAttempts(async (h, kill) => {
    const keys = [newKey(), newKey(), newKey()];
    await leaveStuck(h, kill, { keys });
    slowNextCreate(h, 500); // the reconciler's first Stripe call
    const reconciling = reconcileNow(h);
    await new Promise((r) => setTimeout(r, 150));
    const live = await h.guest(checkoutRequest(body(h), { key: keys[2] }));
    assert.equal(live.status, 201, `not held by the reconciler: ${await live.clone().text()}`);
    const summary = await reconciling;
    assert.equal(summary.settled, 2, JSON.stringify(summary));
    assert.equal(h.stripe.sessionsCreated(), 3, "one session per operation");
  }));

Deno.test("a fenced record during reconciliation is counted and the run goes on", () =>
  withDyingAttempts(async (h, kill) => {
    const keys = [newKey(), newKey()];
    await leaveStuck(h, kill, { keys });
    slowNextCreate(h, 400);
    const reconciling = reconcileNow(h);
    await new Promise((r) => setTimeout(r, 150));
    // Someone else takes the first attempt over while the reconciler waits for Stripe.
    await h.sql`update public.stripe_idempotency_keys set lease_token = gen_random_uuid()
                where operation_id = ${keys[0]!} and status = 'in_progress'`;
    const summary = await reconciling;
    assert.deepEqual(summary, { settled: 1, failed: 0, skipped: 1, remaining: 0 });
    assert.equal(await operationStatus(h, keys[1]!), "completed");
  }));

Deno.test("an in-flight checkout:create row with no order does not abort the run", () =>
  withDyingAttempts(async (h, kill) => {
    // A row only the generic protocol made (no order to describe to Stripe): nothing to settle.
    const orphan = `orphan-${crypto.randomUUID()}`;
    await h.sql`
      select public.claim_stripe_idempotency('checkout:create', ${orphan},
        ${`checkout:create:${orphan}:${crypto.randomUUID()}`}, ${"a".repeat(64)},
        gen_random_uuid(), 1, '{}'::jsonb, now() - interval '1 hour')`;
    const key = newKey();
    assert.equal((await h.guest(checkoutRequest(body(h), { key }))).status, 503);
    kill.on = false;
    await new Promise((r) => setTimeout(r, 1_100));
    assert.deepEqual(await reconcileNow(h), { settled: 1, failed: 0, skipped: 0, remaining: 0 });
    assert.equal(await operationStatus(h, key), "completed");
  }));
