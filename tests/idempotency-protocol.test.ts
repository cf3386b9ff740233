/**
 * The generic claim → call → record protocol with another operation type (refund:create), to
 * show _shared/idempotency.ts knows nothing about checkout, and how Stripe failures decide
 * whether the key is kept or burnt.
 */
import assert from "node:assert/strict";
import Stripe from "stripe";
import { makeStripeIdempotencyKey } from "../supabase/functions/_shared/checkout-utils.ts";
import {
  claimOperation,
  recordOperation,
  releaseOperation,
  type Sql,
} from "../supabase/functions/_shared/db.ts";
import { HttpError } from "../supabase/functions/_shared/errors.ts";
import { RequestContext } from "../supabase/functions/_shared/http.ts";
import { classifyStripeError, runAttempt } from "../supabase/functions/_shared/idempotency.ts";
import { openPool, uniqueOperationId } from "./support/database.ts";

const TYPE = "refund:create";

/** One request of a refund-like operation: claim, then run the attempt if armed. */
async function refund(
  sql: Sql,
  operationId: string,
  call: (key: string) => Promise<{ id: string }>,
) {
  const claim = await claimOperation(sql, {
    operationType: TYPE,
    operationId,
    stripeIdempotencyKey: makeStripeIdempotencyKey(TYPE, operationId),
    requestFingerprint: "a".repeat(64),
    leaseToken: crypto.randomUUID(),
    leaseSeconds: 30,
  });
  if (!["created", "takeover", "retry"].includes(claim.outcome)) return { claim, result: null };
  const key = claim.stripeIdempotencyKey!;
  const lease = claim.leaseToken!;
  const result = await runAttempt({
    call: () => call(key),
    record: (r) =>
      recordOperation(sql, {
        operationType: TYPE,
        operationId,
        leaseToken: lease,
        stripeResourceId: r.id,
        responseStatus: 200,
        responseBody: r,
      }),
    release: async (keyConsumed, error) => {
      await releaseOperation(sql, {
        operationType: TYPE,
        operationId,
        leaseToken: lease,
        keyConsumed,
        error,
      });
    },
  }, new RequestContext());
  return { claim, result };
}

function stripeError(statusCode: number | undefined): Error {
  return statusCode === undefined
    ? new Stripe.errors.StripeConnectionError({ message: "socket hang up" })
    : new Stripe.errors.StripeAPIError({ message: "boom", statusCode } as never);
}

Deno.test("refund:create: a dropped connection keeps the key, so the retry reaches Stripe with it", async () => {
  const sql = openPool(2);
  try {
    const id = uniqueOperationId("refund");
    const keys: string[] = [];
    await assert.rejects(
      refund(sql, id, (key) => {
        keys.push(key);
        return Promise.reject(stripeError(undefined));
      }),
      (e: unknown) => e instanceof HttpError && e.status === 503,
    );
    const second = await refund(sql, id, (key) => {
      keys.push(key);
      return Promise.resolve({ id: "re_1" });
    });
    assert.equal(second.claim.outcome, "takeover");
    assert.equal(keys[0], keys[1], "the same key both times");
    const replay = await refund(sql, id, () => Promise.reject(new Error("must not be called")));
    assert.equal(replay.claim.outcome, "replay");
    assert.deepEqual(replay.claim.responseBody, { id: "re_1" });
  } finally {
    await sql.end();
  }
});

Deno.test("refund:create: an answer from Stripe burns the key, so the retry uses a new one", async () => {
  const sql = openPool(2);
  try {
    const id = uniqueOperationId("refund");
    const keys: string[] = [];
    await assert.rejects(refund(sql, id, (key) => {
      keys.push(key);
      return Promise.reject(stripeError(500));
    }));
    const second = await refund(sql, id, (key) => {
      keys.push(key);
      return Promise.resolve({ id: "re_2" });
    });
    assert.equal(second.claim.outcome, "retry");
    assert.notEqual(keys[0], keys[1]);
    assert.equal(keys[0]!.slice(0, -36), keys[1]!.slice(0, -36), "same operation prefix, new UUID");
  } finally {
    await sql.end();
  }
});

Deno.test("Stripe failures are classified by whether Stripe stored an answer under the key", () => {
  const cases: [number | undefined, boolean, number][] = [
    [undefined, false, 503], // no answer: timeout, reset
    [409, false, 503], // concurrent request with the key: not stored
    [429, false, 503], // rate limited: not stored
    [500, true, 503],
    [503, true, 503],
    [400, true, 502],
    [402, true, 502],
  ];
  for (const [status, consumed, httpStatus] of cases) {
    const failure = classifyStripeError(stripeError(status));
    assert.equal(failure.keyConsumed, consumed, `status ${status}`);
    assert.equal(failure.error.status, httpStatus, `status ${status}`);
    if (httpStatus === 503) {
      assert.ok(failure.error.headers["retry-after"], `Retry-After for ${status}`);
    }
  }
  assert.equal(
    classifyStripeError(new TypeError("bug")).keyConsumed,
    false,
    "unknown errors keep the key",
  );
});
