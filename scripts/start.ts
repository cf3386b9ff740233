/**
 * The services half of `npm start` (scripts/start.sh prepares the database, then runs this):
 * the functions host, the storefront, and, unless Stripe is given, the local Stripe-compatible
 * server with webhook forwarding. Prints where everything is and how to try it; runs until
 * SIGINT/SIGTERM, then stops everything it started.
 *
 * Environment: DATABASE_URL (required), PORT (functions, 54321), STOREFRONT_PORT (3000),
 * LOCAL_STRIPE_PORT (12111), STRIPE_SECRET_KEY / STRIPE_API_BASE (use that Stripe instead of the
 * local server), STRIPE_WEBHOOK_SECRET (default: a fresh local one), SUPABASE_JWT_SECRET (only
 * to try the legacy keys side by side: the functions then get it too), RECONCILE_INTERVAL_SECONDS
 * (60; 0 turns it off), START_DATABASE_NOTE (how start.sh describes the database).
 *
 * The project's keys (publishable, secret, ES256 signing key) are made once and kept in
 * .local/keys.json; the functions get only the variables Supabase provisions for them
 * (SUPABASE_URL, SUPABASE_PUBLISHABLE_KEYS, SUPABASE_SECRET_KEYS, SUPABASE_JWKS).
 */
import { runMain } from "./lib/cli.ts";
import { DEFAULT_PORTS, DEMO_EVENT_ID, LOCAL_KEYS_FILE } from "./lib/local.ts";
import { loadOrCreateLocalKeys, saveLocalKeys } from "./lib/local-keys.ts";
import { type LocalStack, startLocalStack, type StripeSetting } from "./lib/local-stack.ts";

const ROOT = new URL("../", import.meta.url);
const env = (name: string) => Deno.env.get(name) || undefined;

function port(name: string, fallback: number): number {
  const value = Number(env(name) ?? fallback);
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    throw new Error(`Cannot start: ${name} must be a port number (1-65535)`);
  }
  return value;
}

function stripeSetting(): StripeSetting {
  const apiBase = env("STRIPE_API_BASE");
  const secretKey = env("STRIPE_SECRET_KEY");
  if (apiBase) return { mode: "external", apiBase, secretKey: secretKey ?? "sk_test_local" };
  if (secretKey) return { mode: "external", apiBase: null, secretKey };
  return { mode: "local", port: port("LOCAL_STRIPE_PORT", DEFAULT_PORTS.stripe) };
}

