/**
 * POST /functions/v1/refund-order (operators): parse (operator credential, Idempotency-Key,
 * body) → claim (reserves the amount against the order) → answer an existing operation, or make
 * the refund at Stripe with the claim's key and record it. A pure function of (Request, deps).
 */
import type Stripe from "stripe";
import type { CallerCheck } from "./auth.ts";
import { fingerprint } from "./checkout-utils.ts";
import { apiError } from "./errors.ts";
import { canonicalJsonResponse, envelope, readJsonBody, type RequestLog } from "./http.ts";
import { answerSettled } from "./idempotency.ts";
import { makeRefund, REFUND_OPERATION, refundSqlError, type RefundStore } from "./refunds.ts";
import { parseBody, refundOrderBody, requireIdempotencyKey } from "./schemas.ts";

/** What the refund-order handler needs. */
export interface RefundOrderDeps {
  store: RefundStore;
  stripe: Stripe;
  /** The operator check (operatorCaller): a secret key, or the legacy service_role key. */
  authenticate: CallerCheck;
  /** How long an attempt may hold the operation before another request may take over. */
  leaseSeconds?: number;
  log?: RequestLog;
}

/** Stable ids that cancel-event and reconciliation derive; a client key may not take them. */
const RESERVED_KEY = /^(cancel|conflict)\./;

/** Builds the refund-order handler. */
export function createRefundOrderHandler(
  deps: RefundOrderDeps,
): (request: Request) => Promise<Response> {
  return envelope(
    { fn: "refund-order", action: "refund order", log: deps.log },
    async (request, context) => {
      context.note({ operation: null });
      await deps.authenticate(request);
      const key = requireIdempotencyKey(request);
      if (RESERVED_KEY.test(key)) {
        throw apiError("idempotency_key_invalid", {
          reason: "Idempotency-Key may not start with cancel. or conflict. (reserved)",
        });
      }
      context.note({ operation: `${REFUND_OPERATION}:${key}` });
      const body = parseBody(refundOrderBody, await readJsonBody(request));
      const requestFingerprint = await fingerprint({
        endpoint: "refund-order",
        orderId: body.orderId.toLowerCase(),
        amount: body.amount ?? null,
        reason: body.reason ?? null,
      });

      const claim = await context.db(() =>
        deps.store.claim({
          operationId: key,
          requestFingerprint,
          orderId: body.orderId,
          amount: body.amount,
          reason: body.reason,
          source: "operator",
          leaseSeconds: deps.leaseSeconds ?? 30,
        })
      ).catch((error) => {
        throw refundSqlError(error);
      });
      context.note({ claim: claim.outcome });
      if (
        claim.outcome === "replay" || claim.outcome === "conflict" || claim.outcome === "mismatch"
      ) {
        return answerSettled(claim, context);
      }
      const refund = await makeRefund(deps, claim, context);
      context.note({ outcome: "created", refund_status: refund.status });
      return canonicalJsonResponse(201, refund, { "idempotent-replayed": "false" });
    },
  );
}
