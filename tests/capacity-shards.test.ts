/**
 * A sharded tier (256 seats or more counts on 8 counter rows, 8,192 or more on 64, each with
 * its share of the capacity) is sold exactly under real concurrency: buyers on separate
 * connections claim at once, the shards fill unevenly, claims whose shard is full move
 * allotment from the others under all the tier's locks, and the tier sells exactly its
 * capacity: never more, and no buyer is told sold out while a seat is free.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { closeAll, openPool, openSeparateConnections } from "./support/database.ts";
import type { Sql } from "../supabase/functions/_shared/db.ts";

const SEATS = 300;
const BUYERS = 400;
const CONNECTIONS = 40;

async function createTier(
  sql: Sql,
  capacity: number,
): Promise<{ eventId: string; tierId: string }> {
  const [event] = await sql<{ id: string }[]>`
    insert into events.events (title, currency, status) values ('Shard Night', 'usd', 'published')
    returning id`;
  const [tier] = await sql<{ id: string }[]>`
    insert into events.ticket_tiers (event_id, name, unit_amount, capacity, max_per_order)
    values (${event!.id}, 'Floor', 2500, ${capacity}, 10) returning id`;
  return { eventId: event!.id, tierId: tier!.id };
}

/** One buyer's claim of one seat: created, or the SQLSTATE it was refused with. */
async function claim(sql: Sql, eventId: string, tierId: string, buyer: number): Promise<string> {
  const op = `shard-${crypto.randomUUID()}`;
  try {
    const [row] = await sql<{ outcome: string }[]>`
      select outcome from public.claim_checkout(${op}, ${`checkout:create:${op}:${crypto.randomUUID()}`},
        repeat('a', 64), gen_random_uuid(), ${eventId}::uuid,
        ${
      sql.json([{ tierId, quantity: 1 }])
    }::jsonb, null, ${`buyer${buyer}@shards.example`}, null,
        'http://shop.test/ok', 'http://shop.test/cancel', 1920, 30)`;
    return row!.outcome;
  } catch (error) {
    if (error instanceof postgres.PostgresError) return error.code;
    throw error;
  }
}

/**
 * `BUYERS` buyers over `CONNECTIONS` connections at once; the tally of their answers. Nothing
 * frees seats here, so the seats taken only grow: a sold out (CK003) followed, on the same
 * connection, by a count below the capacity was said while a seat was free, and is tallied as
 * `CK003 with seats free` instead.
 */
async function onSale(eventId: string, tierId: string): Promise<Record<string, number>> {
  const connections = await openSeparateConnections(CONNECTIONS);
  const answers: Record<string, number> = {};
  let next = 0;
  try {
    await Promise.all(connections.map(async (sql) => {
      while (next < BUYERS) {
        let answer = await claim(sql, eventId, tierId, next++);
        if (answer === "CK003") {
          const [row] = await sql<{ taken: number; capacity: number }[]>`
            select private.tier_seats_taken(t.id)::int as taken, t.capacity
            from events.ticket_tiers t where t.id = ${tierId}`;
          if (row!.taken < row!.capacity) answer = "CK003 with seats free";
        }
        answers[answer] = (answers[answer] ?? 0) + 1;
      }
    }));
  } finally {
    await closeAll(connections);
  }
  return answers;
}

