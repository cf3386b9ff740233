/**
 * loadCheckoutConfig: a missing or malformed variable fails at start-up with a ConfigError that
 * names it; defaults (allowed origins, session TTL) and parsed URLs are what the functions use.
 */
import assert from "node:assert/strict";
import {
  type CheckoutConfig,
  ConfigError,
  loadCheckoutConfig,
  loadReconcileConfig,
  loadWebhookConfig,
} from "../supabase/functions/_shared/config.ts";
import { LOCAL_JWT_SECRET } from "../scripts/lib/jwt.ts";

const BASE: Readonly<Record<string, string>> = {
  SUPABASE_DB_URL: "postgresql://postgres:secret@db.example.com:6543/postgres",
  STRIPE_SECRET_KEY: "sk_test_config",
  SITE_URL: "https://shop.example.com/store/",
  SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
  SUPABASE_URL: "https://project.supabase.co",
};

type Overrides = Record<string, string | undefined>;

function load(overrides: Overrides = {}, requireUserAuth = false): CheckoutConfig {
  const env: Overrides = { ...BASE, ...overrides };
  return loadCheckoutConfig((name) => env[name], { requireUserAuth });
}

/** Asserts that loading throws a ConfigError whose message names `variable`. */
function throwsNaming(variable: string, overrides: Overrides, requireUserAuth = false): void {
  assert.throws(() => load(overrides, requireUserAuth), (error: unknown) => {
    assert.ok(error instanceof ConfigError, `${variable}: ${error}`);
    assert.equal(error.name, "ConfigError");
    assert.ok(error.message.includes(variable), `"${error.message}" names ${variable}`);
    for (const secret of [BASE.STRIPE_SECRET_KEY!, BASE.SUPABASE_JWT_SECRET!, "secret@"]) {
      assert.ok(!error.message.includes(secret), `"${error.message}" leaks a secret`);
    }
    return true;
  });
}

Deno.test("a complete environment loads, with every URL parsed", () => {
  const config = load({ STRIPE_API_BASE: "http://127.0.0.1:12111" }, true);
  assert.equal(config.databaseUrl, BASE.SUPABASE_DB_URL);
  assert.equal(config.stripeSecretKey, BASE.STRIPE_SECRET_KEY);
  assert.equal(config.jwtSecret, BASE.SUPABASE_JWT_SECRET);
  assert.ok(config.siteUrl instanceof URL);
  assert.equal(config.siteUrl.href, BASE.SITE_URL);
  assert.ok(config.stripeApiBase instanceof URL);
  assert.equal(config.stripeApiBase.origin, "http://127.0.0.1:12111");
  assert.equal(config.jwksUrl?.href, "https://project.supabase.co/auth/v1/.well-known/jwks.json");
  assert.equal(config.sessionTtlMinutes, 30);
});

for (const variable of ["SUPABASE_DB_URL", "STRIPE_SECRET_KEY", "SITE_URL"]) {
  Deno.test(`a missing ${variable} throws a ConfigError naming it, on both endpoints`, () => {
    for (const requireUserAuth of [false, true]) {
      throwsNaming(variable, { [variable]: undefined }, requireUserAuth);
      throwsNaming(variable, { [variable]: "" }, requireUserAuth);
    }
  });
}

Deno.test("enhanced-checkout without SUPABASE_JWT_SECRET and SUPABASE_URL throws a ConfigError naming both", () => {
  const neither = { SUPABASE_JWT_SECRET: undefined, SUPABASE_URL: undefined };
  throwsNaming("SUPABASE_JWT_SECRET", neither, true);
  throwsNaming("SUPABASE_URL", neither, true);
  throwsNaming("SUPABASE_JWT_SECRET", { SUPABASE_JWT_SECRET: "", SUPABASE_URL: "" }, true);
});

