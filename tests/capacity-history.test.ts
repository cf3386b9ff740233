/**
 * A checkout's cost does not grow with history. Not a timing: the shared buffers the claim (and
 * the webhook's late-payment path) touch, read from EXPLAIN (ANALYZE, BUFFERS), with the
 * database as it is and again after 50,000 more historical orders (paid, expired, cancelled;
 * half of them on the very tier being sold, half on another tier). A capacity count that scans
 * past orders touches every page of them; counters kept beside the tier do not.
 */
import assert from "node:assert/strict";
import { openPool } from "./support/database.ts";
import type { Sql } from "../supabase/functions/_shared/db.ts";

const HISTORY = 50_000;
/**
 * Buffers a claim may touch beyond the first measurement. A claim descends about a dozen B-tree
 * indexes of orders and order_items (inserts, key checks, lookups); growing from a nearly empty
 * database to 50,000 more orders deepens each by one or two levels. Counting past orders instead
 * costs their pages: about 1,700 buffers here.
 */
const SLACK = 40;

interface Tiers {
  eventId: string;
  hot: string;
  other: string;
}

async function createTiers(sql: Sql): Promise<Tiers> {
  const [event] = await sql<{ id: string }[]>`
    insert into events.events (title, currency, status) values ('History Night', 'usd', 'published')
    returning id`;
  const tiers = await sql<{ id: string; name: string }[]>`
    insert into events.ticket_tiers (event_id, name, unit_amount, capacity, max_per_order)
    values (${event!.id}, 'Hot', 2500, 10000000, 10), (${event!.id}, 'Other', 1000, 10000000, 10)
    returning id, name`;
  const id = (name: string) => tiers.find((t) => t.name === name)!.id;
  return { eventId: event!.id, hot: id("Hot"), other: id("Other") };
}

/** Shared buffers (hit + read) that one statement touched, planning included. */
async function buffersOf(sql: Sql, statement: string): Promise<number> {
  const [row] = await sql.unsafe<{ "QUERY PLAN": unknown }[]>(
    `explain (analyze, buffers, costs off, timing off, format json) ${statement}`,
  );
  const [plan] = row!["QUERY PLAN"] as {
    Plan: Record<string, number>;
    Planning?: Record<string, number>;
  }[];
  const used = (node: Record<string, number> | undefined) =>
    (node?.["Shared Hit Blocks"] ?? 0) + (node?.["Shared Read Blocks"] ?? 0);
  return used(plan!.Plan) + used(plan!.Planning);
}

function claimStatement(tiers: Tiers, op: string): string {
  const items = JSON.stringify([{ tierId: tiers.hot, quantity: 1 }]);
  return `select * from public.claim_checkout('${op}', 'checkout:create:${op}:${crypto.randomUUID()}',
    repeat('c', 64), gen_random_uuid(), '${tiers.eventId}', '${items}'::jsonb, null,
    '${op}@history.example', null, 'http://shop.test/ok', 'http://shop.test/cancel', 1920, 30)`;
}

/** The fewest buffers of `runs` claims on the hot tier, after a warm-up on the same connection. */
async function claimBuffers(sql: Sql, tiers: Tiers, runs = 5): Promise<number> {
  const counts: number[] = [];
  for (let i = 0; i < runs + 3; i++) {
    const op = `hist-${crypto.randomUUID()}`;
    const used = await buffersOf(sql, claimStatement(tiers, op));
    if (i >= 3) counts.push(used);
  }
  return Math.min(...counts);
}

/**
 * A payment that lands after its order's hold ran out: the webhook checks the tier still has
 * room (order_seats_unavailable). The fewest buffers of `runs` such events.
 */
