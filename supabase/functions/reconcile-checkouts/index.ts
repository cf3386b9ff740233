// Settles checkout attempts that died between claim and record; called by pg_cron (service role).
import { reconcileHandlerFromEnv } from "../_shared/wiring.ts";

Deno.serve(reconcileHandlerFromEnv((name) => Deno.env.get(name)));
