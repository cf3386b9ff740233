/**
 * Refunds on the one claim → call → record protocol (idempotency.ts runAttempt): the claim
 * reserves the amount against the order (see supabase/migrations/*_refunds.sql), the call is
 * `refunds.create` with the claim's key, the record applies Stripe's Refund to the order. Every
 * path that refunds (refund-order, cancel-event, reconciliation) goes through `makeRefund`.
 */
import type Stripe from "stripe";
import { makeStripeIdempotencyKey } from "./checkout-utils.ts";
import { type Sql, sqlState, toJson } from "./db.ts";
import { type ErrorCode, sqlFunctionError } from "./errors.ts";
import type { RequestContext } from "./http.ts";
import { runAttempt } from "./idempotency.ts";

/** The refund operation type; the Stripe key is `refund:create:<stable id>:<uuid>`. */
export const REFUND_OPERATION = "refund:create";

/** Who asked for a refund (public.refunds.source). */
export type RefundSource = "operator" | "cancellation" | "capacity_conflict";
/** Stripe's refund reasons. */
export type RefundReason = "requested_by_customer" | "duplicate" | "fraudulent";

/** The refund an armed claim must make at Stripe. */
export interface ArmedRefund {
  outcome: "created" | "takeover" | "retry" | "reconcile";
  operationId: string;
  stripeIdempotencyKey: string;
  leaseToken: string;
  orderId: string;
  paymentIntent: string;
  amount: number;
  reason: RefundReason | null;
  reconcileAttempts: number;
}

/** What claim_refund decided. */
export type RefundClaim =
  | ArmedRefund
  | { outcome: "replay"; responseStatus: number; responseBody: RefundResponse }
  | { outcome: "conflict" }
  | { outcome: "mismatch" };

/** The 201 body, built by record_refund and replayed byte for byte. */
export interface RefundResponse {
  refundId: string;
  orderId: string;
  amount: number;
  status: string;
  orderStatus: string;
}

/** Input of {@link claimRefund}. */
export interface RefundClaimInput {
  /** The stable id: the client's Idempotency-Key, or derived (cancel.<event>.<order>, conflict.<order>). */
  operationId: string;
  requestFingerprint: string;
  orderId: string;
  /** Minor units; absent means all that is still refundable. */
  amount?: number;
  reason?: RefundReason;
  source: RefundSource;
  leaseSeconds?: number;
  now?: Date;
}

interface RefundClaimRow {
  outcome: RefundClaim["outcome"];
  stripe_idempotency_key: string | null;
  lease_token: string | null;
  response_status: number | null;
  response_body: RefundResponse | null;
  operation_id: string | null;
  order_id: string | null;
  payment_intent: string | null;
  amount: number | null;
  reason: RefundReason | null;
  reconcile_attempts: number | null;
}

/** The refund SQL functions' SQLSTATEs, as API errors. */
const SQL_ERRORS: Record<string, ErrorCode> = {
  RF001: "order_not_found",
  RF002: "order_not_paid",
  RF003: "refund_exceeds_amount",
  RF005: "refund_in_doubt",
  "22023": "validation_failed",
};

/** The refund claim: idempotency claim and reservation of the amount, in one statement. */
export async function claimRefund(sql: Sql, input: RefundClaimInput): Promise<RefundClaim> {
  const leaseToken = crypto.randomUUID();
  const key = makeStripeIdempotencyKey(REFUND_OPERATION, input.operationId);
  const [row] = await sql<RefundClaimRow[]>`
    select * from public.claim_refund(${input.operationId}, ${key}, ${input.requestFingerprint},
      ${leaseToken}::uuid, ${input.orderId}::uuid, ${input.amount ?? null}::int,
      ${input.reason ?? null}, ${input.source}, ${input.leaseSeconds ?? 60}::int,
      coalesce(${input.now ?? null}::timestamptz, now()))`;
  if (!row) throw new Error("Cannot claim refund: the database returned no row");
  return refundClaimFromRow(row);
}

/**
 * Takes over refund attempts whose lease expired more than `staleSeconds` ago (see
 * claim_stuck_refunds): each comes back armed with its SAME key and reserved parameters.
 */
export async function claimStuckRefunds(
  sql: Sql,
  options: {
    staleSeconds: number;
    limit: number;
    leaseSeconds: number;
    /** Operation ids not to take again (already handled in this run). */
    exclude?: string[];
    now?: Date;
  },
): Promise<ArmedRefund[]> {
  const rows = await sql<RefundClaimRow[]>`
    select * from public.claim_stuck_refunds(${options.staleSeconds}::int, ${options.limit}::int,
      ${options.leaseSeconds}::int, coalesce(${options.now ?? null}::timestamptz, now()),
      ${options.exclude ?? []}::text[])`;
  return rows.map((row) => refundClaimFromRow({ ...row, outcome: "reconcile" }) as ArmedRefund);
}

