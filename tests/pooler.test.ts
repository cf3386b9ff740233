/**
 * Many instances, one pooler: four separate function processes (scripts/functions-host.ts, each
 * index.ts loaded unchanged, DB_POOL_MAX=3, prepared statements off) behind a round-robin front,
 * all against one database through PgBouncer in transaction mode (POOLER_DATABASE_URL, started
 * by scripts/test.sh like Supabase's pooler on port 6543). A 200-way storm of one key and an
 * on-sale of 1,000 buyers for 100 seats: one Stripe session per operation, nothing oversold,
 * zero 5xx.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { startInstances } from "../scripts/lib/instances.ts";
import { apiKey, LOCAL_JWT_SECRET } from "../scripts/lib/jwt.ts";
import { startStripeServer, type StripeServer } from "../local/stripe/mod.ts";
import { databaseUrl } from "./support/database.ts";

const INSTANCES = 4;
const STORM = 200;
const BUYERS = 1_000;
const SEATS = 100;
const AT_ONCE = 32;
const SITE_URL = "http://shop.test";

function poolerUrl(): string {
  const url = Deno.env.get("POOLER_DATABASE_URL");
  if (!url) {
    throw new Error(
      "POOLER_DATABASE_URL is not set: run the tests through `npm test` (it starts PgBouncer)",
    );
  }
  return url;
}

/** What every answer of a run was, by status and error code. */
class Answers {
  readonly byStatus = new Map<string, number>();
  fiveHundreds = 0;

  add(status: number, code: string | undefined): void {
    const key = code ? `${status} ${code}` : String(status);
    this.byStatus.set(key, (this.byStatus.get(key) ?? 0) + 1);
    if (status >= 500) this.fiveHundreds += 1;
  }

  toString(): string {
    return JSON.stringify(Object.fromEntries([...this.byStatus].sort()));
  }
}

interface Stack {
  url: string;
  stripe: StripeServer;
  anonKey: string;
  /** Requests each instance served (its JSON log lines). */
  served: number[];
  close(): Promise<void>;
}

/** Four function processes through the pooler, and a round-robin front before them. */
async function startStack(): Promise<Stack> {
  const stripe = await startStripeServer();
  try {
    const instances = await startInstances(INSTANCES, {
      SUPABASE_DB_URL: poolerUrl(),
      // The pooler may not be on 6543 here (a parallel run took it): say what it is.
      DB_TRANSACTION_POOLER: "true",
      DB_POOL_MAX: "3",
      STRIPE_SECRET_KEY: "sk_test_pooler",
      STRIPE_API_BASE: stripe.url,
      SITE_URL,
      SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
      STRIPE_WEBHOOK_SECRET: "whsec_pooler_test",
      // The buyer's address is the entry before the one the functions host appends.
      CHECKOUT_TRUSTED_PROXY_HOPS: "2",
    });
    return {
      url: instances.url,
      stripe,
      anonKey: await apiKey("anon", LOCAL_JWT_SECRET),
      served: instances.served,
      close: async () => {
        await instances.close();
        await stripe.close();
      },
    };
  } catch (error) {
    await stripe.close();
    throw error;
  }
}

/**
 * One buyer's checkout as a storefront sends it, retried with the same key on a 409
 * idempotency_key_in_use (and on a 503, which is counted: there must be none). Returns the
 * final answer.
 */