Deno.test("enhanced-checkout loads with either the JWT secret or the project URL's JWKS", () => {
  const secretOnly = load({ SUPABASE_URL: undefined }, true);
  assert.equal(secretOnly.jwtSecret, BASE.SUPABASE_JWT_SECRET);
  assert.equal(secretOnly.jwksUrl, null);

  const jwksOnly = load(
    { SUPABASE_JWT_SECRET: undefined, SUPABASE_URL: "https://p.supabase.co/" },
    true,
  );
  assert.equal(jwksOnly.jwtSecret, null);
  assert.equal(jwksOnly.jwksUrl?.href, "https://p.supabase.co/auth/v1/.well-known/jwks.json");
});

Deno.test("guest-checkout needs a publishable key, or a legacy anon key or JWT secret", () => {
  const none = { SUPABASE_JWT_SECRET: undefined, SUPABASE_URL: undefined };
  throwsNaming("SUPABASE_PUBLISHABLE_KEYS", none, false);
  throwsNaming("SUPABASE_PUBLISHABLE_KEY", { ...none, SUPABASE_PUBLISHABLE_KEYS: "{}" }, false);
  const publishable = load({ ...none, SUPABASE_PUBLISHABLE_KEY: "sb_publishable_a" }, false);
  assert.deepEqual(publishable.publishableKeys, { default: "sb_publishable_a" });
  assert.equal(publishable.jwtSecret, null);
  assert.equal(publishable.jwksUrl, null);
  assert.equal(load({ ...none, SUPABASE_ANON_KEY: "eyJ.anon.key" }, false).anonKey, "eyJ.anon.key");
  assert.equal(load({ SUPABASE_URL: undefined }, false).jwtSecret, BASE.SUPABASE_JWT_SECRET);
});

/** The variables the Supabase platform provisions today, and nothing legacy. */
const NEW_ONLY: Overrides = {
  SUPABASE_JWT_SECRET: undefined,
  SUPABASE_URL: "https://project.supabase.co",
  SUPABASE_PUBLISHABLE_KEYS: '{"default":"sb_publishable_one","web":"sb_publishable_two"}',
  SUPABASE_SECRET_KEYS: '{"default":"sb_secret_one"}',
  SUPABASE_JWKS: '{"keys":[{"kty":"EC","crv":"P-256","x":"x","y":"y","kid":"k1","alg":"ES256"}]}',
};

Deno.test("every function loads from the new variables alone (no JWT secret, no legacy key)", () => {
  const env = { ...BASE, ...NEW_ONLY };
  const read = (name: string) => env[name];
  for (const requireUserAuth of [false, true]) {
    const config = loadCheckoutConfig(read, { requireUserAuth });
    assert.deepEqual(config.publishableKeys, {
      default: "sb_publishable_one",
      web: "sb_publishable_two",
    });
    assert.deepEqual(config.secretKeys, { default: "sb_secret_one" });
    assert.equal(config.jwks?.keys[0]?.kid, "k1");
    assert.equal(config.jwksUrl, null, "SUPABASE_JWKS inline is the whole truth: nothing fetched");
    assert.equal(config.jwtSecret, null);
    assert.equal(config.jwtIssuer, "https://project.supabase.co/auth/v1");
  }
  assert.deepEqual(loadReconcileConfig(read).secretKeys, { default: "sb_secret_one" });
});

