// Cancels an event: expires its open sessions and refunds its payments, resumable; operators only (secret key).
import { cancelEventHandlerFromEnv } from "../_shared/wiring.ts";

Deno.serve(cancelEventHandlerFromEnv((name) => Deno.env.get(name)));
