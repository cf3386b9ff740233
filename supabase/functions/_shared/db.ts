/**
 * Postgres access for the idempotency protocol: one statement per protocol step, each a call of
 * a SQL function that owns the atomicity (see supabase/migrations/*_stripe_idempotency_keys.sql).
 * Functions take a postgres.js `Sql` so tests pass a client to the real database.
 */
import postgres from "postgres";

/** A postgres.js client (a pool) or a reserved connection. */
export type Sql = postgres.Sql;

/** Options for {@link createSql}. */
export interface SqlOptions {
  /** Pool size of this process. */
  max?: number;
  /** false through Supabase's transaction pooler (port 6543), which cannot keep prepared statements. */
  prepare?: boolean;
}

/** Opens a pool to `url`; only an `index.ts` or a test harness calls it. */
export function createSql(url: string, options: SqlOptions = {}): Sql {
  return postgres(url, {
    max: options.max ?? 5,
    prepare: options.prepare ?? true,
    idle_timeout: 20,
    connect_timeout: 10,
    // Notices (e.g. "already exists") are not errors; keep them out of the function logs.
    onnotice: () => {},
  });
}

/** What a claim decided; see claim_stripe_idempotency. */
export type ClaimOutcome = "created" | "replay" | "conflict" | "takeover" | "retry" | "mismatch";

/** Input of {@link claimOperation}. */
export interface ClaimInput {
  operationType: string;
  operationId: string;
  /** A freshly made key; used only when the claim arms a new key (created, retry). */
  stripeIdempotencyKey: string;
  requestFingerprint: string;
  leaseToken: string;
  leaseSeconds: number;
  metadata?: Record<string, unknown>;
  /** Moves the database's clock, for tests. */
  now?: Date;
}

/** The row returned by claim_stripe_idempotency; fields that are not the caller's are null. */
export interface ClaimResult {
  outcome: ClaimOutcome;
  stripeIdempotencyKey: string | null;
  leaseToken: string | null;
  leaseExpiresAt: Date | null;
  attempt: number | null;
  stripeResourceId: string | null;
  responseStatus: number | null;
  responseBody: unknown;
  metadata: Record<string, unknown> | null;
}

interface ClaimRow {
  outcome: ClaimOutcome;
  stripe_idempotency_key: string | null;
  lease_token: string | null;
  lease_expires_at: Date | null;
  attempt: number | null;
  stripe_resource_id: string | null;
  response_status: number | null;
  response_body: unknown;
  metadata: Record<string, unknown> | null;
}

/** Claims an operation in one statement: arms an attempt for the caller or says what exists. */
export async function claimOperation(sql: Sql, input: ClaimInput): Promise<ClaimResult> {
  const [row] = await sql<ClaimRow[]>`
    select * from public.claim_stripe_idempotency(
      ${input.operationType}, ${input.operationId}, ${input.stripeIdempotencyKey},
      ${input.requestFingerprint}, ${input.leaseToken}::uuid, ${input.leaseSeconds}::int,
      ${sql.json(toJson(input.metadata ?? {}))}::jsonb,
      coalesce(${input.now ?? null}::timestamptz, now()))`;
  if (!row) throw new Error("Cannot claim operation: the database returned no row");
  return {
    outcome: row.outcome,
    stripeIdempotencyKey: row.stripe_idempotency_key,
    leaseToken: row.lease_token,
    leaseExpiresAt: row.lease_expires_at,
    attempt: row.attempt,
    stripeResourceId: row.stripe_resource_id,
    responseStatus: row.response_status,
    responseBody: row.response_body,
    metadata: row.metadata,
  };
}

/** Input of {@link recordOperation}. */
export interface RecordInput {
  operationType: string;
  operationId: string;
  leaseToken: string;
  stripeResourceId: string | null;
  responseStatus: number;
  responseBody: unknown;
  metadata?: Record<string, unknown>;
  now?: Date;
}

/** Completes the caller's attempt; raises SI001 when it lost the lease, SI002 when already completed. */
export async function recordOperation(sql: Sql, input: RecordInput): Promise<void> {
  await sql`
    select 1 from public.record_stripe_idempotency(
      ${input.operationType}, ${input.operationId}, ${input.leaseToken}::uuid,
      ${input.stripeResourceId}, ${input.responseStatus}::int,
      ${sql.json(toJson(input.responseBody))}::jsonb,
      ${input.metadata ? sql.json(toJson(input.metadata)) : null}::jsonb,
      coalesce(${input.now ?? null}::timestamptz, now()))`;
}