Deno.test("SUPABASE_PUBLISHABLE_KEYS / SUPABASE_SECRET_KEYS: a JSON object, a JSON array or a comma-separated list", () => {
  const keys = (value: string, singular?: string) =>
    load({ SUPABASE_PUBLISHABLE_KEYS: value, SUPABASE_PUBLISHABLE_KEY: singular }).publishableKeys;
  assert.deepEqual(keys('{"web":"sb_publishable_a"}'), { web: "sb_publishable_a" });
  assert.deepEqual(keys('["sb_publishable_a","sb_publishable_b"]'), {
    0: "sb_publishable_a",
    1: "sb_publishable_b",
  });
  assert.deepEqual(keys(" sb_publishable_a , sb_publishable_b "), {
    0: "sb_publishable_a",
    1: "sb_publishable_b",
  });
  assert.deepEqual(keys('{"web":"sb_publishable_a"}', "sb_publishable_b"), {
    web: "sb_publishable_a",
    default: "sb_publishable_b",
  });
  assert.deepEqual(keys("", "sb_publishable_b"), { default: "sb_publishable_b" });
  throwsNaming("SUPABASE_PUBLISHABLE_KEYS", { SUPABASE_PUBLISHABLE_KEYS: '{"default":' });
  throwsNaming("SUPABASE_PUBLISHABLE_KEYS", { SUPABASE_PUBLISHABLE_KEYS: '{"default":1}' });
  throwsNaming("SUPABASE_SECRET_KEYS", { SUPABASE_SECRET_KEYS: '{"a":""}' });
});

Deno.test("a key of the other kind in SUPABASE_PUBLISHABLE_KEYS or SUPABASE_SECRET_KEYS stops the start, without the key in the message", () => {
  const secret = "sb_secret_must_not_appear_in_messages";
  const publishable = "sb_publishable_must_not_appear_either";
  for (
    const [variable, value] of [
      ["SUPABASE_PUBLISHABLE_KEYS", JSON.stringify({ default: secret })],
      ["SUPABASE_PUBLISHABLE_KEY", secret],
      ["SUPABASE_SECRET_KEYS", JSON.stringify({ default: publishable })],
      ["SUPABASE_SECRET_KEY", publishable],
    ]
  ) {
    assert.throws(() => load({ [variable!]: value }), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, /SUPABASE_(PUBLISHABLE|SECRET)_KEYS/);
      assert.ok(!error.message.includes(secret) && !error.message.includes(publishable));
      return true;
    });
  }
});

Deno.test("SUPABASE_JWKS is a JWKS object or a bare array; anything else stops the start", () => {
  const jwk = { kty: "RSA", n: "n", e: "AQAB", kid: "r1" };
  assert.equal(load({ SUPABASE_JWKS: JSON.stringify([jwk]) }, true).jwks?.keys[0]?.kid, "r1");
  assert.deepEqual(load({ SUPABASE_JWKS: '{"keys":[]}' }, true).jwks, { keys: [] });
  for (const bad of ["{", '{"keys":{}}', '{"keys":[1]}', '"text"', "null"]) {
    throwsNaming("SUPABASE_JWKS", { SUPABASE_JWKS: bad }, true);
  }
  // An empty inline set verifies nobody: enhanced-checkout needs another source then.
  throwsNaming(
    "SUPABASE_JWKS",
    { SUPABASE_JWKS: '{"keys":[]}', SUPABASE_JWT_SECRET: undefined },
    true,
  );
});

Deno.test("the JWKS is fetched over https only (http on loopback), else SUPABASE_JWKS_URL is refused", () => {
  const url = (overrides: Overrides) => load(overrides, false).jwksUrl?.href ?? null;
  assert.equal(
    url({ SUPABASE_URL: "http://127.0.0.1:54321" }),
    "http://127.0.0.1:54321/auth/v1/.well-known/jwks.json",
  );
  assert.equal(url({ SUPABASE_URL: "http://kong:8000" }), null, "plain http elsewhere: no JWKS");
  assert.equal(
    url({ SUPABASE_JWKS_URL: "https://auth.example.com/jwks.json" }),
    "https://auth.example.com/jwks.json",
  );
  throwsNaming("SUPABASE_JWKS_URL", { SUPABASE_JWKS_URL: "http://auth.example.com/jwks.json" });
  throwsNaming(
    "SUPABASE_URL",
    { SUPABASE_URL: "http://kong:8000", SUPABASE_JWT_SECRET: undefined },
    true,
  );
});