async function checkout(
  stack: Stack,
  answers: Answers,
  request: { key: string; address: string; body: unknown },
): Promise<{ status: number; body: Record<string, unknown> }> {
  for (let tries = 1;; tries++) {
    const response = await fetch(`${stack.url}/functions/v1/guest-checkout`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${stack.anonKey}`,
        "content-type": "application/json",
        "idempotency-key": request.key,
        "x-forwarded-for": request.address,
      },
      body: JSON.stringify(request.body),
    });
    const body = await response.json().catch(() => ({}));
    const code = (body as { error?: { code?: string } }).error?.code;
    answers.add(response.status, code);
    const retry = (response.status === 409 && code === "idempotency_key_in_use") ||
      response.status === 503;
    if (!retry || tries >= 50) return { status: response.status, body };
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Transactions PgBouncer has served, from its admin console. */
async function poolerTransactions(): Promise<number> {
  const admin = new URL(poolerUrl());
  admin.pathname = "/pgbouncer";
  const output = await new Deno.Command("psql", {
    args: [admin.href, "-XAtc", "show stats"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  const line = new TextDecoder().decode(output.stdout).split("\n")
    .find((row) => row.startsWith("postgres|"));
  assert.ok(line, "PgBouncer has stats for the postgres database");
  return Number(line.split("|")[1]);
}

async function poolMode(): Promise<string> {
  const admin = new URL(poolerUrl());
  admin.pathname = "/pgbouncer";
  const output = await new Deno.Command("psql", {
    args: [admin.href, "-XAtc", "show config"],
    stdout: "piped",
  }).output();
  const row = new TextDecoder().decode(output.stdout).split("\n")
    .find((line) => line.startsWith("pool_mode|"));
  return row?.split("|")[1] ?? "unknown";
}

Deno.test("four function processes through PgBouncer in transaction mode: a 200-way storm and a 1,000-buyer on-sale stay exact", async () => {
  assert.equal(await poolMode(), "transaction");
  const sql = postgres(databaseUrl(), { max: 2, onnotice: () => {} });
  const stack = await startStack();
  try {
    const [event] = await sql<{ id: string }[]>`
      insert into events.events (title, currency, status) values ('Pooler On-sale', 'usd', 'published')
      returning id`;
    const tiers = await sql<{ id: string; name: string }[]>`
      insert into events.ticket_tiers (event_id, name, unit_amount, capacity, max_per_order)
      values (${event!.id}, 'Storm', 2500, null, 10), (${event!.id}, 'Hot', 9900, ${SEATS}, 1)
      returning id, name`;
    const tier = (name: string) => tiers.find((t) => t.name === name)!.id;
    const transactionsBefore = await poolerTransactions();

    // 200 clicks of one Pay button at once, spread over the four instances.
    const storm = new Answers();
    const stormKey = `sf-storm-${crypto.randomUUID()}`;
    const stormBody = {
      eventId: event!.id,
      items: [{ tierId: tier("Storm"), quantity: 2 }],
      email: "storm@example.com",
    };
    const finals = await Promise.all(
      Array.from(
        { length: STORM },
        () => checkout(stack, storm, { key: stormKey, address: "198.51.100.7", body: stormBody }),
      ),
    );
    const stormSessions = [...stack.stripe.sessions.values()].filter((s) =>
      s.metadata.operation_key?.startsWith(`checkout:create:${stormKey}:`)
    );
    console.log(`storm: ${storm}; sessions ${stormSessions.length}`);
    assert.equal(stormSessions.length, 1, "one Stripe session for the storm's operation");
    assert.equal(storm.fiveHundreds, 0, `no 5xx in the storm: ${storm}`);
    for (const final of finals) {
      assert.equal(final.status, 201, JSON.stringify(final));
      assert.equal(final.body.sessionId, stormSessions[0]!.id, "every click gets that session");
    }

    // The on-sale: 1,000 distinct buyers for 100 seats, 32 at a time.
    const onSale = new Answers();
    const createdBefore = stack.stripe.sessionsCreated();
    const results: { status: number; code?: string }[] = [];
    let nextBuyer = 0;
    await Promise.all(Array.from({ length: AT_ONCE }, async () => {
      while (nextBuyer < BUYERS) {
        const buyer = nextBuyer++;
        const final = await checkout(stack, onSale, {
          key: `sf-onsale-${buyer}-${crypto.randomUUID()}`,
          address: `10.${(buyer >> 8) & 255}.${buyer & 255}.9`,
          body: {
            eventId: event!.id,
            items: [{ tierId: tier("Hot"), quantity: 1 }],
            email: `buyer${buyer}@example.com`,
          },
        });
        results.push({
          status: final.status,
          code: (final.body as { error?: { code?: string } }).error?.code,
        });
      }
    }));
    const sold = results.filter((r) => r.status === 201).length;
    const soldOut = results.filter((r) => r.status === 409 && r.code === "sold_out").length;
    const sessions = stack.stripe.sessionsCreated() - createdBefore;
    const [taken] = await sql<{ taken: number; recounted: number; linked: number }[]>`
      select private.tier_seats_taken(${tier("Hot")})::int as taken,
             private.tier_seats_recounted(${tier("Hot")})::int as recounted,
             (select count(*)::int from public.orders o join public.order_items i on i.order_id = o.id
              where i.tier_id = ${
      tier("Hot")
    } and o.stripe_checkout_session_id is not null) as linked`;
    console.log(
      `on-sale: ${onSale}; sold ${sold}, sold out ${soldOut}, sessions ${sessions}, ` +
        `served per instance ${stack.served.join("/")}`,
    );
    assert.equal(onSale.fiveHundreds, 0, `no 5xx in the on-sale: ${onSale}`);
    assert.equal(sold, SEATS, "exactly the tier's seats were sold");
    assert.equal(soldOut, BUYERS - SEATS, "every other buyer heard 409 sold_out");
    assert.equal(sessions, SEATS, "one Stripe session per successful checkout");
    assert.deepEqual({ ...taken }, { taken: SEATS, recounted: SEATS, linked: SEATS });
    assert.deepEqual([...await sql`select * from public.check_tier_capacity()`], []);

    // It all went through the pooler, spread over the four instances.
    assert.ok(
      (await poolerTransactions()) - transactionsBefore >= BUYERS + STORM,
      "the claims ran as PgBouncer transactions",
    );
    for (const [i, count] of stack.served.entries()) {
      assert.ok(count >= (BUYERS + STORM) / INSTANCES / 2, `instance ${i} served ${count}`);
    }
  } finally {
    await stack.close();
    await sql.end({ timeout: 5 });
  }
});
