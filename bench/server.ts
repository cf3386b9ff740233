/**
 * The HTTP servers under load, one per process (bench/main.ts starts them):
 *
 * - `guest`: the guest-checkout function exactly as supabase/functions/guest-checkout/index.ts
 *   composes it (checkoutHandlerFromEnv: same pool size, prepared statements, Stripe client and
 *   one JSON log line per request on stdout), served with Deno.serve on 127.0.0.1.
 * - `baseline`: a bare Deno.serve handler doing one primary-key select with the same postgres.js
 *   client (createSql with the options the function uses): the floor of one round trip per
 *   request. It answers `select response_status, response_body … where id = ?id`.
 *
 * Prints `listening <port>` on stderr once it accepts connections.
 *
 * Run: deno run -A bench/server.ts guest|baseline   (environment as for guest-checkout)
 */
import { createSql } from "../supabase/functions/_shared/db.ts";
import { checkoutHandlerFromEnv } from "../supabase/functions/_shared/wiring.ts";

type Handler = (request: Request) => Response | Promise<Response>;

/** The baseline: one primary-key select per request, nothing else. */
function baselineHandler(databaseUrl: string): Handler {
  // Same options as wiring.ts's openDatabase for a direct (non-pooler) connection.
  const sql = createSql(databaseUrl, { max: 5, prepare: true });
  return async (request) => {
    const id = new URL(request.url).searchParams.get("id") ?? "0";
    const [row] = await sql<{ response_status: number; response_body: unknown }[]>`
      select response_status, response_body from public.stripe_idempotency_keys where id = ${id}`;
    if (!row) return new Response("not found", { status: 404 });
    return new Response(JSON.stringify(row.response_body), {
      status: row.response_status,
      headers: { "content-type": "application/json" },
    });
  };
}

function main(): void {
  const mode = Deno.args[0];
  const env = (name: string) => Deno.env.get(name);
  let handler: Handler;
  if (mode === "guest") {
    handler = checkoutHandlerFromEnv("guest-checkout", env);
  } else if (mode === "baseline") {
    const url = env("SUPABASE_DB_URL");
    if (!url) throw new Error("Cannot start the baseline: SUPABASE_DB_URL is not set");
    handler = baselineHandler(url);
  } else {
    throw new Error(`Cannot start a bench server: mode must be guest or baseline, got ${mode}`);
  }
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => console.error(`listening ${port}`),
  }, handler);
  const stop = () => server.shutdown().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
}

main();
