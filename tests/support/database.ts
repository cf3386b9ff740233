/**
 * Test access to the real database that scripts/test.sh started and migrated. Tests never
 * start their own Postgres: DATABASE_URL names the one the pipeline prepared.
 */
import { createSql, type Sql } from "../../supabase/functions/_shared/db.ts";

/** The database under test; fails loudly when the pipeline did not provide one. */
export function databaseUrl(): string {
  const url = Deno.env.get("DATABASE_URL");
  if (!url) throw new Error("DATABASE_URL is not set: run the tests through `npm test`");
  return url;
}

/** A pool to the database under test. */
export function openPool(max = 5): Sql {
  return createSql(databaseUrl(), { max });
}

/**
 * `count` clients with one connection each, already connected, so that statements sent to
 * them at once really run concurrently in separate backends.
 */
export async function openSeparateConnections(count: number): Promise<Sql[]> {
  const clients = Array.from({ length: count }, () => createSql(databaseUrl(), { max: 1 }));
  const pids = await Promise.all(
    clients.map(async (sql) =>
      (await sql<{ pid: number }[]>`select pg_backend_pid() as pid`)[0]?.pid
    ),
  );
  if (new Set(pids).size !== count) throw new Error("Expected one backend per client");
  return clients;
}

/** Closes every client. */
export async function closeAll(clients: Sql[]): Promise<void> {
  await Promise.all(clients.map((sql) => sql.end({ timeout: 5 })));
}

/** A fresh operation id, unique per test run, valid as a stable id. */
export function uniqueOperationId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID()}`;
}

/**
 * Reconciliation is global (it settles whatever the database holds): parks the attempts and
 * capacity conflicts other test files left behind on purpose, so that a test that reconciles
 * sees only its own work.
 */
export async function parkLeftoverWork(sql: Sql): Promise<void> {
  await sql`
    update public.stripe_idempotency_keys set status = 'failed', lease_token = null, lease_expires_at = null
    where status = 'in_progress' and operation_type in ('checkout:create', 'refund:create')`;
  await sql`
    update public.orders set status = 'expired', paid_at = null
    where status = 'capacity_conflict' and amount_refunded = 0`;
}
