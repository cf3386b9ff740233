/**
 * User tokens: enhanced-checkout refuses every bad token with 401 before validating or writing
 * anything, accepts a valid HS256 token, and the JWKS verifier (ES256/RS256) checks key ids,
 * keys and algorithms, including HS256 keyed with a public key (algorithm confusion).
 */
import assert from "node:assert/strict";
import {
  createTokenVerifier,
  type Jwk,
  operatorCaller,
  publishableKeyCaller,
} from "../supabase/functions/_shared/auth.ts";
import { HttpError } from "../supabase/functions/_shared/errors.ts";
import { checkoutHandlerFromEnv } from "../supabase/functions/_shared/wiring.ts";
import {
  ALLOWED_ORIGIN,
  checkoutRequest,
  type Harness,
  rowCounts,
  withHarness,
} from "./support/checkout-harness.ts";
import {
  base64UrlEncode,
  generateKeyPair,
  jsonSegment,
  jwks as publish,
  LOCAL_JWT_SECRET,
  type SigningKeyPair,
  signJwt,
  unsignedJwt,
  userClaims,
  userToken,
} from "../scripts/lib/jwt.ts";

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

const OTHER_SECRET = "another-secret-that-is-also-at-least-32-characters";

function userBody(h: Harness) {
  return { eventId: h.event.id, items: [{ tierId: h.event.balcony, quantity: 1 }] };
}

async function createUser(h: Harness): Promise<string> {
  const userId = crypto.randomUUID();
  await h.sql`insert into auth.users (id, email) values (${userId}, ${`${userId}@example.com`})`;
  return userId;
}

Deno.test("enhanced-checkout answers 401 unauthorized for every missing or bad token and writes nothing", () =>
  withHarness(async (h) => {
    const userId = await createUser(h);
    const valid = await userToken(userId);
    const [head, payload, signature] = valid.split(".");
    const other = await userToken(userId, {}, { key: OTHER_SECRET });
    const cases: [string, string | null][] = [
      ["no Authorization header", null],
      ["an empty Authorization header", ""],
      ["Bearer without a token", "Bearer "],
      ["Basic credentials", `Basic ${btoa("user:password")}`],
      ["a token without Bearer", valid],
      ["a forged token (another secret)", `Bearer ${other}`],
      [
        "a token with a tampered payload",
        `Bearer ${valid.replace(payload!, jsonSegment(userClaims(crypto.randomUUID())))}`,
      ],
      ["a token with its signature removed", `Bearer ${head}.${payload}.`],
      [
        "an expired token",
        `Bearer ${await userToken(userId, { exp: nowSeconds() - 3600, iat: nowSeconds() - 7200 })}`,
      ],
      [
        "a token without exp",
        `Bearer ${await userToken(userId, { exp: undefined })}`,
      ],
      [
        "a token not valid before an hour from now",
        `Bearer ${await userToken(userId, { nbf: nowSeconds() + 3600 })}`,
      ],
      ["alg none", `Bearer ${unsignedJwt(userClaims(userId))}`],
      ["alg none with a signature", `Bearer ${unsignedJwt(userClaims(userId))}${signature}`],
      [
        "alg HS512 in the header",
        `Bearer ${jsonSegment({ alg: "HS512", typ: "JWT" })}.${payload}.${signature}`,
      ],
      ["aud anon", `Bearer ${await userToken(userId, { aud: "anon" })}`],
      ["no aud", `Bearer ${await userToken(userId, { aud: undefined })}`],
      [
        "aud an array without authenticated",
        `Bearer ${await userToken(userId, { aud: ["anon", "service_role"] })}`,
      ],
      ["aud an empty array", `Bearer ${await userToken(userId, { aud: [] })}`],
      ["aud a number", `Bearer ${await userToken(userId, { aud: 1 })}`],
      [
        "an anonymous sign-in (is_anonymous)",
        `Bearer ${await userToken(userId, { is_anonymous: true })}`,
      ],
      ["role anon", `Bearer ${await userToken(userId, { role: "anon" })}`],
      ["role service_role", `Bearer ${await userToken(userId, { role: "service_role" })}`],
      ["no role", `Bearer ${await userToken(userId, { role: undefined })}`],
      ["no sub", `Bearer ${await userToken(userId, { sub: undefined })}`],
      ["sub not a UUID", `Bearer ${await userToken("user-42")}`],
      ["sub a number", `Bearer ${await userToken(userId, { sub: 42 })}`],
      ["an empty sub", `Bearer ${await userToken("")}`],
      ["a token of two parts", `Bearer ${head}.${payload}`],
      ["a token that is not base64url JSON", "Bearer abc.def.ghi"],
      ["a payload that is an array", `Bearer ${head}.${base64UrlEncode("[1]")}.${signature}`],
      ["a token with a space inside", `Bearer ${head}. ${payload}`],
      [
        "a validly signed token for a user who does not exist",
        `Bearer ${await userToken(crypto.randomUUID())}`,
      ],
    ];
    const before = await rowCounts(h.sql);
    for (const [why, authorization] of cases) {
      const headers: Record<string, string> = authorization === null ? {} : { authorization };
      const response = await h.enhanced(checkoutRequest(userBody(h), { headers }));
      assert.equal(response.status, 401, why);
      assert.equal(response.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN, why);
      const text = await response.text();
      assert.ok(!text.includes(LOCAL_JWT_SECRET) && !text.includes("sk_test"), why);
      const body = JSON.parse(text);
      assert.deepEqual(Object.keys(body), ["error"], why);
      assert.equal(body.error.code, "unauthorized", why);
      assert.equal(typeof body.error.message, "string", why);
    }
    assert.equal(await rowCounts(h.sql), before, "refused tokens wrote nothing");
    assert.equal(h.stripe.sessionsCreated(), 0);
  }));