Deno.test("an unparsable SITE_URL, STRIPE_API_BASE or SUPABASE_URL throws a ConfigError naming it", () => {
  throwsNaming("SITE_URL", { SITE_URL: "shop.example.com" });
  throwsNaming("STRIPE_API_BASE", { STRIPE_API_BASE: "not a url" });
  throwsNaming("SUPABASE_URL", { SUPABASE_URL: "not a url" }, true);
});

Deno.test("CHECKOUT_ALLOWED_ORIGINS defaults to SITE_URL's origin", () => {
  assert.deepEqual([...load().allowedOrigins], ["https://shop.example.com"]);
  assert.deepEqual(
    [
      ...load({ SITE_URL: "http://localhost:3000/app?x=1", CHECKOUT_ALLOWED_ORIGINS: "" })
        .allowedOrigins,
    ],
    ["http://localhost:3000"],
  );
});

Deno.test("CHECKOUT_ALLOWED_ORIGINS is a comma-separated list of origins; a path or bad URL throws", () => {
  const config = load({
    CHECKOUT_ALLOWED_ORIGINS: "https://shop.example.com, http://localhost:3000 ,",
  });
  assert.deepEqual([...config.allowedOrigins].sort(), [
    "http://localhost:3000",
    "https://shop.example.com",
  ]);
  throwsNaming("CHECKOUT_ALLOWED_ORIGINS", {
    CHECKOUT_ALLOWED_ORIGINS: "https://shop.example.com/",
  });
  throwsNaming("CHECKOUT_ALLOWED_ORIGINS", { CHECKOUT_ALLOWED_ORIGINS: "shop.example.com" });
  throwsNaming("CHECKOUT_ALLOWED_ORIGINS", { CHECKOUT_ALLOWED_ORIGINS: "*" });
});

Deno.test("CHECKOUT_SESSION_TTL_MINUTES defaults to 30 and accepts whole minutes from 30 to 1438", () => {
  assert.equal(load().sessionTtlMinutes, 30);
  assert.equal(load({ CHECKOUT_SESSION_TTL_MINUTES: "30" }).sessionTtlMinutes, 30);
  assert.equal(load({ CHECKOUT_SESSION_TTL_MINUTES: "90" }).sessionTtlMinutes, 90);
  // 1438 minutes plus the two minutes of grace is exactly Stripe's 24-hour maximum.
  assert.equal(load({ CHECKOUT_SESSION_TTL_MINUTES: "1438" }).sessionTtlMinutes, 1438);
});

Deno.test("a CHECKOUT_SESSION_TTL_MINUTES outside 30..1438 or not a whole number throws", () => {
  for (const ttl of ["29", "1439", "1440", "1441", "abc", "0", "-30", "45.5", "1e3x", "Infinity"]) {
    throwsNaming("CHECKOUT_SESSION_TTL_MINUTES", { CHECKOUT_SESSION_TTL_MINUTES: ttl });
  }
});

Deno.test("a refused CHECKOUT_SESSION_TTL_MINUTES says the range that fits Stripe's window", () => {
  for (const ttl of ["1439", "1440", "29"]) {
    assert.throws(
      () => load({ CHECKOUT_SESSION_TTL_MINUTES: ttl }),
      (error: unknown) => error instanceof ConfigError && error.message.includes("30 to 1438"),
      ttl,
    );
  }
});

Deno.test("STRIPE_API_BASE is parsed as a URL, and absent means Stripe itself (null)", () => {
  const local = load({ STRIPE_API_BASE: "http://localhost:12111/" }).stripeApiBase;
  assert.ok(local instanceof URL);
  assert.equal(local.protocol, "http:");
  assert.equal(local.hostname, "localhost");
  assert.equal(local.port, "12111");
  assert.equal(load().stripeApiBase, null);
  assert.equal(load({ STRIPE_API_BASE: "" }).stripeApiBase, null);
});

