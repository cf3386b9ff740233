/**
 * Wiring shared by the two checkout entry points: environment → clients → handler. Only the
 * entry points call it, so only they read the environment.
 */
import { createTokenVerifier, type Jwk } from "./auth.ts";
import { createCheckoutHandler } from "./checkout.ts";
import { sqlCheckoutStore } from "./checkout.ts";
import { type EnvReader, loadCheckoutConfig } from "./config.ts";
import { createSql } from "./db.ts";
import { createStripeClient } from "./stripe.ts";

/** Builds the handler for `endpoint` from the environment; fails at start-up on bad config. */
export function checkoutHandlerFromEnv(
  endpoint: "enhanced-checkout" | "guest-checkout",
  env: EnvReader,
): (request: Request) => Promise<Response> {
  const config = loadCheckoutConfig(env, { requireUserAuth: endpoint === "enhanced-checkout" });
  // Supabase's pooler (port 6543) runs in transaction mode, which cannot keep prepared statements.
  const pooled = new URL(config.databaseUrl.replace(/^postgres(ql)?:/, "http:")).port === "6543";
  const sql = createSql(config.databaseUrl, { max: 5, prepare: !pooled });
  const stripe = createStripeClient(config.stripeSecretKey, { apiBase: config.stripeApiBase });
  const jwksUrl = config.jwksUrl;
  const verifyToken = endpoint === "enhanced-checkout"
    ? createTokenVerifier({
      jwtSecret: config.jwtSecret,
      fetchJwks: jwksUrl
        ? async () => {
          const response = await fetch(jwksUrl, { signal: AbortSignal.timeout(5_000) });
          if (!response.ok) throw new Error(`JWKS fetch failed: ${response.status}`);
          return await response.json() as { keys: Jwk[] };
        }
        : undefined,
    })
    : undefined;

  return createCheckoutHandler({
    endpoint,
    store: sqlCheckoutStore(sql),
    stripe,
    siteUrl: config.siteUrl,
    allowedOrigins: config.allowedOrigins,
    sessionTtlMinutes: config.sessionTtlMinutes,
    verifyToken,
  });
}