Deno.test("enhanced-checkout checks the token before the Idempotency-Key and the body", () =>
  withHarness(async (h) => {
    const forged = await userToken(crypto.randomUUID(), {}, { key: OTHER_SECRET });
    const before = await rowCounts(h.sql);
    const requests: [string, Request][] = [
      ["no key", checkoutRequest(userBody(h), { key: null, token: forged })],
      ["invalid JSON", checkoutRequest("{", { token: forged })],
      [
        "a text/plain body",
        checkoutRequest(userBody(h), {
          token: forged,
          headers: { "content-type": "text/plain" },
        }),
      ],
      ["a schema violation", checkoutRequest({ eventId: 1 }, { token: forged })],
    ];
    for (const [why, request] of requests) {
      const response = await h.enhanced(request);
      assert.equal(response.status, 401, why);
      assert.equal((await response.json()).error.code, "unauthorized", why);
    }
    assert.equal(await rowCounts(h.sql), before);
    assert.equal(h.stripe.sessionsCreated(), 0);
  }));

Deno.test("enhanced-checkout accepts a valid token signed with the HS256 secret (201)", () =>
  withHarness(async (h) => {
    const userId = await createUser(h);
    const response = await h.enhanced(
      checkoutRequest(userBody(h), { token: await userToken(userId) }),
    );
    assert.equal(response.status, 201);
    const { orderId } = await response.json();
    const [order] = await h.sql<{ user_id: string }[]>`
      select user_id from public.orders where id = ${orderId}`;
    assert.equal(order?.user_id, userId);
    assert.equal(h.stripe.sessionsCreated(), 1);
  }));

// ---------------------------------------------------------------- JWKS (asymmetric keys)

async function rejects401(promise: Promise<unknown>, why: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof HttpError, `${why}: ${error}`);
    assert.equal(error.status, 401, why);
    assert.equal(error.code, "unauthorized", why);
    return true;
  }, why);
}

interface Keys {
  es: SigningKeyPair;
  rs: SigningKeyPair;
  jwks: { keys: Jwk[] };
}

