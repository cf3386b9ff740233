import {
  HOLD_GRACE_SECONDS,
  STRIPE_SESSION_MAX_SECONDS,
  STRIPE_SESSION_MIN_SECONDS,
} from "./checkout-session.ts";
import type { ClientAddressConfig } from "./client-address.ts";
import type { HoldLimits } from "./db.ts";

/**
 * Configuration from the environment, parsed once at start-up. A missing or malformed required
 * variable fails right away with a message naming it, never on the first request.
 */

/** Everything the checkout functions read from the environment. */
export interface CheckoutConfig extends BaseConfig, TokenKeys, UserTokenRules {
  siteUrl: URL;
  allowedOrigins: ReadonlySet<string>;
  sessionTtlMinutes: number;
  /** CHECKOUT_HOLD_GRACE_MINUTES: how long seats outlive expires_at without word from Stripe. */
  holdGraceSeconds: number;
  holdLimits: HoldLimits;
  clientAddress: ClientAddressConfig;
  /** CHECKOUT_LOCK_TIMEOUT_MS: the longest a claim waits for its tier's lock. */
  lockTimeoutMs: number;
}

/**
 * CHECKOUT_SESSION_TTL_MINUTES bounds: the whole hold (TTL plus grace) becomes the session's
 * `expires_at`, so it must fit Stripe's window or every checkout is refused.
 */
export const MIN_SESSION_TTL_MINUTES = Math.ceil(STRIPE_SESSION_MIN_SECONDS / 60);
export const MAX_SESSION_TTL_MINUTES = Math.floor(
  (STRIPE_SESSION_MAX_SECONDS - HOLD_GRACE_SECONDS) / 60,
);

/** Reads a variable by name; the default reader is Deno.env. */
export type EnvReader = (name: string) => string | undefined;

/** A configuration problem, naming the variable. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** What every function that talks to Postgres and Stripe needs. */
export interface BaseConfig {
  databaseUrl: string;
  stripeSecretKey: string;
  /** e.g. http://127.0.0.1:12111 for a local Stripe-compatible server; null for Stripe itself. */
  stripeApiBase: URL | null;
  /**
   * DB_POOL_MAX: connections this function instance may open (default 3). Every isolate has its
   * own pool, so the database sees up to instances × this (see the README's pool sizing).
   */
  dbPoolMax: number;
  /**
   * Whether statements are prepared: false through a transaction pooler, which cannot keep them
   * (Supabase's on port 6543, or DB_TRANSACTION_POOLER=true for one on another port).
   */
  dbPrepare: boolean;
}

/** DB_POOL_MAX's default: small, since every function instance multiplies it. */
export const DEFAULT_DB_POOL_MAX = 3;

/** CHECKOUT_LOCK_TIMEOUT_MS's default: how long a claim waits for its tier's lock. */
export const DEFAULT_LOCK_TIMEOUT_MS = 2000;

/** Keys that verify Supabase-issued tokens. */
export interface TokenKeys {
  jwtSecret: string | null;
  jwksUrl: URL | null;
}

/** What a signed-in buyer's token must say, beyond its signature, role and expiry. */
export interface UserTokenRules {
  /** CHECKOUT_JWT_AUDIENCE, default "authenticated". */
  jwtAudience: string;
  /** CHECKOUT_JWT_ISSUER, else `<SUPABASE_URL>/auth/v1`; null (not checked) without either. */
  jwtIssuer: string | null;
  /** CHECKOUT_ALLOW_ANONYMOUS_USERS=true lets anonymous sign-ins buy; default false. */
  allowAnonymousUsers: boolean;
}