Deno.test(`a ${SEATS}-seat tier on 8 shards sold to ${BUYERS} concurrent buyers: exactly ${SEATS} created, the rest sold out`, async () => {
  const sql = openPool(2);
  try {
    const { eventId, tierId } = await createTier(sql, SEATS);
    const [shards] = await sql<{ n: number; allotted: number }[]>`
      select count(*)::int as n, sum(allotted)::int as allotted from private.tier_capacity where tier_id = ${tierId}`;
    assert.deepEqual(
      shards,
      { n: 8, allotted: SEATS },
      "the tier counts on 8 shards sharing its capacity",
    );

    const answers = await onSale(eventId, tierId);
    assert.deepEqual(answers, { created: SEATS, CK003: BUYERS - SEATS });

    const [counts] = await sql<{ orders: number; taken: number; recounted: number }[]>`
      select (select count(*)::int from public.orders o join public.order_items i on i.order_id = o.id
              where i.tier_id = ${tierId} and o.status = 'pending') as orders,
             private.tier_seats_taken(${tierId})::int as taken,
             private.tier_seats_recounted(${tierId})::int as recounted`;
    assert.deepEqual(counts, { orders: SEATS, taken: SEATS, recounted: SEATS });
    const over = await sql`
      select shard from private.tier_capacity c
      where c.tier_id = ${tierId} and private.tier_shard_taken(c.tier_id, c.shard, now()) > c.allotted`;
    assert.equal(over.length, 0, "no shard takes more than its allotment");
    const [allotted] = await sql<{ sum: number; shares: string }[]>`
      select sum(allotted)::int as sum, string_agg(allotted::text, ',' order by shard) as shares
      from private.tier_capacity where tier_id = ${tierId}`;
    assert.equal(allotted!.sum, SEATS, "the allotments still add up to the capacity");
    // The shards filled unevenly (orders land on them by their ids), so the even first division
    // (38 × 4 + 37 × 4) cannot have lasted: claims on full shards moved allotment.
    assert.notEqual(
      allotted!.shares,
      "38,38,38,38,37,37,37,37",
      // Failed once in about 20 runs (not reproduced since): say what the tier looked like.
      `the slow path divided the seats again (shares ${allotted!.shares}; seats per shard ${
        JSON.stringify(
          await sql`select shard, paid_seats, held_seats from private.tier_capacity
                    where tier_id = ${tierId} order by shard`,
        )
      })`,
    );
    assert.deepEqual(
      [...await sql`select * from public.check_tier_capacity() where tier_id = ${tierId}`],
      [],
    );
  } finally {
    await sql.end({ timeout: 5 });
  }
});

Deno.test("seats freed while a sharded tier sells out are sold again, never beyond its capacity", async () => {
  const sql = openPool(2);
  try {
    const { eventId, tierId } = await createTier(sql, SEATS);
    // Half the buyers at once; then, while the other half claim, 50 of the first holds end.
    const first = await onSale(eventId, tierId);
    assert.equal(first.created, SEATS, "the first wave sells out");
    const [answers] = await Promise.all([
      onSale(eventId, tierId),
      sql`update public.orders o set status = 'cancelled'
          where o.id in (select i.order_id from public.order_items i join public.orders x on x.id = i.order_id
                         where i.tier_id = ${tierId} and x.status = 'pending' order by i.order_id limit 50)`,
    ]);
    const created = answers.created ?? 0;
    assert.ok(created <= 50, `at most the 50 freed seats are sold again (${created})`);
    assert.equal(created + (answers.CK003 ?? 0), BUYERS, "every buyer is created or sold out");
    const [counts] = await sql<{ taken: number; recounted: number }[]>`
      select private.tier_seats_taken(${tierId})::int as taken,
             private.tier_seats_recounted(${tierId})::int as recounted`;
    assert.equal(counts!.taken, counts!.recounted);
    assert.equal(counts!.taken, SEATS - 50 + created, "every seat taken is one of a created claim");
    assert.ok(counts!.taken <= SEATS, "never beyond the capacity");
    assert.deepEqual(
      [...await sql`select * from public.check_tier_capacity() where tier_id = ${tierId}`],
      [],
    );
  } finally {
    await sql.end({ timeout: 5 });
  }
});