let keysOnce: Promise<Keys> | null = null;
function keys(): Promise<Keys> {
  keysOnce ??= (async () => {
    const [es, rs] = await Promise.all([
      generateKeyPair("ES256", { kid: "es-1" }),
      generateKeyPair("RS256", { kid: "rs-1" }),
    ]);
    return { es, rs, jwks: await publish([es, rs]) };
  })();
  return keysOnce;
}

Deno.test("JWKS: ES256 and RS256 tokens signed by a published key verify to their claims", async () => {
  const { es, rs, jwks } = await keys();
  const verify = createTokenVerifier({ fetchJwks: () => Promise.resolve(structuredClone(jwks)) });
  const sub = crypto.randomUUID();
  const esToken = await signJwt(userClaims(sub, { email: "a@example.com" }), es);
  const rsToken = await signJwt(userClaims(sub), rs);
  const esClaims = await verify(`Bearer ${esToken}`);
  assert.equal(esClaims.sub, sub);
  assert.equal(esClaims.role, "authenticated");
  assert.equal(esClaims.email, "a@example.com");
  assert.equal((await verify(`Bearer ${rsToken}`)).sub, sub);
});

Deno.test("JWKS: an unknown kid, another key under a known kid, or a mismatched alg is 401", async () => {
  const { es, rs, jwks } = await keys();
  let fetches = 0;
  const verify = createTokenVerifier({
    fetchJwks: () => {
      fetches++;
      return Promise.resolve(structuredClone(jwks));
    },
  });
  // Strangers: keys nobody published, under the kids of published ones.
  const [strangerEs, strangerRs] = await Promise.all([
    generateKeyPair("ES256", { kid: "es-1" }),
    generateKeyPair("RS256", { kid: "rs-1" }),
  ]);
  const claims = userClaims(crypto.randomUUID());
  const cases: [string, string][] = [
    ["an unknown kid", await signJwt(claims, es, { header: { kid: "es-9" } })],
    ["another ES256 key under a known kid", await signJwt(claims, strangerEs)],
    ["another RS256 key under a known kid", await signJwt(claims, strangerRs)],
    [
      "another key without a kid",
      await signJwt(claims, strangerEs, { header: { kid: undefined } }),
    ],
    ["alg RS256 naming the ES256 key", await signJwt(claims, rs, { header: { kid: "es-1" } })],
    [
      "a valid signature on an expired token",
      await signJwt(userClaims(crypto.randomUUID(), { exp: nowSeconds() - 3600 }), es),
    ],
    [
      "a valid signature on an anon token",
      await signJwt(userClaims(crypto.randomUUID(), { role: "anon" }), rs),
    ],
  ];
  for (const [why, token] of cases) await rejects401(verify(`Bearer ${token}`), why);
  assert.ok(fetches <= 1, `an unknown kid refetches the JWKS at most once a minute (${fetches})`);
});

Deno.test("JWKS: an HS256 token keyed with the public key's bytes is refused without a JWT secret (algorithm confusion)", async () => {
  const { es, rs, jwks } = await keys();
  const verify = createTokenVerifier({ fetchJwks: () => Promise.resolve(structuredClone(jwks)) });
  const claims = userClaims(crypto.randomUUID());
  const encode = (text: string) => new TextEncoder().encode(text);
  for (const [name, pair] of [["ES256", es], ["RS256", rs]] as const) {
    const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
    const pem = `-----BEGIN PUBLIC KEY-----\n${
      btoa(String.fromCharCode(...spki)).replace(/.{64}/g, "$&\n")
    }\n-----END PUBLIC KEY-----\n`;
    const jwk = jwks.keys.find((k) => k.alg === name)!;
    const secrets: [string, Uint8Array][] = [
      ["SPKI DER", spki],
      ["PEM", encode(pem)],
      ["JWK JSON", encode(JSON.stringify(jwk))],
      ["JWKS JSON", encode(JSON.stringify(jwks))],
    ];
    if (name === "ES256") {
      secrets.push([
        "raw EC point",
        new Uint8Array(await crypto.subtle.exportKey("raw", es.publicKey)),
      ]);
    }
    for (const [form, secret] of secrets) {
      const token = await signJwt(claims, secret);
      await rejects401(verify(`Bearer ${token}`), `${name} public key as ${form}`);
    }
  }
  const none = unsignedJwt(claims);
  await rejects401(verify(`Bearer ${none}`), "alg none");
});