async function latePaymentBuffers(sql: Sql, tiers: Tiers, runs = 4): Promise<number> {
  const counts: number[] = [];
  for (let i = 0; i < runs + 2; i++) {
    const op = `late-${crypto.randomUUID()}`;
    await sql.unsafe(claimStatement(tiers, op));
    const [order] = await sql<{ id: string; amount: number }[]>`
      update public.orders
      set hold_expires_at = now() - interval '2 hours', seats_held_until = now() - interval '1 hour'
      where checkout_operation_id = ${op}
      returning id, amount_total as amount`;
    const session = {
      id: `cs_test_${crypto.randomUUID().replaceAll("-", "")}`,
      object: "checkout.session",
      client_reference_id: order!.id,
      metadata: { order_id: order!.id },
      amount_total: order!.amount,
      currency: "usd",
      payment_status: "paid",
      status: "complete",
    };
    const payload = JSON.stringify({
      type: "checkout.session.completed",
      data: { object: session },
    }).replaceAll("'", "''");
    const used = await buffersOf(
      sql,
      `select * from public.process_stripe_webhook_event('evt_${
        crypto.randomUUID().replaceAll("-", "")
      }',
        'checkout.session.completed', false, '${payload}'::jsonb)`,
    );
    const [after] = await sql<{ status: string }[]>`
      select status from public.orders where id = ${order!.id}`;
    assert.equal(after?.status, "paid", "the late payment found its seats");
    if (i >= 2) counts.push(used);
  }
  return Math.min(...counts);
}

/** `count` finished orders, spread over both tiers and the three final statuses. */
async function addHistory(sql: Sql, tiers: Tiers, count: number): Promise<void> {
  await sql`
    with made as (
      insert into public.orders (event_id, guest_email, status, currency, amount_total,
                                 hold_expires_at, seats_held_until, paid_at, created_at,
                                 checkout_operation_id)
      select ${tiers.eventId}, 'old' || g || '@history.example',
             (array['paid', 'expired', 'cancelled'])[1 + g % 3], 'usd', 2500,
             now() - interval '400 days' + g * interval '1 minute',
             now() - interval '399 days' + g * interval '1 minute',
             case when g % 3 = 0 then now() - interval '400 days' + g * interval '1 minute' end,
             now() - interval '400 days' + g * interval '1 minute',
             'history-' || g
      from generate_series(1, ${count}::int) g
      returning id, checkout_operation_id
    )
    insert into public.order_items (order_id, tier_id, shard, product_name, quantity, unit_amount)
    select m.id, c.tier_id, private.order_capacity_shard(m.id, c.shards), 'History Night — old', 1, 2500
    from made m
    join private.tier_capacity c on c.shard = 0 and c.tier_id =
      case when right(m.checkout_operation_id, 1)::int % 2 = 0 then ${tiers.hot}::uuid
           else ${tiers.other}::uuid end`;
  await sql`analyze public.orders`;
  await sql`analyze public.order_items`;
}

Deno.test("claim_checkout touches as many buffers with 50,000 more historical orders as before", async () => {
  const sql = openPool(1);
  const tiers = await createTiers(sql);
  try {
    const claimBefore = await claimBuffers(sql, tiers);
    const lateBefore = await latePaymentBuffers(sql, tiers);
    await addHistory(sql, tiers, HISTORY);
    const claimAfter = await claimBuffers(sql, tiers);
    const lateAfter = await latePaymentBuffers(sql, tiers);
    console.log(
      `buffers per claim ${claimBefore} → ${claimAfter}, per late payment ${lateBefore} → ${lateAfter}`,
    );
    assert.ok(
      claimAfter <= claimBefore + SLACK,
      `a claim touched ${claimAfter} buffers after ${HISTORY} historical orders, ${claimBefore} before`,
    );
    assert.ok(
      lateAfter <= lateBefore + SLACK,
      `a late payment touched ${lateAfter} buffers after ${HISTORY} historical orders, ${lateBefore} before`,
    );
  } finally {
    // The history stays: the rest of the suite runs on a database that has some.
    await sql.end({ timeout: 5 });
  }
});