/** Input of {@link releaseOperation}. */
export interface ReleaseInput {
  operationType: string;
  operationId: string;
  leaseToken: string;
  /** Stripe answered under the key (the key is burnt); false after a timeout or a dropped connection. */
  keyConsumed: boolean;
  error?: string;
  now?: Date;
}

/** Ends the caller's failed attempt; returns the row's new status. */
export async function releaseOperation(sql: Sql, input: ReleaseInput): Promise<string> {
  const [row] = await sql<{ status: string }[]>`
    select public.release_stripe_idempotency(
      ${input.operationType}, ${input.operationId}, ${input.leaseToken}::uuid,
      ${input.keyConsumed}, ${input.error ?? null},
      coalesce(${input.now ?? null}::timestamptz, now())) as status`;
  if (!row) throw new Error("Cannot release operation: the database returned no row");
  return row.status;
}

/** SQLSTATEs raised by the protocol functions. */
export const SQLSTATE = {
  leaseNotHeld: "SI001",
  alreadyCompleted: "SI002",
  noSuchOperation: "P0002",
  /** lock_not_available: a statement waited longer than its lock_timeout. */
  lockTimeout: "55P03",
} as const;

/** The SQLSTATE of a database error, if `error` is one. */
export function sqlState(error: unknown): string | undefined {
  if (error instanceof postgres.PostgresError) return error.code;
  return undefined;
}

/** One line of a checkout as Stripe must show it: name and price snapshotted from the tier. */
export interface CheckoutLine {
  tier_id: string;
  product_name: string;
  unit_amount: number;
  quantity: number;
}

/** Input of {@link claimCheckout}. */
export interface CheckoutClaimInput {
  operationId: string;
  stripeIdempotencyKey: string;
  requestFingerprint: string;
  leaseToken: string;
  eventId: string;
  items: { tierId: string; quantity: number }[];
  userId: string | null;
  guestEmail: string | null;
  guestName: string | null;
  successUrl: string;
  cancelUrl: string;
  holdSeconds: number;
  /** How long after expires_at the seats still count when Stripe has not said the session ended. */
  holdGraceSeconds?: number;
  leaseSeconds: number;
  now?: Date;
  /** The client's address, for the per-address hold limit. */
  clientAddress?: string | null;
  /** Hold-flooding limits; absent or null means unlimited. */
  limits?: HoldLimits;
  /**
   * The longest the claim waits for a lock (a hot tier's counter, the operation's row), in ms;
   * beyond it the claim fails with SQLSTATE 55P03 and writes nothing. Absent: no bound.
   */
  lockTimeoutMs?: number;
}

/** How many pending checkouts one buyer / one client address may hold within a window. */
export interface HoldLimits {
  maxPendingPerBuyer: number | null;
  maxPendingPerAddress: number | null;
  windowSeconds: number;
}

/** The order an armed claim is for: exactly what the Stripe call must describe. */
export interface ClaimedOrder {
  orderId: string;
  eventId: string;
  currency: string;
  amountTotal: number;
  holdExpiresAt: Date;
  lines: CheckoutLine[];
  successUrl: string;
  cancelUrl: string;
  /** The guest's email (Stripe's customer_email); null for signed-in buyers. */
  customerEmail: string | null;
}

/** An attempt the caller now holds: call Stripe with the key, then record or release. */
export interface ArmedClaim {
  outcome: "created" | "takeover" | "retry" | "renew" | "reconcile";
  operationId: string;
  stripeIdempotencyKey: string;
  leaseToken: string;
  leaseExpiresAt: Date;
  attempt: number;
  /** Reconciliation runs that took this attempt over, this one included. */
  reconcileAttempts: number;
  order: ClaimedOrder;
}

/** What claim_checkout decided; see the SQL function for each outcome. */
export type CheckoutClaim =
  | ArmedClaim
  | { outcome: "replay"; responseStatus: number; responseBody: unknown; orderId: string }
  | { outcome: "conflict"; leaseExpiresAt: Date | null }
  | { outcome: "mismatch" }
  | { outcome: "paid"; orderId: string }
  /** Past the session's expires_at with no word from Stripe: ask Stripe about this session. */
  | { outcome: "verify"; orderId: string; stripeSessionId: string | null };

interface CheckoutClaimRow {
  outcome: CheckoutClaim["outcome"];
  stripe_idempotency_key: string | null;
  lease_token: string | null;
  lease_expires_at: Date | null;
  attempt: number | null;
  response_status: number | null;
  response_body: unknown;
  order_id: string | null;
  event_id: string | null;
  currency: string | null;
  amount_total: number | null;
  hold_expires_at: Date | null;
  lines: CheckoutLine[] | null;
  success_url: string | null;
  cancel_url: string | null;
  customer_email: string | null;
  operation_id: string | null;
  stripe_session_id: string | null;
  reconcile_attempts: number | null;
}

