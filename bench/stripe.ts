/**
 * The local Stripe-compatible server (local/stripe/) in its own process, with a
 * small control endpoint so bench/main.ts can read how many sessions it really created.
 *
 * Prints one JSON line on stdout: {"url": <Stripe API base>, "control": <control base>}.
 * GET <control>/stats → {"sessionsCreated", "requests"}.
 *
 * Run: deno run -A bench/stripe.ts
 */
import { startStripeServer } from "../local/stripe/mod.ts";

const stripe = await startStripeServer();
const control = Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen: () => {} },
  () =>
    Response.json({ sessionsCreated: stripe.sessionsCreated(), requests: stripe.requests.length }),
);
console.log(JSON.stringify({ url: stripe.url, control: `http://127.0.0.1:${control.addr.port}` }));

const stop = async () => {
  await control.shutdown();
  await stripe.close();
  Deno.exit(0);
};
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);
