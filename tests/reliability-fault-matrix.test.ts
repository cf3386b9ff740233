/**
 * Fault matrix: every way a checkout can break half-way, each with a double-clicking client that
 * retries with the same key until it gets a final answer. After every case: at most one live
 * session per operation, no order lost, no tier oversold, nothing stuck beyond reconciliation.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import type { CheckoutStore } from "../supabase/functions/_shared/checkout.ts";
import { checkoutRequest, type Harness, newKey } from "./support/checkout-harness.ts";
import { databaseUrl } from "./support/database.ts";
import {
  type FinalAnswer,
  reliabilitySuite,
  type ReliabilityTally,
  retryUntilFinal,
  SESSIONS,
} from "./support/reliability.ts";
import { applySessionEvent } from "./support/webhooks.ts";
import type { Fault } from "../local/stripe/mod.ts";

/** Database-side faults a case can arm; each fires once. */
interface DbFaults {
  killClaim: boolean;
  killRecord: boolean;
  crashAfterStripe: boolean;
}

interface Case {
  name: string;
  stripeFaults?: Fault[];
  db?: Partial<DbFaults>;
}

const CASES: Case[] = [
  {
    name: "Stripe latency spike longer than the lease",
    stripeFaults: [{ kind: "latency", ms: 1_500, path: SESSIONS }],
  },
  {
    name: "Stripe 500, stored under the key",
    stripeFaults: [{ kind: "status", status: 500, storeUnderKey: true, path: SESSIONS }],
  },
  {
    name: "Stripe 503 twice (the SDK's own retry too)",
    stripeFaults: [{ kind: "status", status: 503, path: SESSIONS }, {
      kind: "status",
      status: 503,
      path: SESSIONS,
    }],
  },
  {
    name: "Stripe 429",
    stripeFaults: [{ kind: "status", status: 429, path: SESSIONS }, {
      kind: "status",
      status: 429,
      path: SESSIONS,
    }],
  },
  {
    name: "connection reset before Stripe handled it",
    stripeFaults: [{ kind: "reset_before", path: SESSIONS }, {
      kind: "reset_before",
      path: SESSIONS,
    }],
  },
  {
    name: "connection reset after Stripe created the session",
    stripeFaults: [{ kind: "reset_after", path: SESSIONS }, {
      kind: "reset_after",
      path: SESSIONS,
    }],
  },
  {
    name: "Stripe answers after the client's timeout",
    stripeFaults: [{ kind: "timeout", ms: 800, path: SESSIONS }, {
      kind: "timeout",
      ms: 800,
      path: SESSIONS,
    }],
  },
  { name: "database connection killed mid-claim", db: { killClaim: true } },
  { name: "database connection killed during the record", db: { killRecord: true } },
  { name: "function dies between Stripe's answer and the record", db: { crashAfterStripe: true } },
];

/** Backends terminated by the DB cases, to prove the faults really fired. */
const kills = { count: 0 };

/**
 * Holds a lock that the statement matching `pattern` will need, waits for that statement to
 * block on it, terminates its backend, then lets go. Resolves once the lock is held; `done`
 * settles after the kill.
 */
