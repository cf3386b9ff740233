/**
 * Request schemas, validated once at the edge; the parsed types are the types everywhere after.
 * Strict objects: unknown fields are rejected rather than silently dropped.
 */
import { z } from "zod";
import { apiError } from "./errors.ts";

/** The storefront's Idempotency-Key header: one per checkout attempt, resent on every retry. */
export const IDEMPOTENCY_KEY = /^[A-Za-z0-9_.-]{16,128}$/;

const item = z.strictObject({
  tierId: z.uuid(),
  // The tier's own max_per_order is checked by the database; 100 is the schema's hard cap.
  quantity: z.int().min(1).max(100),
});

const items = z.array(item).min(1).max(20).refine(
  // UUIDs compare case-insensitively: "A1…" and "a1…" are the same tier.
  (list) => new Set(list.map((i) => i.tierId.toLowerCase())).size === list.length,
  { message: "A tier may appear only once" },
);

/** Postgres text cannot hold U+0000: refused here as a 400, not by the database as a 503. */
function noNul(value: string): boolean {
  return !value.includes("\u0000");
}
const NO_NUL = { message: "Must not contain the NUL character (U+0000)" };

const redirectUrl = z.url({ protocol: /^https?$/ }).max(2048).refine(noNul, NO_NUL);

const checkoutFields = {
  eventId: z.uuid(),
  items,
  successUrl: redirectUrl.optional(),
  cancelUrl: redirectUrl.optional(),
};

/** Body of enhanced-checkout (the buyer comes from the verified token). */
export const userCheckoutBody = z.strictObject(checkoutFields);

/** Body of guest-checkout (the buyer is the email). */
export const guestCheckoutBody = z.strictObject({
  ...checkoutFields,
  email: z.email().max(254),
  name: z.string().trim().min(1).max(200).refine(noNul, NO_NUL).optional(),
});

/** Body of refund-order (operators). */
export const refundOrderBody = z.strictObject({
  orderId: z.uuid(),
  // Minor units; absent means all that is still refundable. Stripe's amounts fit in 8 digits.
  amount: z.int().min(1).max(99_999_999).optional(),
  reason: z.enum(["requested_by_customer", "duplicate", "fraudulent"]).optional(),
});

/** Body of cancel-event (operators). */
export const cancelEventBody = z.strictObject({
  eventId: z.uuid(),
  reason: z.string().trim().min(1).max(500).refine(noNul, NO_NUL).optional(),
});

export type RefundOrderBody = z.infer<typeof refundOrderBody>;
export type CancelEventBody = z.infer<typeof cancelEventBody>;
export type UserCheckoutBody = z.infer<typeof userCheckoutBody>;
export type GuestCheckoutBody = z.infer<typeof guestCheckoutBody>;

/** Parses `value` with `schema`, or throws a 400 carrying the zod issue paths. */
export function parseBody<T>(schema: z.ZodType<T>, value: unknown): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  throw apiError("validation_failed", {
    details: result.error.issues.map((issue) => ({
      path: issue.path.map((p) => (typeof p === "symbol" ? String(p) : p)),
      code: issue.code,
      message: issue.message,
    })),
  });
}

/** The client's Idempotency-Key header, or a 400 saying what is wrong with it. */
export function requireIdempotencyKey(request: Request): string {
  const key = request.headers.get("idempotency-key");
  if (key === null || key === "") {
    throw apiError("idempotency_key_missing");
  }
  if (!IDEMPOTENCY_KEY.test(key)) {
    throw apiError("idempotency_key_invalid");
  }
  return key;
}