function randomSecret(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

interface EventSummary {
  title: string;
  currency: string;
  tiers: { id: string; name: string; unitAmount: number }[];
}

async function demoEvent(storefrontUrl: string): Promise<EventSummary | null> {
  const response = await fetch(`${storefrontUrl}/api/events/${DEMO_EVENT_ID}`).catch(() => null);
  if (!response?.ok) {
    await response?.body?.cancel();
    return null;
  }
  return await response.json() as EventSummary;
}

function price(amount: number, currency: string): string {
  return amount === 0 ? "free" : `${(amount / 100).toFixed(2)} ${currency.toUpperCase()}`;
}

function banner(
  stack: LocalStack,
  event: EventSummary | null,
  notes: { database: string; stripe: string; webhook: string; keysFile: string },
): string {
  const fn = `${stack.functionsUrl}/functions/v1`;
  const tier = event?.tiers[0]?.id ?? "00000000-0000-4000-8000-000000000101";
  const body = JSON.stringify({
    eventId: DEMO_EVENT_ID,
    items: [{ tierId: tier, quantity: 2 }],
    email: "guest@example.com",
  });
  const tiers = event
    ? event.tiers.map((t) => `      ${t.id}  ${t.name}, ${price(t.unitAmount, event.currency)}`)
    : ["      (the demo event is missing: was the seed applied?)"];
  const failed = stack.failedFunctions.map((f) => `  ! function failed to load: ${f}`);
  return [
    "",
    "Local stack is up (Ctrl-C stops everything)",
    "",
    `  Storefront    ${stack.storefrontUrl}`,
    `  Functions     ${fn}/<name>   (enhanced-checkout, guest-checkout, stripe-webhook,`,
    `                reconcile-checkouts, refund-order, cancel-event)`,
    `  Stripe        ${notes.stripe}`,
    `  Webhooks      ${notes.webhook}`,
    `  Database      ${notes.database}`,
    `  JWKS          ${stack.functionsUrl}/auth/v1/.well-known/jwks.json  (ES256 signing key)`,
    `  Publishable   ${stack.publishableKey}  (apikey header: the storefront's key)`,
    `  Secret key    in ${notes.keysFile} (apikey header of operator endpoints; never in a browser)`,
    "",
    `  Demo event    ${event?.title ?? "?"}  ${DEMO_EVENT_ID}`,
    ...tiers,
    ...(failed.length ? ["", ...failed] : []),
    "",
    "Start a guest checkout (201 with the Checkout URL):",
    "",
    `  curl -i -X POST '${fn}/guest-checkout' \\`,
    `    -H 'apikey: ${stack.publishableKey}' \\`,
    `    -H 'Content-Type: application/json' \\`,
    `    -H "Idempotency-Key: demo-$(date +%s)-$RANDOM" \\`,
    `    -d '${body}'`,
    "",
    "Settle stuck attempts (what the cron job does; the secret key is in " + notes.keysFile + "):",
    "",
    `  curl -i -X POST '${fn}/reconcile-checkouts' -H "apikey: $(node -p "require('./${notes.keysFile}').secretKey")"`,
    "",
    "A signed-in buyer (enhanced-checkout): mint a local user token (ES256) in another shell, then",
    "",
    "  TOKEN=$(npm run -s token)        # or: npm run -s token -- <user uuid>",
    `  curl -i -X POST '${fn}/enhanced-checkout' -H "Authorization: Bearer $TOKEN" \\`,
    `    -H 'Content-Type: application/json' -H "Idempotency-Key: demo-$(date +%s)-$RANDOM" \\`,
    `    -d '${body.replace(',"email":"guest@example.com"', "")}'`,
    "",
  ].join("\n");
}

async function main(): Promise<void> {
  const databaseUrl = env("DATABASE_URL");
  if (!databaseUrl) throw new Error("Cannot start: DATABASE_URL is not set (run `npm start`)");
  const stripe = stripeSetting();
  const givenWebhookSecret = env("STRIPE_WEBHOOK_SECRET");
  const webhookSecret = givenWebhookSecret ?? randomSecret("whsec_local_");
  const localDir = new URL(".local/storefront/", ROOT);
  await Deno.mkdir(localDir, { recursive: true });
  const keysFile = new URL(LOCAL_KEYS_FILE, ROOT).pathname;
  const keys = await loadOrCreateLocalKeys(keysFile);
  const legacySecret = env("SUPABASE_JWT_SECRET");

  const stack = await startLocalStack({
    databaseUrl,
    functionsPort: port("PORT", DEFAULT_PORTS.functions),
    storefrontPort: port("STOREFRONT_PORT", DEFAULT_PORTS.storefront),
    stripe,
    keys,
    webhookSecret,
    bundleFile: new URL("app.js", localDir).pathname,
    functionsEnv: legacySecret ? { SUPABASE_JWT_SECRET: legacySecret } : {},
  });
  // `npm run token` signs with these keys, for this SUPABASE_URL (the tokens' iss).
  await saveLocalKeys(keysFile, keys, stack.functionsUrl);

  const stripeNote = stack.stripe
    ? `local Stripe-compatible server ${stack.stripe.url} (sessions pay at their url: Pay / Cancel)`
    : stripe.mode === "external" && stripe.apiBase
    ? `${stripe.apiBase} (STRIPE_API_BASE)`
    : "api.stripe.com with STRIPE_SECRET_KEY";
  const webhookNote = stack.stripe
    ? `forwarded, signed, to ${stack.functionsUrl}/functions/v1/stripe-webhook`
    : givenWebhookSecret
    ? `${stack.functionsUrl}/functions/v1/stripe-webhook checks STRIPE_WEBHOOK_SECRET`
    : `run \`stripe listen --forward-to ${stack.functionsUrl}/functions/v1/stripe-webhook\` ` +
      "and restart with the STRIPE_WEBHOOK_SECRET it prints";
  console.log(banner(stack, await demoEvent(stack.storefrontUrl), {
    database: env("START_DATABASE_NOTE") ?? "DATABASE_URL",
    stripe: stripeNote,
    webhook: webhookNote,
    keysFile: LOCAL_KEYS_FILE,
  }));

  // Stripe expires a session at its expires_at on its own; the local server does when asked.
  const timers: ReturnType<typeof setInterval>[] = [];
  if (stack.stripe) {
    const local = stack.stripe;
    timers.push(setInterval(() => local.sweepExpired(), 5_000));
  }
  // What the pg_cron + pg_net job does on a hosted project (README): settle stuck attempts.
  const reconcileEvery = Number(env("RECONCILE_INTERVAL_SECONDS") ?? 60);
  if (Number.isFinite(reconcileEvery) && reconcileEvery > 0) {
    timers.push(setInterval(async () => {
      const response = await fetch(`${stack.functionsUrl}/functions/v1/reconcile-checkouts`, {
        method: "POST",
        headers: { apikey: stack.secretKey },
        signal: AbortSignal.timeout(30_000),
      }).catch(() => null);
      await response?.body?.cancel();
    }, reconcileEvery * 1000));
  }

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    const parts = [
      "the functions host",
      "the storefront",
      ...(stack.stripe ? ["the Stripe server"] : []),
    ];
    console.log(`\n${signal}: stopping ${parts.join(", ")}…`);
    timers.forEach(clearInterval);
    await stack.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
}

if (import.meta.main) await runMain(main);