Deno.test("JWKS: a key rotated in is found by its kid once the minute-long refetch window has passed", async () => {
  const { es, rs, jwks } = await keys();
  let clock = Date.now();
  let published: Jwk[] = [jwks.keys[0]!];
  const verify = createTokenVerifier({
    fetchJwks: () => Promise.resolve({ keys: structuredClone(published) }),
    now: () => clock,
  });
  const sub = crypto.randomUUID();
  const claims = () => userClaims(sub, { exp: Math.floor(clock / 1000) + 3600 });
  assert.equal(
    (await verify(
      `Bearer ${await signJwt(claims(), es)}`,
    )).sub,
    sub,
  );
  published = structuredClone(jwks.keys);
  const rotated = await signJwt(claims(), rs);
  clock += 1_000;
  await rejects401(verify(`Bearer ${rotated}`), "within a minute of the last fetch");
  clock += 60_000;
  assert.equal((await verify(`Bearer ${rotated}`)).sub, sub);
});

Deno.test("JWKS: a failing JWKS endpoint makes tokens 401, never a 5xx", async () => {
  const { es } = await keys();
  const verify = createTokenVerifier({
    fetchJwks: () => Promise.reject(new Error("connect ECONNREFUSED")),
  });
  const token = await signJwt(userClaims(crypto.randomUUID()), es);
  await rejects401(verify(`Bearer ${token}`), "JWKS unreachable");
});

Deno.test("an HS256 token is refused by a verifier configured with the JWKS only", async () => {
  const { jwks } = await keys();
  const verify = createTokenVerifier({ fetchJwks: () => Promise.resolve(structuredClone(jwks)) });
  await rejects401(
    verify(`Bearer ${await userToken(crypto.randomUUID())}`),
    "HS256 with the test secret",
  );
  const hsOnly = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET });
  const { es } = await keys();
  const esToken = await signJwt(userClaims(crypto.randomUUID()), es);
  await rejects401(hsOnly(`Bearer ${esToken}`), "ES256 without a JWKS");
});

// ---------------------------------------------------------------- audience, issuer, anonymous

const ISSUER = "https://project.supabase.co/auth/v1";

Deno.test("aud may be a string or an array that contains the audience, which is configurable", async () => {
  const sub = crypto.randomUUID();
  const byDefault = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET });
  for (const aud of ["authenticated", ["authenticated"], ["storefront", "authenticated"]]) {
    const token = await userToken(sub, { aud });
    assert.equal((await byDefault(`Bearer ${token}`)).sub, sub, JSON.stringify(aud));
  }
  const custom = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET, audience: "checkout" });
  assert.equal((await custom(`Bearer ${await userToken(sub, { aud: "checkout" })}`)).sub, sub);
  assert.equal(
    (await custom(`Bearer ${await userToken(sub, { aud: ["x", "checkout"] })}`)).sub,
    sub,
  );
  for (const aud of ["authenticated", "Checkout", "checkout ", ["authenticated"], undefined]) {
    await rejects401(
      custom(`Bearer ${await userToken(sub, { aud })}`),
      `aud ${JSON.stringify(aud)} for audience checkout`,
    );
  }
});

Deno.test("with an issuer configured, a token from another issuer or none is 401", async () => {
  const sub = crypto.randomUUID();
  const verify = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET, issuer: ISSUER });
  assert.equal((await verify(`Bearer ${await userToken(sub, { iss: ISSUER })}`)).sub, sub);
  for (
    const iss of [
      "https://other.supabase.co/auth/v1",
      `${ISSUER}/`,
      "https://project.supabase.co",
      "supabase",
      [ISSUER],
      undefined,
    ]
  ) {
    await rejects401(
      verify(`Bearer ${await userToken(sub, { iss })}`),
      `iss ${JSON.stringify(iss)}`,
    );
  }
});