/**
 * The items as JSON without toJson's copy: they were validated (a UUID and an integer each), so
 * no string in them can hold what jsonb refuses. Every checkout sends them, replays included.
 */
function itemsJson(items: CheckoutClaimInput["items"]): postgres.JSONValue {
  return items.map((i) => ({ tierId: i.tierId, quantity: i.quantity }));
}

/** The checkout claim: idempotency claim, order and seat hold, in one statement. */
export async function claimCheckout(sql: Sql, input: CheckoutClaimInput): Promise<CheckoutClaim> {
  const limits = input.limits;
  const [row] = await sql<CheckoutClaimRow[]>`
    select * from public.claim_checkout(
      ${input.operationId}, ${input.stripeIdempotencyKey}, ${input.requestFingerprint},
      ${input.leaseToken}::uuid, ${input.eventId}::uuid, ${sql.json(itemsJson(input.items))}::jsonb,
      ${input.userId}::uuid, ${input.guestEmail}, ${input.guestName},
      ${input.successUrl}, ${input.cancelUrl}, ${input.holdSeconds}::int, ${input.leaseSeconds}::int,
      coalesce(${input.now ?? null}::timestamptz, now()), ${input.clientAddress ?? null}::inet,
      ${limits?.maxPendingPerBuyer ?? null}::int, ${limits?.maxPendingPerAddress ?? null}::int,
      ${limits?.windowSeconds ?? 1800}::int, ${input.holdGraceSeconds ?? 3600}::int,
      ${input.lockTimeoutMs ?? null}::int)`;
  if (!row) throw new Error("Cannot claim checkout: the database returned no row");
  return checkoutClaimFromRow(row);
}

function checkoutClaimFromRow(row: CheckoutClaimRow): CheckoutClaim {
  switch (row.outcome) {
    case "replay":
      return {
        outcome: "replay",
        responseStatus: row.response_status ?? 200,
        responseBody: row.response_body,
        orderId: required(row.order_id),
      };
    case "conflict":
      return { outcome: "conflict", leaseExpiresAt: row.lease_expires_at };
    case "mismatch":
      return { outcome: "mismatch" };
    case "paid":
      return { outcome: "paid", orderId: required(row.order_id) };
    case "verify":
      return {
        outcome: "verify",
        orderId: required(row.order_id),
        stripeSessionId: row.stripe_session_id,
      };
    default:
      return armedClaimFromRow(row, row.outcome);
  }
}

function armedClaimFromRow(row: CheckoutClaimRow, outcome: ArmedClaim["outcome"]): ArmedClaim {
  return {
    outcome,
    operationId: required(row.operation_id),
    stripeIdempotencyKey: required(row.stripe_idempotency_key),
    leaseToken: required(row.lease_token),
    leaseExpiresAt: required(row.lease_expires_at),
    attempt: required(row.attempt),
    reconcileAttempts: row.reconcile_attempts ?? 0,
    order: {
      orderId: required(row.order_id),
      eventId: required(row.event_id),
      currency: required(row.currency),
      amountTotal: required(row.amount_total),
      holdExpiresAt: required(row.hold_expires_at),
      lines: required(row.lines),
      successUrl: required(row.success_url),
      cancelUrl: required(row.cancel_url),
      customerEmail: row.customer_email,
    },
  };
}

/** The SQL functions fill every field of the outcomes above; anything else is a bug. */
function required<T>(value: T | null): T {
  if (value === null) throw new Error("Cannot read claim: the database left a field empty");
  return value;
}

/** Completes a checkout attempt and links the session to its order, in one statement. */
export async function recordCheckout(
  sql: Sql,
  input: {
    operationId: string;
    leaseToken: string;
    sessionId: string;
    responseBody: unknown;
    now?: Date;
  },
): Promise<void> {
  await sql`
    select public.record_checkout(${input.operationId}, ${input.leaseToken}::uuid, ${input.sessionId},
      ${sql.json(toJson(input.responseBody))}::jsonb, coalesce(${
    input.now ?? null
  }::timestamptz, now()))`;
}

