/**
 * The local Stripe-compatible server's public API: what `npm start`, the bench and the tests
 * import. README.md maps the modules behind it.
 */
export type { Dispute, DisputeOptions, DisputeReason } from "./disputes.ts";
export type {
  CheckoutEventType,
  DisputeEventType,
  EventContext,
  EventListener,
  EventObject,
  RefundEventType,
  StripeEventType,
} from "./events.ts";
export type { Fault, FaultFilter, FaultTarget } from "./faults.ts";
export type { ListObject } from "./list.ts";
export { decodeStripeForm, FormDecodeError, type FormObject, type FormValue } from "./form.ts";
export type { CheckoutMode, PriceFixture, UiMode } from "./params.ts";
export type { Charge, Refund, RefundReason, RefundStatus } from "./refunds.ts";
export {
  type RequestRecord,
  startStripeServer,
  type StripeServer,
  type StripeServerOptions,
} from "./server.ts";
export type { CheckoutSession } from "./session-object.ts";
export {
  checkoutSessionEvent,
  createWebhookForwarder,
  hmacSha256,
  stripeEvent,
  stripeSignatureHeader,
  WEBHOOK_API_VERSION,
  type WebhookDelivery,
  type WebhookForwarderOptions,
} from "./webhooks.ts";
