/**
 * What the local server's own tests share (they call it with Stripe's SDK): assertions, a paid
 * session, a webhook endpoint that verifies signatures the way stripe-webhook does.
 */
import assert from "node:assert/strict";
import Stripe from "stripe";
import { startStripeServer, type StripeServer, type StripeServerOptions } from "./mod.ts";

/** A response header of an SDK result; with the fetch client `lastResponse` is the Response. */
export function responseHeader(resource: { lastResponse: unknown }, name: string): string | null {
  const { headers } = resource.lastResponse as { headers: Headers | Record<string, string> };
  return headers instanceof Headers ? headers.get(name) : headers[name] ?? null;
}

/** For assert.rejects: the error is a `type`, and passes `check`. */
export function isStripeError<T extends Stripe.errors.StripeError>(
  type: new (...args: never[]) => T,
  check: (error: T) => void = () => {},
): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    check(error);
    return true;
  };
}

/** Runs `run` against a fresh server and the client `clientFor` makes for it; closes the server. */
export async function withLocalStripe(
  run: (server: StripeServer, stripe: Stripe) => Promise<void>,
  options: StripeServerOptions,
  clientFor: (server: StripeServer) => Stripe,
): Promise<void> {
  await using server = await startStripeServer(options);
  await run(server, clientFor(server));
}

/** A paid `quantity` × 25.00 USD session (default 2, so 50.00); returns its payment intent id. */
export async function paidSession(
  server: StripeServer,
  stripe: Stripe,
  options: { quantity?: number; orderId?: string } = {},
): Promise<string> {
  const orderId = options.orderId ?? "order_1";
  const session = await stripe.checkout.sessions.create({
    mode: "payment",
    line_items: [{
      quantity: options.quantity ?? 2,
      price_data: { currency: "usd", unit_amount: 2500, product_data: { name: "Ticket" } },
    }],
    success_url: "https://tickets.example/ok",
    metadata: { order_id: orderId },
  }, { idempotencyKey: crypto.randomUUID() });
  const paid = server.completeSession(session.id);
  assert.match(paid.payment_intent ?? "", /^pi_/);
  return paid.payment_intent ?? "";
}

/** A webhook endpoint on 127.0.0.1 that keeps the events whose signature under `secret` holds. */
export interface WebhookReceiver extends AsyncDisposable {
  url: string;
  /** Verified events in arrival order. */
  events: Stripe.Event[];
  /** Waits (at most 2 s) until `count` events arrived; fails unless exactly that many did. */
  waitFor(count: number): Promise<void>;
}

/** Starts a `WebhookReceiver`; a bad signature is answered 400 and not kept. */
export function startWebhookReceiver(secret: string): WebhookReceiver {
  const verifier = new Stripe("sk_test_verifier");
  const cryptoProvider = Stripe.createSubtleCryptoProvider();
  const events: Stripe.Event[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    try {
      events.push(
        await verifier.webhooks.constructEventAsync(
          await req.text(),
          req.headers.get("stripe-signature") ?? "",
          secret,
          undefined,
          cryptoProvider,
        ),
      );
      return Response.json({ received: true });
    } catch {
      return Response.json({ error: "bad signature" }, { status: 400 });
    }
  });
  const waitFor = async (count: number) => {
    for (let i = 0; i < 100 && events.length < count; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(events.length, count, `expected ${count} events: ${events.map((e) => e.type)}`);
  };
  return {
    url: `http://127.0.0.1:${server.addr.port}/hook`,
    events,
    waitFor,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}
