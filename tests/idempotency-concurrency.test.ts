/**
 * The atomic claim under real concurrency: many backends claim at the same instant and the
 * database, not the application, decides who wins.
 */
import assert from "node:assert/strict";
import {
  claimOperation,
  type ClaimResult,
  recordOperation,
  type Sql,
} from "../supabase/functions/_shared/db.ts";
import {
  fingerprint,
  makeStripeIdempotencyKey,
  OPERATION,
} from "../supabase/functions/_shared/checkout-utils.ts";
import {
  closeAll,
  openPool,
  openSeparateConnections,
  uniqueOperationId,
} from "./support/database.ts";

const CLIENTS = 50;
const TYPE = OPERATION.checkoutCreate;

function claimFrom(sql: Sql, operationId: string, fp: string, now?: Date): Promise<ClaimResult> {
  return claimOperation(sql, {
    operationType: TYPE,
    operationId,
    stripeIdempotencyKey: makeStripeIdempotencyKey(TYPE, operationId),
    requestFingerprint: fp,
    leaseToken: crypto.randomUUID(),
    leaseSeconds: 30,
    now,
  });
}

/** Runs `fn` with `n` connections of their own (each its own backend), closed afterwards. */
async function withClients(n: number, fn: (clients: Sql[]) => Promise<void>): Promise<void> {
  const clients = await openSeparateConnections(n);
  try {
    await fn(clients);
  } finally {
    await closeAll(clients);
  }
}

/** A new operation (its id starts with `tag`) whose first claim, from `sql`, created it. */
async function createdOperation(sql: Sql, tag: string) {
  const operationId = uniqueOperationId(tag);
  const fp = await fingerprint({ operationId });
  const first = await claimFrom(sql, operationId, fp);
  assert.equal(first.outcome, "created");
  return { operationId, fp, first };
}

/** A claim inside a transaction, and the transaction id it was assigned (null: none written). */
function claimInTransaction(sql: Sql, operationId: string, fp: string) {
  return sql.begin(async (tx) => {
    const claim = await claimFrom(tx as unknown as Sql, operationId, fp);
    const [row] = await tx<
      { xid: string | null }[]
    >`select pg_current_xact_id_if_assigned()::text as xid`;
    return { claim, xid: row?.xid ?? null };
  });
}

function countOutcomes(results: ClaimResult[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of results) counts[r.outcome] = (counts[r.outcome] ?? 0) + 1;
  return counts;
}

Deno.test("50 concurrent claims of one operation from separate connections: exactly one wins", () =>
  withClients(CLIENTS, async (clients) => {
    const operationId = uniqueOperationId("storm");
    const fp = await fingerprint({ operationId });
    const results = await Promise.all(clients.map((sql) => claimFrom(sql, operationId, fp)));

    const counts = countOutcomes(results);
    assert.equal(counts.created, 1, `outcomes: ${JSON.stringify(counts)}`);
    assert.equal(counts.conflict, CLIENTS - 1, `outcomes: ${JSON.stringify(counts)}`);
    const [row] = await clients[0]!<{ n: number; key: string }[]>`
      select count(*)::int as n, min(stripe_idempotency_key) as key
      from public.stripe_idempotency_keys where operation_id = ${operationId}`;
    assert.equal(row?.n, 1);
    const winner = results.find((r) => r.outcome === "created");
    assert.equal(row?.key, winner?.stripeIdempotencyKey, "the stored key is the winner's");
    for (const loser of results.filter((r) => r.outcome === "conflict")) {
      assert.equal(loser.leaseToken, null, "losers never see the lease token");
      assert.equal(loser.stripeIdempotencyKey, null, "losers never get the key");
    }
  }));

Deno.test("claims racing a completion see the conflict or the replay, never a second win", () =>
  withClients(CLIENTS, async (clients) => {
    const { operationId, fp, first } = await createdOperation(clients[0]!, "race-record");
    const body = { sessionId: "cs_test_race", url: "http://127.0.0.1/pay/cs_test_race" };

    // Half the clients claim before the record lands, half after; all are sent at once.
    const results = await Promise.all([
      ...clients.slice(1, 26).map((sql) => claimFrom(sql, operationId, fp)),
      recordOperation(clients[0]!, {
        operationType: TYPE,
        operationId,
        leaseToken: first.leaseToken!,
        stripeResourceId: "cs_test_race",
        responseStatus: 201,
        responseBody: body,
      }).then(() => Promise.all(clients.slice(26).map((sql) => claimFrom(sql, operationId, fp)))),
    ]);
    const claims = results.flat() as ClaimResult[];
    assert.equal(claims.length, CLIENTS - 1);
    const counts = countOutcomes(claims);
    assert.equal(
      (counts.conflict ?? 0) + (counts.replay ?? 0),
      CLIENTS - 1,
      JSON.stringify(counts),
    );
    assert.ok(
      (counts.replay ?? 0) >= 24,
      `the claims after the record replay: ${JSON.stringify(counts)}`,
    );
    for (const replay of claims.filter((c) => c.outcome === "replay")) {
      assert.deepEqual(replay.responseBody, body, "every replay returns the exact stored body");
      assert.equal(replay.responseStatus, 201);
    }
  }));

