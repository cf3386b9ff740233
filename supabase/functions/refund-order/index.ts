// Refunds a paid order, exactly once per Idempotency-Key; operators only (secret key).
import { refundOrderHandlerFromEnv } from "../_shared/wiring.ts";

Deno.serve(refundOrderHandlerFromEnv((name) => Deno.env.get(name)));