Deno.test("pending-hold limits default to 5 per buyer and 20 per address over 30 minutes", () => {
  assert.deepEqual(load().holdLimits, {
    maxPendingPerBuyer: 5,
    maxPendingPerAddress: 20,
    windowSeconds: 1800,
  });
  assert.deepEqual(
    load({
      CHECKOUT_MAX_PENDING_PER_BUYER: "off",
      CHECKOUT_MAX_PENDING_PER_ADDRESS: "7",
      CHECKOUT_PENDING_WINDOW_MINUTES: "60",
    }).holdLimits,
    { maxPendingPerBuyer: null, maxPendingPerAddress: 7, windowSeconds: 3600 },
  );
  throwsNaming("CHECKOUT_MAX_PENDING_PER_ADDRESS", { CHECKOUT_MAX_PENDING_PER_ADDRESS: "-1" });
  throwsNaming("CHECKOUT_PENDING_WINDOW_MINUTES", { CHECKOUT_PENDING_WINDOW_MINUTES: "1.5" });
});

Deno.test("the client address is the rightmost X-Forwarded-For entry unless configured otherwise", () => {
  assert.deepEqual(load().clientAddress, { trustedProxyHops: 1, header: null });
  assert.deepEqual(load({ CHECKOUT_TRUSTED_PROXY_HOPS: "2" }).clientAddress, {
    trustedProxyHops: 2,
    header: null,
  });
  assert.equal(load({ CHECKOUT_TRUSTED_PROXY_HOPS: "10" }).clientAddress.trustedProxyHops, 10);
  assert.deepEqual(load({ CHECKOUT_CLIENT_IP_HEADER: " CF-Connecting-IP " }).clientAddress, {
    trustedProxyHops: 1,
    header: "cf-connecting-ip",
  });
  assert.equal(load({ CHECKOUT_CLIENT_IP_HEADER: "" }).clientAddress.header, null);
});

Deno.test("CHECKOUT_TRUSTED_PROXY_HOPS must be an integer from 1 to 10", () => {
  for (const hops of ["0", "11", "-1", "1.5", "two", "1e3x", "Infinity"]) {
    throwsNaming("CHECKOUT_TRUSTED_PROXY_HOPS", { CHECKOUT_TRUSTED_PROXY_HOPS: hops });
  }
});

Deno.test("CHECKOUT_CLIENT_IP_HEADER must be a header name other than X-Forwarded-For", () => {
  const names = [
    "x real ip",
    "x-real-ip:",
    "x-real\nip",
    "(ip)",
    "x-forwarded-for",
    "X-Forwarded-For",
  ];
  for (const header of names) {
    throwsNaming("CHECKOUT_CLIENT_IP_HEADER", { CHECKOUT_CLIENT_IP_HEADER: header });
  }
});

Deno.test("user tokens must say aud authenticated and iss <SUPABASE_URL>/auth/v1 by default, anonymous users refused", () => {
  const config = load({ SUPABASE_URL: "https://project.supabase.co/" }, true);
  assert.equal(config.jwtAudience, "authenticated");
  assert.equal(config.jwtIssuer, "https://project.supabase.co/auth/v1");
  assert.equal(config.allowAnonymousUsers, false);
  assert.equal(load({ SUPABASE_URL: undefined }, true).jwtIssuer, null, "unknown: not checked");
});

