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

/**
 * The pg_cron jobs that delete in batches: the table each deletes from, the column that tells a
 * test's rows apart, and the prefix those rows' values start with (before a random part).
 */
const BATCHED_JOBS = {
  "cleanup-expired-idempotency-keys": {
    table: "public.stripe_idempotency_keys",
    column: "operation_id",
    prefix: "cron-batches-",
  },
  "prune-stripe-webhook-events": {
    table: "public.stripe_webhook_events",
    column: "stripe_event_id",
    prefix: "evt_cronbatches_",
  },
};

/** The rows a test gives a job: `total` of them, their key column's value starting with `prefix`. */
interface TestRows {
  prefix: string;
  total: number;
}

/**
 * Runs `job` as pg_cron does, on `total` rows that `insert` adds (all old enough to go first), and
 * asserts that another connection saw some but not all of them gone after the job's first commit,
 * and all of them gone after the run.
 */
async function assertCommitsPerBatch(
  job: keyof typeof BATCHED_JOBS,
  test: { total: number; insert: (sql: Sql, rows: TestRows) => Promise<unknown> },
): Promise<void> {
  const { table, column, prefix } = BATCHED_JOBS[job];
  const rows: TestRows = {
    prefix: `${prefix}${crypto.randomUUID().replaceAll("-", "")}_`,
    total: test.total,
  };
  // Only this file's constants are spliced into the SQL; the rows' prefix is a parameter.
  const ours = `${table} where ${column} like $1`;
  const like = [`${rows.prefix}%`];
  const [sql] = await openSeparateConnections(1) as [Sql];
  try {
    const command = await jobCommand(sql, job);
    await test.insert(sql, rows);
    const count = async (db: Sql) => {
      const [row] = await db.unsafe<{ n: number }[]>(
        `select count(*)::int as n from ${ours}`,
        like,
      );
      return row!.n;
    };
    const { midRun, after } = await remainingAfterFirstCommit(command, table, count);
    assert.ok(
      midRun > 0 && midRun < rows.total,
      `after the first commit some rows are gone and some remain (${midRun} of ${rows.total})`,
    );
    assert.equal(after, 0, "the run deletes all of them");
  } finally {
    await sql.unsafe(`delete from ${ours}`, like);
    await closeAll([sql]);
  }
}

Deno.test("the idempotency cleanup job commits after each batch, not once at the end", () =>
  assertCommitsPerBatch("cleanup-expired-idempotency-keys", {
    total: 25_000, // the job's default batch is 10,000
    // Expired long before anything else in the table, so the job's first batches are these.
    insert: (sql, { prefix, total }) =>
      sql`
        insert into public.stripe_idempotency_keys (operation_type, operation_id,
          stripe_idempotency_key, request_fingerprint, status, response_status, response_body,
          created_at, updated_at, expires_at)
        select 'checkout:create', ${prefix} || g, 'checkout:create:' || ${prefix} || g || ':' ||
               gen_random_uuid(), repeat('a', 64), 'completed', 201, '{}'::jsonb,
               '2001-01-01', '2001-01-01', '2001-01-02'::timestamptz + g * interval '1 ms'
        from generate_series(1, ${total}) g`,
  }));

Deno.test("the webhook retention job commits after each batch, not once at the end", () =>
  assertCommitsPerBatch("prune-stripe-webhook-events", {
    total: 2_500, // the job's default batch is 1,000
    // Processed long ago: past the 90 days after which the job deletes processed events.
    insert: (sql, { prefix, total }) =>
      sql`
        insert into public.stripe_webhook_events (stripe_event_id, type, payload, received_at,
          processed_at, attempts)
        select ${prefix} || g, 'customer.updated', '{"email": "ada@example.com"}'::jsonb,
               '2001-01-01', '2001-01-01'::timestamptz + g * interval '1 ms', 1
        from generate_series(1, ${total}) g`,
  }));