Deno.test("an anonymous sign-in is 401 unless anonymous users are allowed", async () => {
  const sub = crypto.randomUUID();
  const anonymous = await userToken(sub, { is_anonymous: true });
  const strict = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET });
  await rejects401(strict(`Bearer ${anonymous}`), "is_anonymous true");
  await rejects401(
    strict(`Bearer ${await userToken(sub, { is_anonymous: "true" })}`),
    "is_anonymous a string",
  );
  assert.equal(
    (await strict(`Bearer ${await userToken(sub, { is_anonymous: false })}`)).sub,
    sub,
    "a permanent user says is_anonymous false",
  );
  const lenient = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET, allowAnonymous: true });
  assert.equal((await lenient(`Bearer ${anonymous}`)).sub, sub);
});

Deno.test("the service role's key (iss supabase, no aud) is accepted by the service-role verifier", async () => {
  const verify = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET, requiredRole: "service_role" });
  const exp = nowSeconds() + 3600;
  const legacy = await signJwt({ iss: "supabase", ref: "project", role: "service_role", exp });
  assert.equal((await verify(`Bearer ${legacy}`)).role, "service_role");
});

Deno.test("enhanced-checkout from the environment checks iss against SUPABASE_URL, aud against CHECKOUT_JWT_AUDIENCE, and anonymous users", async () => {
  const base: Record<string, string> = {
    // Never reached: every request here stops at the token or the body.
    SUPABASE_DB_URL: "postgresql://postgres@127.0.0.1:9/postgres",
    STRIPE_SECRET_KEY: "sk_test_wiring",
    STRIPE_API_BASE: "http://127.0.0.1:9",
    SITE_URL: "http://shop.test",
    SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
    SUPABASE_URL: "https://project.supabase.co/",
  };
  /** 401 when the token is refused; 400 validation_failed (the empty body) when it passes. */
  async function status(env: Record<string, string>, claims: Record<string, unknown>) {
    const handler = checkoutHandlerFromEnv("enhanced-checkout", (name) => env[name]);
    const token = await userToken(crypto.randomUUID(), { iss: ISSUER, ...claims });
    const response = await handler(checkoutRequest({}, { token }));
    const body = await response.json();
    assert.equal(body.error.code, response.status === 401 ? "unauthorized" : "validation_failed");
    return response.status;
  }
  assert.equal(await status(base, {}), 400, "the project's issuer");
  assert.equal(await status(base, { iss: "https://other.supabase.co/auth/v1" }), 401);
  assert.equal(await status(base, { iss: undefined }), 401, "no iss");
  assert.equal(await status(base, { aud: "anon" }), 401);
  assert.equal(await status(base, { is_anonymous: true }), 401);

  const audience = { ...base, CHECKOUT_JWT_AUDIENCE: "checkout" };
  assert.equal(await status(audience, { aud: "checkout" }), 400);
  assert.equal(await status(audience, {}), 401, "aud authenticated for audience checkout");

  const anonymous = { ...base, CHECKOUT_ALLOW_ANONYMOUS_USERS: "true" };
  assert.equal(await status(anonymous, { is_anonymous: true }), 400);

  const issuer = { ...base, CHECKOUT_JWT_ISSUER: "http://127.0.0.1:54321/auth/v1" };
  assert.equal(await status(issuer, { iss: "http://127.0.0.1:54321/auth/v1" }), 400);
  assert.equal(await status(issuer, {}), 401, "SUPABASE_URL's issuer once overridden");

  const noUrl = { ...base };
  delete noUrl.SUPABASE_URL;
  assert.equal(await status(noUrl, { iss: "supabase-local" }), 400, "no SUPABASE_URL: any iss");
});

// ---------------------------------------------------------------- JWKS refetch on rotation

/** A JWKS endpoint that answers after `delayMs`, counting fetches; `fail` makes it throw. */
function jwksEndpoint(initial: Jwk[], delayMs = 20) {
  const state = { keys: initial, fetches: 0, fail: false };
  const fetchJwks = async () => {
    state.fetches++;
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    if (state.fail) throw new Error("connect ECONNREFUSED");
    return { keys: structuredClone(state.keys) };
  };
  return { state, fetchJwks };
}

