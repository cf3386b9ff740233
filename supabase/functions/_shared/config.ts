import {
  HOLD_GRACE_SECONDS,
  STRIPE_SESSION_MAX_SECONDS,
  STRIPE_SESSION_MIN_SECONDS,
} from "./checkout-session.ts";
import type { Jwk } from "./auth.ts";
import type { ClientAddressConfig } from "./client-address.ts";
import type { HoldLimits } from "./db.ts";

/**
 * Configuration from the environment, parsed once at start-up. A missing or malformed required
 * variable fails right away with a message naming it, never on the first request.
 */

/** Everything the checkout functions read from the environment. */
export interface CheckoutConfig extends BaseConfig, AuthKeys, UserTokenRules {
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

/**
 * The project's credentials, as Supabase provisions them for Edge Functions: the API keys
 * (`SUPABASE_PUBLISHABLE_KEYS`, `SUPABASE_SECRET_KEYS`), the JWT signing keys (`SUPABASE_JWKS`,
 * else the JWKS at `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`), and, side by side while a
 * project still has them, the legacy ones (`SUPABASE_JWT_SECRET`, `SUPABASE_ANON_KEY`,
 * `SUPABASE_SERVICE_ROLE_KEY`). Values are never put in an error message.
 */
export interface AuthKeys {
  /** Publishable keys by name (SUPABASE_PUBLISHABLE_KEYS, SUPABASE_PUBLISHABLE_KEY as "default"). */
  publishableKeys: Readonly<Record<string, string>>;
  /** Secret keys by name (SUPABASE_SECRET_KEYS, SUPABASE_SECRET_KEY as "default"). */
  secretKeys: Readonly<Record<string, string>>;
  /** SUPABASE_JWKS: the signing keys inline; when set it is the whole truth, never fetched. */
  jwks: { keys: Jwk[] } | null;
  /** Without SUPABASE_JWKS: SUPABASE_JWKS_URL, else the project's well-known JWKS URL. */
  jwksUrl: URL | null;
  /** Legacy: the HS256 JWT secret (SUPABASE_JWT_SECRET). */
  jwtSecret: string | null;
  /** Legacy: the anon key (SUPABASE_ANON_KEY), a JWT. */
  anonKey: string | null;
  /** Legacy: the service_role key (SUPABASE_SERVICE_ROLE_KEY), a JWT. */
  serviceRoleKey: string | null;
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

/** Every credential variable, parsed; which ones a function needs is checked by its loader. */
export function loadAuthKeys(env: EnvReader): AuthKeys {
  const jwks = parseJwks(env("SUPABASE_JWKS"));
  return {
    publishableKeys: keySet(env, "SUPABASE_PUBLISHABLE_KEYS", "SUPABASE_PUBLISHABLE_KEY", {
      kind: "publishable",
      other: "sb_secret_",
    }),
    secretKeys: keySet(env, "SUPABASE_SECRET_KEYS", "SUPABASE_SECRET_KEY", {
      kind: "secret",
      other: "sb_publishable_",
    }),
    jwks,
    jwksUrl: jwks ? null : jwksUrl(env),
    jwtSecret: env("SUPABASE_JWT_SECRET") || null,
    anonKey: env("SUPABASE_ANON_KEY")?.trim() || null,
    serviceRoleKey: env("SUPABASE_SERVICE_ROLE_KEY")?.trim() || null,
  };
}

/** Who may call a function, for the start-up check that it can verify that caller at all. */
export type CallerKind = "publishable" | "user" | "operator";

/** Throws a ConfigError when `keys` cannot verify any caller of `kind`. */
export function requireCallerKeys(keys: AuthKeys, kind: CallerKind): void {
  if (kind === "publishable") {
    if (Object.keys(keys.publishableKeys).length || keys.anonKey || keys.jwtSecret) return;
    throw new ConfigError(
      "Missing environment variable SUPABASE_PUBLISHABLE_KEYS (or SUPABASE_PUBLISHABLE_KEY; " +
        "legacy: SUPABASE_ANON_KEY or SUPABASE_JWT_SECRET): cannot verify the storefront's apikey",
    );
  }
  if (kind === "operator") {
    if (Object.keys(keys.secretKeys).length || keys.serviceRoleKey || keys.jwtSecret) return;
    throw new ConfigError(
      "Missing environment variable SUPABASE_SECRET_KEYS (or SUPABASE_SECRET_KEY; legacy: " +
        "SUPABASE_SERVICE_ROLE_KEY or SUPABASE_JWT_SECRET): cannot verify the operator's apikey",
    );
  }
  if ((keys.jwks && keys.jwks.keys.length > 0) || keys.jwksUrl || keys.jwtSecret) return;
  throw new ConfigError(
    "Missing environment variable SUPABASE_JWKS or SUPABASE_URL (for the JWKS; legacy: " +
      "SUPABASE_JWT_SECRET): cannot verify user tokens",
  );
}

/**
 * SUPABASE_PUBLISHABLE_KEYS / SUPABASE_SECRET_KEYS: the platform provisions a JSON object of
 * name → key; a JSON array or a comma-separated list is accepted too. The singular variable
 * adds one key, named "default" unless the set already has one.
 */
function keySet(
  env: EnvReader,
  plural: string,
  singular: string,
  rule: { kind: string; other: string },
): Record<string, string> {
  const keys: Record<string, string> = {};
  const text = env(plural)?.trim();
  if (text) {
    let entries: [string, unknown][];
    if (text.startsWith("{") || text.startsWith("[")) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new ConfigError(`${plural} is not valid JSON (a JSON object of name → key)`);
      }
      entries = Array.isArray(parsed)
        ? parsed.map((value, i) => [String(i), value])
        : Object.entries(parsed as Record<string, unknown>);
    } else {
      entries = text.split(",").map((value, i) => [String(i), value.trim()]);
    }
    for (const [name, value] of entries) {
      if (typeof value !== "string" || value.trim() === "") {
        throw new ConfigError(`${plural}: the key named ${JSON.stringify(name)} is not a string`);
      }
      keys[name] = value.trim();
    }
  }
  const single = env(singular)?.trim();
  if (single) keys[keys.default === undefined ? "default" : singular] = single;
  for (const [name, value] of Object.entries(keys)) {
    // A key of the other kind here would let a browser's key open an operator endpoint, or
    // hand a secret key to a storefront: refuse to start rather than guess.
    if (value.startsWith(rule.other)) {
      throw new ConfigError(
        `${plural}: the key named ${
          JSON.stringify(name)
        } is not a ${rule.kind} key (${rule.other}…)`,
      );
    }
  }
  return keys;
}

