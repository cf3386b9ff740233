// Stripe events: signature verified against STRIPE_WEBHOOK_SECRET, each applied once.
import { webhookHandlerFromEnv } from "../_shared/wiring.ts";

Deno.serve(webhookHandlerFromEnv((name) => Deno.env.get(name)));
