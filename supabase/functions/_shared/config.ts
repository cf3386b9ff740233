/**
 * Configuration from the environment, parsed once at start-up. A missing or malformed required
 * variable fails right away with a message naming it, never on the first request.
 */

/** Everything the checkout functions read from the environment. */
export interface CheckoutConfig {
  databaseUrl: string;
  stripeSecretKey: string;
  /** e.g. http://127.0.0.1:12111 for a local Stripe-compatible server; null for Stripe itself. */
  stripeApiBase: URL | null;
  jwtSecret: string | null;
  jwksUrl: URL | null;
  siteUrl: URL;
  allowedOrigins: ReadonlySet<string>;
  sessionTtlMinutes: number;
}

/** Reads a variable by name; the default reader is Deno.env. */
export type EnvReader = (name: string) => string | undefined;

/** A configuration problem, naming the variable. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Parses the checkout configuration. */
export function loadCheckoutConfig(
  env: EnvReader,
  options: { requireUserAuth: boolean },
): CheckoutConfig {
  const databaseUrl = env("SUPABASE_DB_URL") || env("DATABASE_URL");
  if (!databaseUrl) {
    throw new ConfigError("Missing environment variable SUPABASE_DB_URL (or DATABASE_URL)");
  }
  const stripeSecretKey = required(env, "STRIPE_SECRET_KEY");
  const siteUrl = url("SITE_URL", required(env, "SITE_URL"));
  const stripeApiBase = env("STRIPE_API_BASE")
    ? url("STRIPE_API_BASE", env("STRIPE_API_BASE")!)
    : null;
  const jwtSecret = env("SUPABASE_JWT_SECRET") || null;
  const jwksSource = env("SUPABASE_JWKS_URL") ||
    (env("SUPABASE_URL")
      ? `${env("SUPABASE_URL")!.replace(/\/+$/, "")}/auth/v1/.well-known/jwks.json`
      : "");
  const jwksName = env("SUPABASE_JWKS_URL") ? "SUPABASE_JWKS_URL" : "SUPABASE_URL";
  const jwksUrl = jwksSource ? url(jwksName, jwksSource) : null;
  if (options.requireUserAuth && !jwtSecret && !jwksUrl) {
    throw new ConfigError(
      "Missing environment variable SUPABASE_JWT_SECRET or SUPABASE_URL (for the JWKS): cannot verify user tokens",
    );
  }

  const origins = (env("CHECKOUT_ALLOWED_ORIGINS") || siteUrl.origin).split(",").map((o) =>
    o.trim()
  ).filter(
    Boolean,
  );
  for (const origin of origins) {
    if (url("CHECKOUT_ALLOWED_ORIGINS", origin).origin !== origin) {
      throw new ConfigError(
        `CHECKOUT_ALLOWED_ORIGINS: ${origin} is not an origin (scheme://host[:port])`,
      );
    }
  }

  const ttlText = env("CHECKOUT_SESSION_TTL_MINUTES") || "30";
  const sessionTtlMinutes = Number(ttlText);
  // Stripe accepts expires_at between 30 minutes and 24 hours after creation.
  if (!Number.isInteger(sessionTtlMinutes) || sessionTtlMinutes < 30 || sessionTtlMinutes > 1440) {
    throw new ConfigError("CHECKOUT_SESSION_TTL_MINUTES must be an integer from 30 to 1440");
  }

  return {
    databaseUrl,
    stripeSecretKey,
    stripeApiBase,
    jwtSecret,
    jwksUrl,
    siteUrl,
    allowedOrigins: new Set(origins),
    sessionTtlMinutes,
  };
}

function required(env: EnvReader, name: string): string {
  const value = env(name);
  if (!value) throw new ConfigError(`Missing environment variable ${name}`);
  return value;
}

function url(name: string, value: string): URL {
  try {
    return new URL(value);
  } catch {
    throw new ConfigError(`Environment variable ${name} is not a valid URL`);
  }
}