/**
 * After a rotation: es-1 published, rs-1 not yet; a verifier on a clock the test moves, and
 * tokens for one user, signed by either key, valid for an hour of that clock.
 */
async function rotation() {
  const { es, rs, jwks } = await keys();
  const clock = { ms: Date.now() };
  const endpoint = jwksEndpoint([jwks.keys[0]!]);
  const verify = createTokenVerifier({ fetchJwks: endpoint.fetchJwks, now: () => clock.ms });
  const sub = crypto.randomUUID();
  const token = (pair: SigningKeyPair) =>
    signJwt(userClaims(sub, { exp: Math.floor(clock.ms / 1000) + 3600 }), pair);
  return { es, rs, jwks, clock, endpoint, verify, sub, token };
}

Deno.test("JWKS: 20 concurrent first requests share one JWKS fetch and all verify", async () => {
  const { es, jwks } = await keys();
  const endpoint = jwksEndpoint(jwks.keys);
  const verify = createTokenVerifier({ fetchJwks: endpoint.fetchJwks });
  const sub = crypto.randomUUID();
  const token = await signJwt(userClaims(sub), es);
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, () => verify(`Bearer ${token}`)),
  );
  assert.deepEqual(results.map((r) => r.status), Array(20).fill("fulfilled"));
  assert.equal(endpoint.state.fetches, 1);
});

Deno.test("JWKS: 20 concurrent requests signed by a newly rotated key all verify after exactly one refetch", async () => {
  const { es, rs, jwks, clock, endpoint, verify, sub, token } = await rotation();
  const old = await token(es);
  assert.equal((await verify(`Bearer ${old}`)).sub, sub);
  assert.equal(endpoint.state.fetches, 1);

  // Later, the project rotates to rs-1: the cache has never seen it.
  clock.ms += 10 * 60_000;
  endpoint.state.keys = structuredClone(jwks.keys);
  const rotated = await token(rs);
  const burst = () =>
    Promise.allSettled(Array.from({ length: 20 }, () => verify(`Bearer ${rotated}`)));
  const results = await burst();
  assert.deepEqual(
    results.map((r) => r.status === "fulfilled" ? r.value.sub : String(r.reason)),
    Array(20).fill(sub),
  );
  assert.equal(endpoint.state.fetches, 2, "one refetch for the whole burst");
  assert.deepEqual((await burst()).map((r) => r.status), Array(20).fill("fulfilled"));
  assert.equal((await verify(`Bearer ${old}`)).sub, sub, "the old key still verifies");
  assert.equal(endpoint.state.fetches, 2, "a known kid never refetches");
});

Deno.test("JWKS: during an outage the cached keys keep verifying, and a burst of unknown kids waits for one failed refetch", async () => {
  const { es, rs, jwks, clock, endpoint, verify, sub, token } = await rotation();
  const known = () => token(es);
  const unknown = () => token(rs);
  assert.equal((await verify(`Bearer ${await known()}`)).sub, sub);

  clock.ms += 10 * 60_000;
  endpoint.state.fail = true;
  const unknownToken = await unknown();
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, () => verify(`Bearer ${unknownToken}`)),
  );
  for (const result of results) {
    assert.equal(result.status, "rejected");
    assert.ok(result.reason instanceof HttpError && result.reason.status === 401);
  }
  assert.equal(endpoint.state.fetches, 2, "one refetch, failed");
  assert.equal((await verify(`Bearer ${await known()}`)).sub, sub, "old keys survive the outage");
  await rejects401(verify(`Bearer ${await unknown()}`), "right after a failed refetch");
  assert.equal(endpoint.state.fetches, 2, "an outage is not hammered");

  clock.ms += 61_000;
  endpoint.state.fail = false;
  endpoint.state.keys = structuredClone(jwks.keys);
  assert.equal((await verify(`Bearer ${await unknown()}`)).sub, sub, "found once it recovers");
  assert.equal(endpoint.state.fetches, 3);
});