/**
 * Orders whose payment found no seats (capacity_conflict) and still wait for their automatic
 * full refund, with the operation that makes it (`conflict.<order id>`); see
 * capacity_conflicts_to_refund.
 */
export async function capacityConflictsToRefund(
  sql: Sql,
  options: { limit: number; maxAttempts: number; exclude?: string[] },
): Promise<{ orderId: string; operationId: string }[]> {
  const rows = await sql<{ order_id: string; operation_id: string }[]>`
    select * from public.capacity_conflicts_to_refund(${options.limit}::int,
      ${options.maxAttempts}::int, ${options.exclude ?? []}::uuid[])`;
  return rows.map((row) => ({ orderId: row.order_id, operationId: row.operation_id }));
}

function refundClaimFromRow(row: RefundClaimRow): RefundClaim {
  switch (row.outcome) {
    case "replay":
      return {
        outcome: "replay",
        responseStatus: row.response_status ?? 201,
        responseBody: required(row.response_body),
      };
    case "conflict":
    case "mismatch":
      return { outcome: row.outcome };
    default:
      return {
        outcome: row.outcome,
        operationId: required(row.operation_id),
        stripeIdempotencyKey: required(row.stripe_idempotency_key),
        leaseToken: required(row.lease_token),
        orderId: required(row.order_id),
        paymentIntent: required(row.payment_intent),
        amount: required(row.amount),
        reason: row.reason,
        reconcileAttempts: row.reconcile_attempts ?? 0,
      };
  }
}

function required<T>(value: T | null): T {
  if (value === null) throw new Error("Cannot read refund claim: the database left a field empty");
  return value;
}

/** A refund SQL error as the API error it means, or the error itself. */
export function refundSqlError(error: unknown): unknown {
  return sqlFunctionError(error, sqlState(error), SQL_ERRORS) ?? error;
}

/** The database steps of a refund attempt; a test may wrap them to inject faults. */
export interface RefundStore {
  claim(input: RefundClaimInput): Promise<RefundClaim>;
  record(input: { operationId: string; leaseToken: string; refund: Stripe.Refund }): Promise<
    RefundResponse
  >;
  release(
    input: { operationId: string; leaseToken: string; keyConsumed: boolean; error?: string },
  ): Promise<string>;
}

/** The store over a real database. */
export function sqlRefundStore(sql: Sql): RefundStore {
  return {
    claim: (input) => claimRefund(sql, input),
    record: async ({ operationId, leaseToken, refund }) => {
      const [row] = await sql<{ body: RefundResponse }[]>`
        select public.record_refund(${operationId}, ${leaseToken}::uuid,
          ${sql.json(toJson(refund))}::jsonb) as body`;
      if (!row) throw new Error("Cannot record refund: the database returned no row");
      return row.body;
    },
    release: async ({ operationId, leaseToken, keyConsumed, error }) => {
      const [row] = await sql<{ status: string }[]>`
        select public.release_refund(${operationId}, ${leaseToken}::uuid, ${keyConsumed},
          ${error ?? null}) as status`;
      if (!row) throw new Error("Cannot release refund: the database returned no row");
      return row.status;
    },
  };
}

/**
 * Runs an armed refund attempt: `refunds.create` with the claim's key and reserved parameters
 * (a takeover sends exactly what the dead attempt sent, so Stripe hands back its refund), then
 * record. Returns the 201 body; Stripe's failures follow idempotency.ts's one rule.
 */
export async function makeRefund(
  deps: { store: RefundStore; stripe: Stripe },
  claim: ArmedRefund,
  context: RequestContext,
): Promise<RefundResponse> {
  const { operationId, leaseToken } = claim;
  let body: RefundResponse | undefined;
  await runAttempt<Stripe.Refund>({
    call: () =>
      deps.stripe.refunds.create({
        payment_intent: claim.paymentIntent,
        amount: claim.amount,
        ...(claim.reason ? { reason: claim.reason } : {}),
        metadata: { order_id: claim.orderId },
      }, { idempotencyKey: claim.stripeIdempotencyKey }),
    record: async (refund) => {
      body = await deps.store.record({ operationId, leaseToken, refund });
    },
    release: async (keyConsumed, reason) => {
      await deps.store.release({ operationId, leaseToken, keyConsumed, error: reason });
    },
  }, context);
  if (!body) throw new Error("Cannot refund: the record returned no body");
  return body;
}