Deno.test("CHECKOUT_JWT_AUDIENCE, CHECKOUT_JWT_ISSUER and CHECKOUT_ALLOW_ANONYMOUS_USERS override the token rules", () => {
  const config = load({
    CHECKOUT_JWT_AUDIENCE: "storefront",
    CHECKOUT_JWT_ISSUER: "http://127.0.0.1:54321/auth/v1",
    CHECKOUT_ALLOW_ANONYMOUS_USERS: "true",
  }, true);
  assert.equal(config.jwtAudience, "storefront");
  assert.equal(config.jwtIssuer, "http://127.0.0.1:54321/auth/v1");
  assert.equal(config.allowAnonymousUsers, true);
  assert.equal(load({ CHECKOUT_ALLOW_ANONYMOUS_USERS: "false" }).allowAnonymousUsers, false);
  assert.equal(load({ CHECKOUT_JWT_AUDIENCE: "" }).jwtAudience, "authenticated");
  for (const value of ["yes", "1", "TRUE", "on"]) {
    throwsNaming("CHECKOUT_ALLOW_ANONYMOUS_USERS", { CHECKOUT_ALLOW_ANONYMOUS_USERS: value });
  }
  throwsNaming("CHECKOUT_JWT_ISSUER", { CHECKOUT_JWT_ISSUER: "not a url" });
});

Deno.test("webhook and reconcile configurations name what they miss", () => {
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  assert.throws(
    () =>
      loadWebhookConfig(env({ SUPABASE_DB_URL: "postgresql://x", STRIPE_SECRET_KEY: "sk_test_x" })),
    (e: unknown) => e instanceof ConfigError && e.message.includes("STRIPE_WEBHOOK_SECRET"),
  );
  assert.throws(
    () =>
      loadReconcileConfig(
        env({ SUPABASE_DB_URL: "postgresql://x", STRIPE_SECRET_KEY: "sk_test_x" }),
      ),
    (e: unknown) =>
      e instanceof ConfigError && e.message.includes("SUPABASE_SECRET_KEYS") &&
      e.message.includes("SUPABASE_JWT_SECRET"),
  );
  const reconcile = loadReconcileConfig(env({
    SUPABASE_DB_URL: "postgresql://x",
    STRIPE_SECRET_KEY: "sk_test_x",
    SUPABASE_JWT_SECRET: "s",
  }));
  assert.equal(reconcile.staleSeconds, 600, "10 minutes by default");
});

Deno.test("CHECKOUT_LOCK_TIMEOUT_MS defaults to 2000 and accepts whole milliseconds from 1 to 60000", () => {
  assert.equal(load().lockTimeoutMs, 2000);
  assert.equal(load({ CHECKOUT_LOCK_TIMEOUT_MS: "250" }).lockTimeoutMs, 250);
  for (const bad of ["0", "60001", "1.5", "two seconds"]) {
    throwsNaming("CHECKOUT_LOCK_TIMEOUT_MS", { CHECKOUT_LOCK_TIMEOUT_MS: bad });
  }
});

Deno.test("DB_POOL_MAX defaults to 3 connections per instance and accepts 1 to 100", () => {
  assert.equal(load().dbPoolMax, 3);
  assert.equal(load({ DB_POOL_MAX: "10" }).dbPoolMax, 10);
  for (const bad of ["0", "101", "many"]) throwsNaming("DB_POOL_MAX", { DB_POOL_MAX: bad });
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  const webhook = loadWebhookConfig(env({
    SUPABASE_DB_URL: "postgresql://x",
    STRIPE_SECRET_KEY: "sk_test_x",
    STRIPE_WEBHOOK_SECRET: "whsec_x",
    DB_POOL_MAX: "2",
  }));
  assert.equal(webhook.dbPoolMax, 2, "every function reads it");
});

Deno.test("prepared statements are off through a transaction pooler: port 6543, or DB_TRANSACTION_POOLER=true", () => {
  assert.equal(load().dbPrepare, false, "Supabase's pooler port");
  const direct = "postgresql://postgres:secret@db.example.com:5432/postgres";
  assert.equal(load({ SUPABASE_DB_URL: direct }).dbPrepare, true);
  assert.equal(load({ SUPABASE_DB_URL: direct, DB_TRANSACTION_POOLER: "true" }).dbPrepare, false);
  throwsNaming("DB_TRANSACTION_POOLER", { DB_TRANSACTION_POOLER: "yes" });
});