Deno.test("JWKS inline (SUPABASE_JWKS): ES256 and RS256 verify, nothing is fetched, an unknown kid or a stranger's key is 401", async () => {
  const { es, rs, jwks } = await keys();
  const verify = createTokenVerifier({ jwks: structuredClone(jwks) });
  const sub = crypto.randomUUID();
  assert.equal((await verify(`Bearer ${await signJwt(userClaims(sub), es)}`)).sub, sub);
  assert.equal((await verify(`Bearer ${await signJwt(userClaims(sub), rs)}`)).sub, sub);
  const stranger = await generateKeyPair("ES256", { kid: "es-1" });
  await rejects401(verify(`Bearer ${await signJwt(userClaims(sub), stranger)}`), "stranger");
  const unknown = await signJwt(userClaims(sub), es, { header: { kid: "es-9" } });
  const results = await Promise.allSettled(
    Array.from({ length: 5 }, () => verify(`Bearer ${unknown}`)),
  );
  assert.deepEqual(results.map((r) => r.status), Array(5).fill("rejected"));
  await rejects401(verify(`Bearer ${await userToken(sub)}`), "HS256 without the legacy secret");
});

Deno.test("a legacy API key verifier takes only its role: anon for anon, service_role for service_role", async () => {
  const anon = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET, requiredRole: "anon" });
  const service = createTokenVerifier({
    jwtSecret: LOCAL_JWT_SECRET,
    requiredRole: "service_role",
  });
  const exp = nowSeconds() + 3600;
  const anonKey = await signJwt({ iss: "supabase", role: "anon", exp });
  const serviceKey = await signJwt({ iss: "supabase", role: "service_role", exp });
  assert.equal((await anon(`Bearer ${anonKey}`)).role, "anon");
  assert.equal((await service(`Bearer ${serviceKey}`)).role, "service_role");
  await rejects401(anon(`Bearer ${serviceKey}`), "service_role is not anon");
  await rejects401(service(`Bearer ${anonKey}`), "anon is not service_role");
  await rejects401(anon(`Bearer ${await userToken(crypto.randomUUID())}`), "a user is not anon");
});

Deno.test("an API key that matched once keeps matching, and no other string is let in after it", async () => {
  const withKey = (apikey: string) =>
    new Request("http://localhost/", { method: "POST", headers: { apikey } });
  const status = async (check: (request: Request) => Promise<unknown>, apikey: string) => {
    try {
      return JSON.stringify(await check(withKey(apikey)));
    } catch (error) {
      return error instanceof HttpError ? String(error.status) : `threw ${error}`;
    }
  };
  const publishable = publishableKeyCaller({
    keys: { web: "sb_publishable_web_0001", app: "sb_publishable_app_0002" },
  });
  const web = JSON.stringify({ kind: "publishable", keyName: "web" });
  // Twice: the second answer is the remembered one.
  assert.equal(await status(publishable, "sb_publishable_web_0001"), web);
  assert.equal(await status(publishable, "sb_publishable_web_0001"), web);
  for (
    const stranger of [
      "sb_publishable_web_000",
      "sb_publishable_web_00011",
      "SB_PUBLISHABLE_WEB_0001",
      "x",
    ]
  ) {
    assert.equal(await status(publishable, stranger), "401", stranger);
  }
  assert.equal(
    await status(publishable, "sb_publishable_app_0002"),
    JSON.stringify({ kind: "publishable", keyName: "app" }),
  );
  assert.equal(await status(publishable, "sb_publishable_web_0001"), web);
  const secret = operatorCaller({ keys: { ops: "sb_secret_ops_0003" } });
  for (let i = 0; i < 2; i++) {
    assert.equal(
      await status(secret, "sb_secret_ops_0003"),
      JSON.stringify({ kind: "secret", keyName: "ops" }),
    );
    assert.equal(await status(secret, "sb_secret_ops_000"), "401");
  }
});
