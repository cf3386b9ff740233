/**
 * Assertions the local server's own tests share (they call it with Stripe's SDK).
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
