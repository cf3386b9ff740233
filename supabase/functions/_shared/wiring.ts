/**
 * Wiring for the entry points: environment → clients → handler. Only the index.ts files call
 * these, with Deno.env, so only they read the environment. Bad configuration fails at start-up.
 */
import {
  type CallerCheck,
  createTokenVerifier,
  type Jwk,
  operatorCaller,
  publishableKeyCaller,
  type TokenVerifier,
  userCaller,
  type VerifierOptions,
} from "./auth.ts";
import { createCancelEventHandler } from "./cancel-event.ts";
import { createCheckoutHandler, sqlCheckoutStore } from "./checkout.ts";
import {
  type AuthKeys,
  type BaseConfig,
  type EnvReader,
  loadCheckoutConfig,
  loadOperatorConfig,
  loadReconcileConfig,
  loadWebhookConfig,
} from "./config.ts";
import { createSql, type Sql } from "./db.ts";
import { createReconcileHandler } from "./reconcile.ts";
import { createRefundOrderHandler } from "./refund-order.ts";
import { sqlRefundStore } from "./refunds.ts";
import { createStripeClient, type StripeClientOptions } from "./stripe.ts";
import { createWebhookHandler } from "./webhook.ts";

type Handler = (request: Request) => Promise<Response>;

/** A checkout endpoint's handler. */
export function checkoutHandlerFromEnv(
  endpoint: "enhanced-checkout" | "guest-checkout",
  env: EnvReader,
): Handler {
  const config = loadCheckoutConfig(env, { requireUserAuth: endpoint === "enhanced-checkout" });
  const { sql, stripe } = clients(config);
  return createCheckoutHandler({
    endpoint,
    store: sqlCheckoutStore(sql),
    stripe,
    siteUrl: config.siteUrl,
    allowedOrigins: config.allowedOrigins,
    sessionTtlMinutes: config.sessionTtlMinutes,
    holdGraceSeconds: config.holdGraceSeconds,
    holdLimits: config.holdLimits,
    clientAddress: config.clientAddress,
    lockTimeoutMs: config.lockTimeoutMs,
    authenticate: endpoint === "enhanced-checkout"
      ? userCaller(tokenVerifier(config, {
        requiredRole: "authenticated",
        audience: config.jwtAudience,
        issuer: config.jwtIssuer,
        allowAnonymous: config.allowAnonymousUsers,
      }))
      : publishableKeyCaller({
        keys: config.publishableKeys,
        legacyKey: config.anonKey,
        jwtSecret: config.jwtSecret,
      }),
  });
}

/** The stripe-webhook handler. */
export function webhookHandlerFromEnv(env: EnvReader): Handler {
  const config = loadWebhookConfig(env);
  return createWebhookHandler({
    ...clients(config),
    webhookSecret: config.webhookSecret,
  });
}

/** The reconcile-checkouts handler, for the cron job. */
export function reconcileHandlerFromEnv(env: EnvReader): Handler {
  const config = loadReconcileConfig(env);
  return createReconcileHandler({
    ...clients(config),
    staleSeconds: config.staleSeconds,
    maxAttempts: config.maxAttempts,
    authenticate: operatorAuthentication(config),
  });
}

/** The refund-order handler (operators). */
export function refundOrderHandlerFromEnv(env: EnvReader): Handler {
  const config = loadOperatorConfig(env);
  const { sql, stripe } = clients(config);
  return createRefundOrderHandler({
    store: sqlRefundStore(sql),
    stripe,
    authenticate: operatorAuthentication(config),
  });
}

/** The cancel-event handler (operators; also a pg_cron job driving it to completion). */
export function cancelEventHandlerFromEnv(env: EnvReader): Handler {
  const config = loadOperatorConfig(env);
  // Short Stripe calls, no retry inside one: the last order started before the 50 s budget
  // (at most two calls) still ends well within 60 s; what a timeout leaves, the next call resumes.
  const { sql, stripe } = clients(config, { timeoutMs: 4_000, maxNetworkRetries: 0 });
  return createCancelEventHandler({
    sql,
    store: sqlRefundStore(sql),
    stripe,
    authenticate: operatorAuthentication(config),
  });
}

/**
 * The caller check of every operator endpoint (reconcile-checkouts, refunds, cancellations): a
 * secret key, or the legacy service_role key (whose JWT says iss "supabase" and has no aud:
 * only its signature and role are checked).
 */
export function operatorAuthentication(keys: AuthKeys): CallerCheck {
  return operatorCaller({
    keys: keys.secretKeys,
    legacyKey: keys.serviceRoleKey,
    jwtSecret: keys.jwtSecret,
  });
}

/** The process's one database pool and one Stripe client. */
function clients(
  config: BaseConfig,
  stripeOptions: Omit<StripeClientOptions, "apiBase"> = {},
): { sql: Sql; stripe: ReturnType<typeof createStripeClient> } {
  return {
    // Supabase's pooler (port 6543) runs in transaction mode, which cannot keep prepared
    // statements; the pool is per instance (DB_POOL_MAX), and instances multiply it.
    sql: createSql(config.databaseUrl, { max: config.dbPoolMax, prepare: config.dbPrepare }),
    stripe: createStripeClient(config.stripeSecretKey, {
      ...stripeOptions,
      apiBase: config.stripeApiBase,
    }),
  };
}

function tokenVerifier(
  keys: AuthKeys,
  rules: Pick<VerifierOptions, "requiredRole" | "audience" | "issuer" | "allowAnonymous">,
): TokenVerifier {
  const jwksUrl = keys.jwksUrl;
  return createTokenVerifier({
    ...rules,
    jwtSecret: keys.jwtSecret,
    jwks: keys.jwks,
    fetchJwks: jwksUrl
      ? async () => {
        const response = await fetch(jwksUrl, { signal: AbortSignal.timeout(5_000) });
        if (!response.ok) throw new Error(`JWKS fetch failed: ${response.status}`);
        return await response.json() as { keys: Jwk[] };
      }
      : undefined,
  });
}