/** Database and Stripe settings, shared by every function. */
export function loadBaseConfig(env: EnvReader): BaseConfig {
  const databaseUrl = env("SUPABASE_DB_URL") || env("DATABASE_URL");
  if (!databaseUrl) {
    throw new ConfigError("Missing environment variable SUPABASE_DB_URL (or DATABASE_URL)");
  }
  const stripeSecretKey = required(env, "STRIPE_SECRET_KEY");
  const stripeApiBase = env("STRIPE_API_BASE")
    ? url("STRIPE_API_BASE", env("STRIPE_API_BASE")!)
    : null;
  const dbPoolMax = integer(env, "DB_POOL_MAX", DEFAULT_DB_POOL_MAX, 1, 100);
  const pooled = flag(env, "DB_TRANSACTION_POOLER") || databasePort(databaseUrl) === "6543";
  return { databaseUrl, stripeSecretKey, stripeApiBase, dbPoolMax, dbPrepare: !pooled };
}

/** The port of a postgres:// URL ("" when it names none or cannot be parsed). */
function databasePort(databaseUrl: string): string {
  try {
    return new URL(databaseUrl.replace(/^postgres(ql)?:/, "http:")).port;
  } catch {
    return "";
  }
}

/** The HS256 secret and/or the JWKS location; `purpose` names what they are for in errors. */
export function loadTokenKeys(env: EnvReader, purpose: string | null): TokenKeys {
  const jwtSecret = env("SUPABASE_JWT_SECRET") || null;
  const jwksSource = env("SUPABASE_JWKS_URL") ||
    (env("SUPABASE_URL")
      ? `${env("SUPABASE_URL")!.replace(/\/+$/, "")}/auth/v1/.well-known/jwks.json`
      : "");
  const jwksName = env("SUPABASE_JWKS_URL") ? "SUPABASE_JWKS_URL" : "SUPABASE_URL";
  const jwksUrl = jwksSource ? url(jwksName, jwksSource) : null;
  if (purpose && !jwtSecret && !jwksUrl) {
    throw new ConfigError(
      `Missing environment variable SUPABASE_JWT_SECRET or SUPABASE_URL (for the JWKS): cannot verify ${purpose}`,
    );
  }
  return { jwtSecret, jwksUrl };
}

/** The audience, issuer and anonymous-user rules for signed-in buyers' tokens. */
export function loadUserTokenRules(env: EnvReader): UserTokenRules {
  const issuerText = env("CHECKOUT_JWT_ISSUER");
  const projectUrl = env("SUPABASE_URL");
  let jwtIssuer: string | null = null;
  if (issuerText) {
    url("CHECKOUT_JWT_ISSUER", issuerText);
    jwtIssuer = issuerText;
  } else if (projectUrl) {
    url("SUPABASE_URL", projectUrl);
    // Supabase Auth signs with iss = the project URL + /auth/v1.
    jwtIssuer = `${projectUrl.replace(/\/+$/, "")}/auth/v1`;
  }
  return {
    jwtAudience: env("CHECKOUT_JWT_AUDIENCE") || "authenticated",
    jwtIssuer,
    allowAnonymousUsers: flag(env, "CHECKOUT_ALLOW_ANONYMOUS_USERS"),
  };
}

/** Parses the checkout configuration. */
export function loadCheckoutConfig(
  env: EnvReader,
  options: { requireUserAuth: boolean },
): CheckoutConfig {
  const base = loadBaseConfig(env);
  const siteUrl = url("SITE_URL", required(env, "SITE_URL"));
  const keys = loadTokenKeys(env, options.requireUserAuth ? "user tokens" : null);

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

  const ttlText = env("CHECKOUT_SESSION_TTL_MINUTES") || String(MIN_SESSION_TTL_MINUTES);
  const sessionTtlMinutes = Number(ttlText);
  if (
    !Number.isInteger(sessionTtlMinutes) || sessionTtlMinutes < MIN_SESSION_TTL_MINUTES ||
    sessionTtlMinutes > MAX_SESSION_TTL_MINUTES
  ) {
    throw new ConfigError(
      `CHECKOUT_SESSION_TTL_MINUTES must be an integer from ${MIN_SESSION_TTL_MINUTES} to ` +
        `${MAX_SESSION_TTL_MINUTES}: with ${HOLD_GRACE_SECONDS} seconds of grace, the hold must ` +
        "end 30 minutes to 24 hours after the Checkout Session is created (Stripe's expires_at)",
    );
  }

  const holdLimits: HoldLimits = {
    maxPendingPerBuyer: limit(env, "CHECKOUT_MAX_PENDING_PER_BUYER", 5),
    maxPendingPerAddress: limit(env, "CHECKOUT_MAX_PENDING_PER_ADDRESS", 20),
    windowSeconds: integer(env, "CHECKOUT_PENDING_WINDOW_MINUTES", 30, 1, 1440) * 60,
  };

  return {
    ...base,
    ...keys,
    ...loadUserTokenRules(env),
    holdLimits,
    clientAddress: loadClientAddressConfig(env),
    siteUrl,
    allowedOrigins: new Set(origins),
    sessionTtlMinutes,
    holdGraceSeconds: integer(env, "CHECKOUT_HOLD_GRACE_MINUTES", 60, 0, 1440) * 60,
    lockTimeoutMs: integer(env, "CHECKOUT_LOCK_TIMEOUT_MS", DEFAULT_LOCK_TIMEOUT_MS, 1, 60_000),
  };
}