/** Ends a failed checkout attempt (see release_checkout); returns the new status. */
export async function releaseCheckout(
  sql: Sql,
  input: {
    operationId: string;
    leaseToken: string;
    keyConsumed: boolean;
    error?: string;
    now?: Date;
  },
): Promise<string> {
  const [row] = await sql<{ status: string }[]>`
    select public.release_checkout(${input.operationId}, ${input.leaseToken}::uuid, ${input.keyConsumed},
      ${input.error ?? null}, coalesce(${input.now ?? null}::timestamptz, now())) as status`;
  if (!row) throw new Error("Cannot release checkout: the database returned no row");
  return row.status;
}

/** What processing a webhook event did; see process_stripe_webhook_event. */
export interface WebhookResult {
  outcome: string;
  orderId: string | null;
  detail: string | null;
}

/**
 * Stores a verified Stripe event once and applies it once (one statement, one transaction).
 * `related` are objects the endpoint fetched from Stripe for it (charge.refunded:
 * `{ refunds: [...] }`, the charge's refunds, which the event no longer embeds).
 */
export async function processWebhookEvent(
  sql: Sql,
  event: {
    id: string;
    type: string;
    livemode: boolean;
    payload: unknown;
    related?: Record<string, unknown>;
    now?: Date;
  },
): Promise<WebhookResult> {
  const related = event.related === undefined ? null : sql.json(toJson(event.related));
  const [row] = await sql<{ outcome: string; order_id: string | null; detail: string | null }[]>`
    select * from public.process_stripe_webhook_event(${event.id}, ${event.type}, ${event.livemode},
      ${sql.json(toJson(event.payload))}::jsonb, coalesce(${
    event.now ?? null
  }::timestamptz, now()), ${related}::jsonb)`;
  if (!row) throw new Error("Cannot process webhook event: the database returned no row");
  return { outcome: row.outcome, orderId: row.order_id, detail: row.detail };
}

/**
 * Applies what a retrieved Checkout Session says to its order (see settle_checkout_session): the
 * same state change as the matching webhook event, whichever path hears Stripe first.
 */
export async function settleCheckoutSession(
  sql: Sql,
  session: unknown,
  now?: Date,
): Promise<WebhookResult> {
  const [row] = await sql<{ outcome: string; order_id: string | null; detail: string | null }[]>`
    select * from public.settle_checkout_session(${sql.json(toJson(session))}::jsonb,
      coalesce(${now ?? null}::timestamptz, now()))`;
  if (!row) throw new Error("Cannot settle checkout session: the database returned no row");
  return { outcome: row.outcome, orderId: row.order_id, detail: row.detail };
}

/** Checkout attempts still stuck for more than `staleSeconds`. */
export async function countStuckCheckouts(
  sql: Sql,
  options: { staleSeconds: number; now?: Date },
): Promise<number> {
  const [row] = await sql<{ n: number }[]>`
    select count(*)::int as n from public.stripe_idempotency_keys k
    where k.status = 'in_progress' and k.operation_type = 'checkout:create'
      and k.order_id is not null -- as claim_stuck_checkouts counts them
      and k.lease_expires_at < coalesce(${options.now ?? null}::timestamptz, now())
        - make_interval(secs => ${options.staleSeconds}::int)`;
  return row?.n ?? 0;
}

/** Takes over checkout attempts stuck for more than `staleSeconds` (see claim_stuck_checkouts). */
export async function claimStuckCheckouts(
  sql: Sql,
  options: {
    staleSeconds: number;
    limit: number;
    leaseSeconds: number;
    now?: Date;
    /** Operation ids not to take again (already handled in this run). */
    exclude?: string[];
  },
): Promise<ArmedClaim[]> {
  const rows = await sql<CheckoutClaimRow[]>`
    select * from public.claim_stuck_checkouts(${options.staleSeconds}::int, ${options.limit}::int,
      ${options.leaseSeconds}::int, coalesce(${options.now ?? null}::timestamptz, now()),
      ${options.exclude ?? []}::text[])`;
  return rows.map((row) => armedClaimFromRow(row, "reconcile"));
}

// postgres.js types sql.json's argument as its own JSON type; a JSON round trip gives exactly
// what jsonb will store (undefined fields dropped) and satisfies that type. jsonb cannot hold
// U+0000 nor a lone surrogate, so those become U+FFFD rather than failing the whole statement
// (a signed Stripe event carrying one would otherwise be refused for three days of retries).
export function toJson(value: unknown): postgres.JSONValue {
  return JSON.parse(
    JSON.stringify(value ?? null),
    (_key, field) => typeof field === "string" ? jsonbSafe(field) : field,
  ) as postgres.JSONValue;
}

function jsonbSafe(text: string): string {
  return text.replaceAll("\u0000", "\uFFFD").toWellFormed();
}
