// Checkout for guests: the buyer is the email in the request body.
import { checkoutHandlerFromEnv } from "../_shared/wiring.ts";

Deno.serve(checkoutHandlerFromEnv("guest-checkout", (name) => Deno.env.get(name)));
