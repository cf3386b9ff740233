/**
 * The pg_cron jobs, run exactly as pg_cron runs them (the command stored in cron.job, at top
 * level on a connection of its own), commit after each batch: another connection sees the
 * backlog shrink while the run is still going, so one run never holds one huge transaction.
 */
import assert from "node:assert/strict";
import type { Sql } from "../supabase/functions/_shared/db.ts";
import { closeAll, openSeparateConnections } from "./support/database.ts";

async function jobCommand(sql: Sql, name: string): Promise<string> {
  const [job] = await sql<{ command: string }[]>`
    select command from cron.job where jobname = ${name}`;
  assert.ok(job, `the pg_cron job ${name} exists`);
  return job.command;
}

/** Polls from a connection outside any transaction (pg_stat_activity is a per-transaction snapshot). */
async function waitUntilWaitingForLock(sql: Sql, pid: number, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const [row] = await sql<{ waiting: boolean }[]>`
      select coalesce(bool_or(wait_event_type = 'Lock'), false) as waiting
      from pg_stat_activity where pid = ${pid}`;
    if (row?.waiting) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`${what} never waited for the table lock`);
}

async function backendPid(sql: Sql): Promise<number> {
  const [row] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
  return row!.pid;
}

/**
 * Runs `command` on its own connection while the table is locked in SHARE mode, and queues a
 * second SHARE lock behind it. Each batch of the job needs ROW EXCLUSIVE, so the queued lock is
 * granted as soon as the job's first transaction ends: if the job commits per batch, that is
 * after its first batch, with rows still left; if it runs in one transaction, only at its end.
 * Returns how many rows `remaining` counted at that moment, and after the run.
 */
async function remainingAfterFirstCommit(
  command: string,
  table: string,
  remaining: (sql: Sql) => Promise<number>,
): Promise<{ midRun: number; after: number }> {
  const [job, blocker, observer, monitor] = await openSeparateConnections(4) as [
    Sql,
    Sql,
    Sql,
    Sql,
  ];
  try {
    const jobPid = await backendPid(job);
    const observerPid = await backendPid(observer);
    await blocker.unsafe("begin");
    await blocker.unsafe(`lock table ${table} in share mode`);
    const run = job.unsafe(command).then(() => null, (error: Error) => error);
    await waitUntilWaitingForLock(monitor, jobPid, "the job");
    await observer.unsafe("begin");
    // A postgres.js query is sent once it is awaited or then-ed.
    const observed = observer.unsafe(`lock table ${table} in share mode`).then(() => {});
    await waitUntilWaitingForLock(monitor, observerPid, "the observer");
    await blocker.unsafe("commit");
    await observed;
    const midRun = await remaining(observer);
    await observer.unsafe("commit");
    const failure = await run;
    assert.equal(failure, null, `the job failed: ${failure?.message}`);
    return { midRun, after: await remaining(observer) };
  } finally {
    await closeAll([job, blocker, observer, monitor]);
  }
}

Deno.test("the idempotency cleanup job commits after each batch, not once at the end", async () => {
  const [sql] = await openSeparateConnections(1) as [Sql];
  const prefix = `cron-batches-${crypto.randomUUID()}-`;
  const total = 25_000; // the job's default batch is 10,000
  try {
    const command = await jobCommand(sql, "cleanup-expired-idempotency-keys");
    // Expired long before anything else in the table, so the job's first batches are these.
    await sql`
      insert into public.stripe_idempotency_keys (operation_type, operation_id,
        stripe_idempotency_key, request_fingerprint, status, response_status, response_body,
        created_at, updated_at, expires_at)
      select 'checkout:create', ${prefix} || g, 'checkout:create:' || ${prefix} || g || ':' ||
             gen_random_uuid(), repeat('a', 64), 'completed', 201, '{}'::jsonb,
             '2001-01-01', '2001-01-01', '2001-01-02'::timestamptz + g * interval '1 ms'
      from generate_series(1, ${total}) g`;
    const count = async (db: Sql) => {
      const [row] = await db<{ n: number }[]>`
        select count(*)::int as n from public.stripe_idempotency_keys
        where operation_id like ${prefix + "%"}`;
      return row!.n;
    };
    const { midRun, after } = await remainingAfterFirstCommit(
      command,
      "public.stripe_idempotency_keys",
      count,
    );
    assert.ok(
      midRun > 0 && midRun < total,
      `after the first commit some rows are gone and some remain (${midRun} of ${total})`,
    );
    assert.equal(after, 0, "the run deletes all of them");
  } finally {
    await sql`delete from public.stripe_idempotency_keys where operation_id like ${prefix + "%"}`;
    await closeAll([sql]);
  }
});

Deno.test("the webhook retention job commits after each batch, not once at the end", async () => {
  const [sql] = await openSeparateConnections(1) as [Sql];
  const prefix = `evt_cronbatches_${crypto.randomUUID().replaceAll("-", "")}_`;
  const total = 2_500; // the job's default batch is 1,000
  try {
    const command = await jobCommand(sql, "prune-stripe-webhook-events");
    // Processed long ago: past the 90 days after which the job deletes processed events.
    await sql`
      insert into public.stripe_webhook_events (stripe_event_id, type, payload, received_at,
        processed_at, attempts)
      select ${prefix} || g, 'customer.updated', '{"email": "ada@example.com"}'::jsonb,
             '2001-01-01', '2001-01-01'::timestamptz + g * interval '1 ms', 1
      from generate_series(1, ${total}) g`;
    const count = async (db: Sql) => {
      const [row] = await db<{ n: number }[]>`
        select count(*)::int as n from public.stripe_webhook_events
        where stripe_event_id like ${prefix + "%"}`;
      return row!.n;
    };
    const { midRun, after } = await remainingAfterFirstCommit(
      command,
      "public.stripe_webhook_events",
      count,
    );
    assert.ok(
      midRun > 0 && midRun < total,
      `after the first commit some rows are gone and some remain (${midRun} of ${total})`,
    );
    assert.equal(after, 0, "the run deletes all of them");
  } finally {
    await sql`delete from public.stripe_webhook_events where stripe_event_id like ${prefix + "%"}`;
    await closeAll([sql]);
  }
});
