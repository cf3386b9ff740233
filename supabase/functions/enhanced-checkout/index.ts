// Checkout for signed-in buyers: the buyer is the verified access token's `sub`.
import { checkoutHandlerFromEnv } from "../_shared/wiring.ts";

Deno.serve(checkoutHandlerFromEnv("enhanced-checkout", (name) => Deno.env.get(name)));