Deno.test("a payment whose transaction began before its hold lapsed is judged on the clock when it applies: no oversell", async () => {
  const sql = openPool(2);
  const connections = await openSeparateConnections(2);
  const [late, rival] = connections as [Sql, Sql];
  try {
    // A 2-seat tier, held by one pending order whose seats count for one more second.
    const { eventId, tierId } = await createTier(sql, 2);
    const op = `clock-${crypto.randomUUID()}`;
    const [held] = await sql<{ order_id: string }[]>`
      select order_id from public.claim_checkout(${op}, ${`checkout:create:${op}:${crypto.randomUUID()}`},
        repeat('a', 64), gen_random_uuid(), ${eventId}::uuid, ${
      sql.json([{ tierId, quantity: 2 }])
    }::jsonb, null, 'held@clock.example', null, 'http://shop.test/ok', 'http://shop.test/cancel',
        1920, 30)`;
    const orderId = held!.order_id;
    await sql`update public.orders set hold_expires_at = clock_timestamp() + interval '1 second',
                seats_held_until = clock_timestamp() + interval '1 second',
                stripe_checkout_session_id = ${`cs_clock_${orderId}`}
              where id = ${orderId}::uuid`;
    const [order] = await sql<{ amount_total: number }[]>`
      select amount_total from public.orders where id = ${orderId}::uuid`;

    // The webhook's transaction starts while the hold is live (now() is frozen there)…
    const result = await late.begin(async (tx) => {
      await tx`select now()`;
      await new Promise((r) => setTimeout(r, 1_500));
      // …meanwhile the hold lapsed and a rival bought a seat of the two.
      assert.equal(await claim(rival, eventId, tierId, 1), "created");
      const session = {
        id: `cs_clock_${orderId}`,
        object: "checkout.session",
        status: "complete",
        payment_status: "paid",
        amount_total: order!.amount_total,
        currency: "usd",
        client_reference_id: orderId,
        payment_intent: `pi_clock_${orderId}`,
        metadata: { order_id: orderId },
      };
      const [row] = await tx<{ outcome: string }[]>`
        select (public.settle_checkout_session(${tx.json(session)}::jsonb)).outcome`;
      return row!.outcome;
    });
    assert.equal(
      result,
      "capacity_conflict",
      "the late payment found its seats sold, not oversold",
    );
    const [taken] = await sql<{ n: number }[]>`
      select private.tier_seats_taken(${tierId}::uuid)::int as n`;
    assert.equal(taken!.n, 1, `the rival's seat only, never 3 of 2 (${taken!.n})`);
    assert.equal((await sql`select * from public.check_tier_capacity()`).length, 0);
  } finally {
    await closeAll(connections);
    await sql.end({ timeout: 5 });
  }
});

Deno.test("a claim in flight locks its counter shard only, not the tier's or any other shard's row: buyers of one tier share no lock of the tier", async () => {
  const sql = openPool(2);
  const connections = await openSeparateConnections(2);
  const [buyer, other] = connections as [Sql, Sql];
  try {
    const { eventId, tierId } = await createTier(sql, 10_000);
    const [shards] = await sql<{ n: number }[]>`
      select count(*)::int as n from private.tier_capacity where tier_id = ${tierId}`;
    assert.equal(shards!.n, 64, "a 10,000-seat tier counts on 64 shards");
    const rolledBack = new Error("rolled back on purpose");
    const ended = await buyer.begin(async (tx) => {
      assert.equal(await claim(tx as unknown as Sql, eventId, tierId, 1), "created");
      const [item] = await tx<{ shard: number }[]>`
        select h.shard from private.seat_holds h where h.tier_id = ${tierId}`;
      // FOR UPDATE NOWAIT fails at once on a row the claim holds in any mode (a foreign key's
      // KEY SHARE included): the tier's row and the other shards must be free.
      await other`select 1 from events.ticket_tiers where id = ${tierId} for update nowait`;
      const free = await other<{ shard: number }[]>`
        select shard from private.tier_capacity where tier_id = ${tierId} and shard <> ${
        item!.shard
      }
        order by shard for update nowait`;
      assert.equal(free.length, 63, "every other shard is free");
      await assert.rejects(
        other`select 1 from private.tier_capacity where tier_id = ${tierId} and shard = ${
          item!.shard
        }
              for update nowait`,
        (error: unknown) => error instanceof postgres.PostgresError && error.code === "55P03",
        "the claim's own shard is locked",
      );
      throw rolledBack; // nothing of the claim stays
    }).catch((error) => error);
    assert.equal(ended, rolledBack);
  } finally {
    await closeAll(connections);
    await sql.end({ timeout: 5 });
  }
});