Deno.test("50 concurrent claims after a lease expired: exactly one takes over, with the same key", () =>
  withClients(CLIENTS, async (clients) => {
    const { operationId, fp, first } = await createdOperation(clients[0]!, "takeover");

    const later = new Date(Date.now() + 31_000); // past the 30 s lease
    const results = await Promise.all(clients.map((sql) => claimFrom(sql, operationId, fp, later)));
    const counts = countOutcomes(results);
    assert.equal(counts.takeover, 1, JSON.stringify(counts));
    assert.equal(counts.conflict, CLIENTS - 1, JSON.stringify(counts));
    const taker = results.find((r) => r.outcome === "takeover");
    assert.equal(
      taker?.stripeIdempotencyKey,
      first.stripeIdempotencyKey,
      "Stripe sees the SAME key",
    );
    assert.notEqual(taker?.leaseToken, first.leaseToken, "the lease has a new owner");
  }));

Deno.test("claims of 50 different operations at once all win", () =>
  withClients(CLIENTS, async (clients) => {
    const ids = clients.map(() => uniqueOperationId("distinct"));
    const results = await Promise.all(
      clients.map(async (sql, i) => claimFrom(sql, ids[i]!, await fingerprint({ id: ids[i] }))),
    );
    assert.deepEqual(countOutcomes(results), { created: CLIENTS });
    assert.equal(new Set(results.map((r) => r.stripeIdempotencyKey)).size, CLIENTS);
  }));

Deno.test("a mismatched request under a live operation is rejected under concurrency too", () =>
  withClients(10, async (clients) => {
    const operationId = uniqueOperationId("mismatch");
    const fps = await Promise.all([fingerprint({ buyer: "a" }), fingerprint({ buyer: "b" })]);
    const results = await Promise.all(
      clients.map((sql, i) => claimFrom(sql, operationId, fps[i % 2]!)),
    );
    const created = results.filter((r) => r.outcome === "created");
    assert.equal(created.length, 1);
    const winnerFp = results.indexOf(created[0]!) % 2;
    results.forEach((r, i) => {
      if (r.outcome === "created") return;
      assert.equal(r.outcome, i % 2 === winnerFp ? "conflict" : "mismatch");
    });
  }));

Deno.test("cleanup running beside live claims never deletes an attempt in flight", async () => {
  const pool = openPool(4);
  const clients = await openSeparateConnections(20);
  try {
    const past = new Date(Date.now() - 2 * 24 * 3600_000);
    const ids = clients.map(() => uniqueOperationId("cleanup-race"));
    // Rows created two days ago: expired, and their 30 s leases long dead, except the ones we
    // re-claim right now, which get live leases while cleanup runs.
    for (const id of ids) await claimFrom(pool, id, await fingerprint({ id }), past);
    const [cleaned, ...claims] = await Promise.all([
      pool<{ n: string }[]>`select public.cleanup_expired_idempotency_keys(3) as n`,
      ...clients.map(async (sql, i) => claimFrom(sql, ids[i]!, await fingerprint({ id: ids[i] }))),
    ]);
    const n = Number((cleaned as { n: string }[])[0]?.n);
    assert.ok(n >= 0);
    for (const claim of claims as ClaimResult[]) {
      assert.ok(["takeover", "created"].includes(claim.outcome), claim.outcome);
    }
    const [row] = await pool<{ n: number }[]>`
      select count(*)::int as n from public.stripe_idempotency_keys
      where operation_id = any(${ids}) and status = 'in_progress' and lease_expires_at > now()`;
    assert.equal(row?.n, ids.length, "every live attempt survived the cleanup");
  } finally {
    await closeAll([pool, ...clients]);
  }
});

Deno.test("a replay, a mismatch and a live conflict are decided without locking or writing", async () => {
  const sql = openPool(2);
  try {
    const operationId = uniqueOperationId("readonly");
    const fp = await fingerprint({ operationId });
    const first = await claimFrom(sql, operationId, fp);
    // A live lease: the conflict is read, not locked.
    const duringLease = await claimInTransaction(sql, operationId, fp);
    assert.equal(duringLease.claim.outcome, "conflict");
    assert.equal(duringLease.xid, null, "no transaction id: nothing locked, nothing written");

    await recordOperation(sql, {
      operationType: TYPE,
      operationId,
      leaseToken: first.leaseToken!,
      stripeResourceId: "cs_test_readonly",
      responseStatus: 201,
      responseBody: { ok: true },
    });
    for (const [fpToSend, outcome] of [[fp, "replay"], ["0".repeat(64), "mismatch"]] as const) {
      const result = await claimInTransaction(sql, operationId, fpToSend);
      assert.equal(result.claim.outcome, outcome);
      assert.equal(result.xid, null, `${outcome}: nothing locked, nothing written`);
    }
  } finally {
    await sql.end();
  }
});