async function armKiller(
  admin: postgres.Sql,
  lock: (tx: postgres.ReservedSql) => Promise<unknown>,
  pattern: string,
): Promise<{ done: Promise<void> }> {
  const tx = await admin.reserve();
  await tx`begin`;
  await lock(tx);
  const done = (async () => {
    try {
      for (let i = 0; i < 250; i++) {
        const [victim] = await admin<{ pid: number }[]>`
          select pid from pg_stat_activity
          where wait_event_type = 'Lock' and query ilike ${`%${pattern}%`} and pid <> pg_backend_pid()
          order by query_start limit 1`;
        if (victim) {
          await admin`select pg_terminate_backend(${victim.pid})`;
          kills.count += 1;
          return;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      console.error(`no backend to kill for ${pattern}`);
    } finally {
      await tx`rollback`;
      tx.release();
    }
  })();
  return { done };
}

function faultyStore(store: CheckoutStore, faults: DbFaults, admin: postgres.Sql): CheckoutStore {
  return {
    claim: (input) => store.claim(input),
    settle: (session) => store.settle(session),
    async record(input) {
      if (faults.crashAfterStripe) throw new Error("process died");
      if (!faults.killRecord) return await store.record(input);
      faults.killRecord = false;
      const killer = await armKiller(
        admin,
        (tx) =>
          tx`select 1 from public.stripe_idempotency_keys
             where operation_type = 'checkout:create' and operation_id = ${input.operationId} for update`,
        "record_checkout",
      );
      const recording = store.record(input);
      recording.catch(() => {});
      await killer.done;
      return await recording;
    },
    release(input) {
      if (faults.crashAfterStripe) {
        faults.crashAfterStripe = false; // the process is gone: nothing after the call ran
        return Promise.reject(new Error("process died"));
      }
      return store.release(input);
    },
  };
}

Deno.test("fault matrix: every case ends with one session, no lost order, no oversell, nothing stuck", async () => {
  const admin = postgres(databaseUrl(), {
    max: 2,
    onnotice: () => {},
    connection: { application_name: "fault-admin" },
  });
  const suite = reliabilitySuite("fault-matrix");
  const tally = suite.tally;
  const perCase: Record<string, { finals: number[]; tries: number; sessions: number }> = {};
  try {
    for (const testCase of CASES) {
      const faults: DbFaults = {
        killClaim: false,
        killRecord: false,
        crashAfterStripe: false,
        ...testCase.db,
      };
      const h = await suite.start((store) => faultyStore(store, faults, admin));
      try {
        h.stripe.faults.push(...(testCase.stripeFaults ?? []));
        tally.faultsInjected += (testCase.stripeFaults?.length ?? 0) +
          Object.values(testCase.db ?? {}).filter(Boolean).length;
        const key = newKey();
        const body = {
          eventId: h.event.id,
          items: [{ tierId: h.event.floor, quantity: 2 }],
          email: "matrix@example.com",
        };
        const send = () => {
          tally.requests += 1;
          return h.guest(checkoutRequest(body, { key }));
        };
        // Mid-claim: the first claim to reach the tier lock (the one creating the order) dies.
        const claimKiller = faults.killClaim
          ? await armKiller(
            admin,
            (tx) =>
              tx`select 1 from private.tier_capacity where tier_id = ${h.event.floor} for update`,
            "claim_checkout",
          )
          : null;
        faults.killClaim = false;
        // A double click: two clients with the same key, both retrying until final.
        const finals: FinalAnswer[] = await Promise.all([
          retryUntilFinal(send),
          retryUntilFinal(send),
        ]);
        await claimKiller?.done;
        perCase[testCase.name] = {
          finals: finals.map((f) => f.status),
          tries: finals.reduce((n, f) => n + f.tries, 0),
          sessions: h.stripe.sessionsCreated(),
        };
        for (const final of finals) {
          assert.equal(final.status, 201, `${testCase.name}: ${JSON.stringify(final)}`);
        }
        assert.equal(h.stripe.faults.length, 0, `${testCase.name}: every Stripe fault fired`);
        assert.ok(
          !faults.killClaim && !faults.killRecord && !faults.crashAfterStripe,
          `${testCase.name}: the database fault fired`,
        );
        assert.equal(
          finals[0]!.body.sessionId,
          finals[1]!.body.sessionId,
          `${testCase.name}: one session for both`,
        );
        await suite.check(h, new Map([[key, finals]]));
      } finally {
        await h.close();
      }
    }
  } finally {
    await admin.end({ timeout: 5 });
    await suite.save({ tally, cases: perCase });
  }
  assert.equal(kills.count, 2, "both backend kills happened");
  console.log(`fault matrix: ${JSON.stringify(tally)}`);
});

/** Cases where Stripe's word and the database's clock disagree; each ends with its invariants. */
interface TruthCase {
  name: string;
  /** Plays the case on a fresh harness; returns every final answer of its operations. */
  play(h: Harness, tally: ReliabilityTally): Promise<Map<string, FinalAnswer[]>>;
}

function guestBody(h: Harness, tier: "floor" | "last", email = "truth@example.com") {
  return { eventId: h.event.id, items: [{ tierId: h.event[tier], quantity: 1 }], email };
}

/** One operation's first 201, then its expires_at passes on the database's clock. */
async function handedOut(h: Harness, tally: ReliabilityTally, tier: "floor" | "last") {
  const key = newKey();
  const send = () => {
    tally.requests += 1;
    return h.guest(checkoutRequest(guestBody(h, tier), { key }));
  };
  const first = await retryUntilFinal(send);
  assert.equal(first.status, 201, JSON.stringify(first));
  await h.sql`update public.orders set hold_expires_at = now() - interval '1 second'
              where id = ${String(first.body.orderId)}`;
  return { key, send, first, sessionId: String(first.body.sessionId) };
}

const TRUTH_CASES: TruthCase[] = [
  {
    name: "late webhook: paid in the last second, the double-clicked retry comes after expires_at",
    async play(h, tally) {
      const op = await handedOut(h, tally, "floor");
      h.stripe.completeSession(op.sessionId);
      tally.faultsInjected += 1;
      const finals = await Promise.all([retryUntilFinal(op.send), retryUntilFinal(op.send)]);
      for (const f of finals) {
        assert.equal((f.body.error as { code?: string })?.code, "order_already_paid");
      }
      return new Map([[op.key, [op.first, ...finals]]]);
    },
  },
  {
    name: "payment in the last second while another buyer wants the seat",
    async play(h, tally) {
      const op = await handedOut(h, tally, "last");
      const rival = newKey();
      const rivalFinal = await retryUntilFinal(() =>
        h.guest(checkoutRequest(guestBody(h, "last", "rival@example.com"), { key: rival }))
      );
      assert.equal((rivalFinal.body.error as { code?: string })?.code, "sold_out");
      const paid = h.stripe.completeSession(op.sessionId);
      tally.faultsInjected += 1;
      assert.equal(
        (await applySessionEvent(h.sql, { type: "checkout.session.completed", session: paid }))
          .outcome,
        "paid",
      );
      return new Map([[op.key, [op.first]], [rival, [rivalFinal]]]);
    },
  },
  {
    name: "expiry event racing the retry of the same operation",
    async play(h, tally) {
      const op = await handedOut(h, tally, "floor");
      const expired = h.stripe.expireSession(op.sessionId);
      tally.faultsInjected += 1;
      const [result, ...finals] = await Promise.all([
        applySessionEvent(h.sql, { type: "checkout.session.expired", session: expired }),
        retryUntilFinal(op.send),
        retryUntilFinal(op.send),
      ]);
      assert.ok(["expired", "noop"].includes(result.outcome), JSON.stringify(result));
      assert.deepEqual(finals.map((f) => f.status), [201, 201]);
      assert.equal(finals[0]!.body.sessionId, finals[1]!.body.sessionId);
      return new Map([[op.key, [op.first, ...finals]]]);
    },
  },
  {
    name:
      "cached 5xx on reconciliation: the dead attempt is settled at once, the retry starts afresh",
    async play(h, tally) {
      const key = newKey();
      // Every try dies before Stripe sees it and the process is gone before its release.
      h.stripe.faults.push({ kind: "reset_before", path: SESSIONS }, {
        kind: "reset_before",
        path: SESSIONS,
      });
      tally.requests += 1;
      assert.equal((await h.guest(checkoutRequest(guestBody(h, "floor"), { key }))).status, 503);
      h.stripe.faults.push({ kind: "status", status: 500, storeUnderKey: true, path: SESSIONS });
      tally.faultsInjected += 3;
      return new Map([[key, []]]);
    },
  },
];

Deno.test("fault matrix, Stripe's word: late webhooks, last-second payments, expiry races and cached 5xx keep every invariant", async () => {
  const suite = reliabilitySuite("fault-matrix-truth");
  const tally = suite.tally;
  const perCase: Record<string, string[]> = {};
  try {
    for (const testCase of TRUTH_CASES) {
      let dying = testCase.name.startsWith("cached 5xx");
      const h = await suite.start((store): CheckoutStore => ({
        ...store,
        release: (input) =>
          dying ? Promise.reject(new Error("process died")) : store.release(input),
      }));
      try {
        const operations = await testCase.play(h, tally);
        dying = false;
        await suite.check(h, operations);
        perCase[testCase.name] = [...operations.values()].flat().map((f) => String(f.status));
        if (testCase.name.startsWith("cached 5xx")) {
          assert.equal(h.stripe.faults.length, 0, "the reconciler met the cached 500");
          const [key] = [...operations.keys()];
          const retry = await retryUntilFinal(() =>
            h.guest(checkoutRequest(guestBody(h, "floor"), { key }))
          );
          assert.equal(retry.status, 201, JSON.stringify(retry));
        }
      } finally {
        await h.close();
      }
    }
  } finally {
    await suite.save({ tally, cases: perCase });
  }
  console.log(`fault matrix (Stripe's word): ${JSON.stringify(tally)}`);
});