/** SUPABASE_JWKS: `{"keys": [...]}` (what the platform provisions) or a bare array of JWKs. */
function parseJwks(text: string | undefined): { keys: Jwk[] } | null {
  if (!text?.trim()) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new ConfigError('SUPABASE_JWKS is not valid JSON (a JWKS: {"keys": [...]})');
  }
  const keys = Array.isArray(parsed) ? parsed : (parsed as { keys?: unknown } | null)?.keys;
  if (
    !Array.isArray(keys) ||
    keys.some((k) => k === null || typeof k !== "object" || Array.isArray(k))
  ) {
    throw new ConfigError('SUPABASE_JWKS is not a JWKS (a JSON object {"keys": [...]})');
  }
  return { keys: keys as Jwk[] };
}

/**
 * SUPABASE_JWKS_URL, else `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`. Keys fetched in clear
 * text could be swapped on the way, so the URL must be https, or http on a loopback address;
 * a project URL that is neither (the CLI's `http://kong:8000`) gives no JWKS URL.
 */
function jwksUrl(env: EnvReader): URL | null {
  const explicit = env("SUPABASE_JWKS_URL");
  if (explicit) {
    const parsed = url("SUPABASE_JWKS_URL", explicit);
    if (!safeTransport(parsed)) {
      throw new ConfigError("SUPABASE_JWKS_URL must be https (http only on a loopback address)");
    }
    return parsed;
  }
  const project = env("SUPABASE_URL");
  if (!project) return null;
  const derived = url(
    "SUPABASE_URL",
    `${project.replace(/\/+$/, "")}/auth/v1/.well-known/jwks.json`,
  );
  return safeTransport(derived) ? derived : null;
}

function safeTransport(address: URL): boolean {
  if (address.protocol === "https:") return true;
  if (address.protocol !== "http:") return false;
  const host = address.hostname;
  return host === "localhost" || host.endsWith(".localhost") || host === "[::1]" ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
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
  const keys = loadAuthKeys(env);
  requireCallerKeys(keys, options.requireUserAuth ? "user" : "publishable");

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
export interface ReconcileConfig extends BaseConfig, AuthKeys {
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
    ...loadOperatorKeys(env),
    staleSeconds: minutes * 60,
    maxAttempts: integer(env, "RECONCILE_MAX_ATTEMPTS", 5, 1, 100),
  };
}

/** Configuration of the operator endpoints refund-order and cancel-event. */
export interface OperatorConfig extends BaseConfig, AuthKeys {}

/** Parses an operator endpoint's configuration: the base and a secret key. */
export function loadOperatorConfig(env: EnvReader): OperatorConfig {
  return { ...loadBaseConfig(env), ...loadOperatorKeys(env) };
}

/** The credentials of an operator endpoint (reconcile-checkouts, refunds): a secret key. */
export function loadOperatorKeys(env: EnvReader): AuthKeys {
  const keys = loadAuthKeys(env);
  requireCallerKeys(keys, "operator");
  return keys;
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