/** Where the per-address limit finds the client's address; see client-address.ts. */
export function loadClientAddressConfig(env: EnvReader): ClientAddressConfig {
  const trustedProxyHops = integer(env, "CHECKOUT_TRUSTED_PROXY_HOPS", 1, 1, 10);
  const header = env("CHECKOUT_CLIENT_IP_HEADER")?.trim().toLowerCase() || null;
  if (header !== null && !/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(header)) {
    throw new ConfigError("CHECKOUT_CLIENT_IP_HEADER must be an HTTP header name, e.g. x-real-ip");
  }
  // Its value is a list whose leftmost entries the client writes: the hop count picks from it.
  if (header === "x-forwarded-for") {
    throw new ConfigError(
      "CHECKOUT_CLIENT_IP_HEADER cannot be x-forwarded-for: leave it unset and set CHECKOUT_TRUSTED_PROXY_HOPS",
    );
  }
  return { trustedProxyHops, header };
}

/** Configuration of stripe-webhook. */
export interface WebhookConfig extends BaseConfig {
  webhookSecret: string;
}

/** Parses the webhook configuration. */
export function loadWebhookConfig(env: EnvReader): WebhookConfig {
  return { ...loadBaseConfig(env), webhookSecret: required(env, "STRIPE_WEBHOOK_SECRET") };
}

/** Configuration of reconcile-checkouts. */
export interface ReconcileConfig extends BaseConfig, TokenKeys {
  staleSeconds: number;
  /** RECONCILE_MAX_ATTEMPTS: runs without an answer from Stripe before an attempt is given up. */
  maxAttempts: number;
}

/** Parses the reconciliation configuration. */
export function loadReconcileConfig(env: EnvReader): ReconcileConfig {
  const minutes = Number(env("RECONCILE_STALE_MINUTES") || "10");
  if (!Number.isInteger(minutes) || minutes < 1 || minutes > 1440) {
    throw new ConfigError("RECONCILE_STALE_MINUTES must be an integer from 1 to 1440");
  }
  return {
    ...loadBaseConfig(env),
    ...loadTokenKeys(env, "the cron job's service role token"),
    staleSeconds: minutes * 60,
    maxAttempts: integer(env, "RECONCILE_MAX_ATTEMPTS", 5, 1, 100),
  };
}

/** A pending-hold limit: a positive integer, or "off"/"0" for none. */
function limit(env: EnvReader, name: string, fallback: number): number | null {
  const text = env(name);
  if (text === "off" || text === "0") return null;
  return integer(env, name, fallback, 1, 100_000);
}

function integer(env: EnvReader, name: string, fallback: number, min: number, max: number): number {
  const text = env(name);
  if (!text) return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** `true` or `false`; unset or empty is false. */
function flag(env: EnvReader, name: string): boolean {
  const text = env(name);
  if (!text || text === "false") return false;
  if (text === "true") return true;
  throw new ConfigError(`${name} must be true or false`);
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
