/**
 * User tokens: enhanced-checkout refuses every bad token with 401 before validating or writing
 * anything, accepts a valid HS256 token, and the JWKS verifier (ES256/RS256) checks key ids,
 * keys and algorithms, including HS256 keyed with a public key (algorithm confusion).
 */
import assert from "node:assert/strict";
import { createTokenVerifier, type Jwk } from "../supabase/functions/_shared/auth.ts";
import { HttpError } from "../supabase/functions/_shared/errors.ts";
import { checkoutHandlerFromEnv } from "../supabase/functions/_shared/wiring.ts";
import {
  ALLOWED_ORIGIN,
  checkoutRequest,
  type Harness,
  rowCounts,
  startHarness,
} from "./support/checkout_harness.ts";
import { signToken, TEST_JWT_SECRET, userToken } from "./support/tokens.ts";

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function claimsFor(sub: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    sub,
    role: "authenticated",
    aud: "authenticated",
    iat: nowSeconds(),
    exp: nowSeconds() + 3600,
    ...extra,
  };
}

function base64Url(bytes: Uint8Array | string): string {
  const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  let binary = "";
  for (const byte of data) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function userBody(h: Harness) {
  return { eventId: h.event.id, items: [{ tierId: h.event.balcony, quantity: 1 }] };
}

async function createUser(h: Harness): Promise<string> {
  const userId = crypto.randomUUID();
  await h.sql`insert into auth.users (id, email) values (${userId}, ${`${userId}@example.com`})`;
  return userId;
}

Deno.test("enhanced-checkout answers 401 unauthorized for every missing or bad token and writes nothing", async () => {
  const h = await startHarness();
  try {
    const userId = await createUser(h);
    const valid = await userToken(userId);
    const [head, payload] = valid.split(".");
    const other = await signToken(claimsFor(userId), {
      secret: "another-secret-that-is-also-at-least-32-characters",
    });
    const cases: [string, string | null][] = [
      ["no Authorization header", null],
      ["an empty Authorization header", ""],
      ["Bearer without a token", "Bearer "],
      ["Basic credentials", `Basic ${btoa("user:password")}`],
      ["a token without Bearer", valid],
      ["a forged token (another secret)", `Bearer ${other}`],
      [
        "a token with a tampered payload",
        `Bearer ${
          valid.replace(payload!, base64Url(JSON.stringify(claimsFor(crypto.randomUUID()))))
        }`,
      ],
      ["a token with its signature removed", `Bearer ${head}.${payload}.`],
      [
        "an expired token",
        `Bearer ${await userToken(userId, { exp: nowSeconds() - 3600, iat: nowSeconds() - 7200 })}`,
      ],
      [
        "a token without exp",
        `Bearer ${await signToken({ ...claimsFor(userId), exp: undefined })}`,
      ],
      [
        "a token not valid before an hour from now",
        `Bearer ${await userToken(userId, { nbf: nowSeconds() + 3600 })}`,
      ],
      ["alg none", `Bearer ${await signToken(claimsFor(userId), { alg: "none" })}`],
      [
        "alg none with a signature",
        `Bearer ${(await signToken(claimsFor(userId), { alg: "none" }))}${valid.split(".")[2]}`,
      ],
      [
        "alg HS512 in the header",
        `Bearer ${base64Url(JSON.stringify({ alg: "HS512", typ: "JWT" }))}.${payload}.${
          valid.split(".")[2]
        }`,
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
      ["a payload that is an array", `Bearer ${head}.${base64Url("[1]")}.${valid.split(".")[2]}`],
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
      assert.ok(!text.includes(TEST_JWT_SECRET) && !text.includes("sk_test"), why);
      const body = JSON.parse(text);
      assert.deepEqual(Object.keys(body), ["error"], why);
      assert.equal(body.error.code, "unauthorized", why);
      assert.equal(typeof body.error.message, "string", why);
    }
    assert.equal(await rowCounts(h.sql), before, "refused tokens wrote nothing");
    assert.equal(h.stripe.sessionsCreated(), 0);
  } finally {
    await h.close();
  }
});

Deno.test("enhanced-checkout checks the token before the Idempotency-Key and the body", async () => {
  const h = await startHarness();
  try {
    const forged = await signToken(claimsFor(crypto.randomUUID()), {
      secret: "another-secret-that-is-also-at-least-32-characters",
    });
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
  } finally {
    await h.close();
  }
});

Deno.test("enhanced-checkout accepts a valid token signed with the HS256 secret (201)", async () => {
  const h = await startHarness();
  try {
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
  } finally {
    await h.close();
  }
});

// ---------------------------------------------------------------- JWKS (asymmetric keys)

type Alg = "ES256" | "RS256";

async function generate(alg: Alg): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey(
    alg === "ES256" ? { name: "ECDSA", namedCurve: "P-256" } : {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  );
}

async function publicJwk(pair: CryptoKeyPair, kid: string, alg: Alg): Promise<Jwk> {
  return { ...(await crypto.subtle.exportKey("jwk", pair.publicKey)), kid, alg, use: "sig" };
}

async function signAsymmetric(
  claims: Record<string, unknown>,
  key: CryptoKey,
  header: { alg: Alg; kid?: string },
): Promise<string> {
  const signed = `${base64Url(JSON.stringify({ ...header, typ: "JWT" }))}.${
    base64Url(JSON.stringify(claims))
  }`;
  const params = header.alg === "ES256"
    ? { name: "ECDSA", hash: "SHA-256" }
    : { name: "RSASSA-PKCS1-v1_5" };
  const signature = await crypto.subtle.sign(params, key, new TextEncoder().encode(signed));
  return `${signed}.${base64Url(new Uint8Array(signature))}`;
}

async function signHs256(claims: Record<string, unknown>, secret: Uint8Array): Promise<string> {
  const signed = `${base64Url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${
    base64Url(JSON.stringify(claims))
  }`;
  const key = await crypto.subtle.importKey(
    "raw",
    secret as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const signature = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(signed));
  return `${signed}.${base64Url(new Uint8Array(signature))}`;
}

async function rejects401(promise: Promise<unknown>, why: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof HttpError, `${why}: ${error}`);
    assert.equal(error.status, 401, why);
    assert.equal(error.code, "unauthorized", why);
    return true;
  }, why);
}

interface Keys {
  es: CryptoKeyPair;
  rs: CryptoKeyPair;
  jwks: { keys: Jwk[] };
}

let keysOnce: Promise<Keys> | null = null;
function keys(): Promise<Keys> {
  keysOnce ??= (async () => {
    const [es, rs] = await Promise.all([generate("ES256"), generate("RS256")]);
    const jwks = {
      keys: [await publicJwk(es, "es-1", "ES256"), await publicJwk(rs, "rs-1", "RS256")],
    };
    return { es, rs, jwks };
  })();
  return keysOnce;
}

Deno.test("JWKS: ES256 and RS256 tokens signed by a published key verify to their claims", async () => {
  const { es, rs, jwks } = await keys();
  const verify = createTokenVerifier({ fetchJwks: () => Promise.resolve(structuredClone(jwks)) });
  const sub = crypto.randomUUID();
  const esToken = await signAsymmetric(claimsFor(sub, { email: "a@example.com" }), es.privateKey, {
    alg: "ES256",
    kid: "es-1",
  });
  const rsToken = await signAsymmetric(claimsFor(sub), rs.privateKey, {
    alg: "RS256",
    kid: "rs-1",
  });
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
  const [strangerEs, strangerRs] = await Promise.all([generate("ES256"), generate("RS256")]);
  const claims = claimsFor(crypto.randomUUID());
  const cases: [string, string][] = [
    ["an unknown kid", await signAsymmetric(claims, es.privateKey, { alg: "ES256", kid: "es-9" })],
    [
      "another ES256 key under a known kid",
      await signAsymmetric(claims, strangerEs.privateKey, { alg: "ES256", kid: "es-1" }),
    ],
    [
      "another RS256 key under a known kid",
      await signAsymmetric(claims, strangerRs.privateKey, { alg: "RS256", kid: "rs-1" }),
    ],
    [
      "another key without a kid",
      await signAsymmetric(claims, strangerEs.privateKey, { alg: "ES256" }),
    ],
    [
      "alg RS256 naming the ES256 key",
      await signAsymmetric(claims, rs.privateKey, { alg: "RS256", kid: "es-1" }),
    ],
    [
      "a valid signature on an expired token",
      await signAsymmetric(
        claimsFor(crypto.randomUUID(), { exp: nowSeconds() - 3600 }),
        es.privateKey,
        { alg: "ES256", kid: "es-1" },
      ),
    ],
    [
      "a valid signature on an anon token",
      await signAsymmetric(claimsFor(crypto.randomUUID(), { role: "anon" }), rs.privateKey, {
        alg: "RS256",
        kid: "rs-1",
      }),
    ],
  ];
  for (const [why, token] of cases) await rejects401(verify(`Bearer ${token}`), why);
  assert.ok(fetches <= 1, `an unknown kid refetches the JWKS at most once a minute (${fetches})`);
});

Deno.test("JWKS: an HS256 token keyed with the public key's bytes is refused without a JWT secret (algorithm confusion)", async () => {
  const { es, rs, jwks } = await keys();
  const verify = createTokenVerifier({ fetchJwks: () => Promise.resolve(structuredClone(jwks)) });
  const claims = claimsFor(crypto.randomUUID());
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
      const token = await signHs256(claims, secret);
      await rejects401(verify(`Bearer ${token}`), `${name} public key as ${form}`);
    }
  }
  const none = await signToken(claims, { alg: "none" });
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
  const claims = () => claimsFor(sub, { exp: Math.floor(clock / 1000) + 3600 });
  assert.equal(
    (await verify(
      `Bearer ${await signAsymmetric(claims(), es.privateKey, { alg: "ES256", kid: "es-1" })}`,
    )).sub,
    sub,
  );
  published = structuredClone(jwks.keys);
  const rotated = await signAsymmetric(claims(), rs.privateKey, { alg: "RS256", kid: "rs-1" });
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
  const token = await signAsymmetric(claimsFor(crypto.randomUUID()), es.privateKey, {
    alg: "ES256",
    kid: "es-1",
  });
  await rejects401(verify(`Bearer ${token}`), "JWKS unreachable");
});

Deno.test("an HS256 token is refused by a verifier configured with the JWKS only", async () => {
  const { jwks } = await keys();
  const verify = createTokenVerifier({ fetchJwks: () => Promise.resolve(structuredClone(jwks)) });
  await rejects401(
    verify(`Bearer ${await userToken(crypto.randomUUID())}`),
    "HS256 with the test secret",
  );
  const hsOnly = createTokenVerifier({ jwtSecret: TEST_JWT_SECRET });
  const { es } = await keys();
  const esToken = await signAsymmetric(claimsFor(crypto.randomUUID()), es.privateKey, {
    alg: "ES256",
    kid: "es-1",
  });
  await rejects401(hsOnly(`Bearer ${esToken}`), "ES256 without a JWKS");
});

// ---------------------------------------------------------------- audience, issuer, anonymous

const ISSUER = "https://project.supabase.co/auth/v1";

Deno.test("aud may be a string or an array that contains the audience, which is configurable", async () => {
  const sub = crypto.randomUUID();
  const byDefault = createTokenVerifier({ jwtSecret: TEST_JWT_SECRET });
  for (const aud of ["authenticated", ["authenticated"], ["storefront", "authenticated"]]) {
    const token = await userToken(sub, { aud });
    assert.equal((await byDefault(`Bearer ${token}`)).sub, sub, JSON.stringify(aud));
  }
  const custom = createTokenVerifier({ jwtSecret: TEST_JWT_SECRET, audience: "checkout" });
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
  const verify = createTokenVerifier({ jwtSecret: TEST_JWT_SECRET, issuer: ISSUER });
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
  const strict = createTokenVerifier({ jwtSecret: TEST_JWT_SECRET });
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
  const lenient = createTokenVerifier({ jwtSecret: TEST_JWT_SECRET, allowAnonymous: true });
  assert.equal((await lenient(`Bearer ${anonymous}`)).sub, sub);
});

Deno.test("the service role's key (iss supabase, no aud) is accepted by the service-role verifier", async () => {
  const verify = createTokenVerifier({ jwtSecret: TEST_JWT_SECRET, requiredRole: "service_role" });
  const exp = nowSeconds() + 3600;
  const legacy = await signToken({ iss: "supabase", ref: "project", role: "service_role", exp });
  assert.equal((await verify(`Bearer ${legacy}`)).role, "service_role");
});

Deno.test("enhanced-checkout from the environment checks iss against SUPABASE_URL, aud against CHECKOUT_JWT_AUDIENCE, and anonymous users", async () => {
  const base: Record<string, string> = {
    // Never reached: every request here stops at the token or the body.
    SUPABASE_DB_URL: "postgresql://postgres@127.0.0.1:9/postgres",
    STRIPE_SECRET_KEY: "sk_test_wiring",
    STRIPE_API_BASE: "http://127.0.0.1:9",
    SITE_URL: "http://shop.test",
    SUPABASE_JWT_SECRET: TEST_JWT_SECRET,
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

Deno.test("JWKS: 20 concurrent first requests share one JWKS fetch and all verify", async () => {
  const { es, jwks } = await keys();
  const endpoint = jwksEndpoint(jwks.keys);
  const verify = createTokenVerifier({ fetchJwks: endpoint.fetchJwks });
  const sub = crypto.randomUUID();
  const token = await signAsymmetric(claimsFor(sub), es.privateKey, { alg: "ES256", kid: "es-1" });
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, () => verify(`Bearer ${token}`)),
  );
  assert.deepEqual(results.map((r) => r.status), Array(20).fill("fulfilled"));
  assert.equal(endpoint.state.fetches, 1);
});

Deno.test("JWKS: 20 concurrent requests signed by a newly rotated key all verify after exactly one refetch", async () => {
  const { es, rs, jwks } = await keys();
  let clock = Date.now();
  const endpoint = jwksEndpoint([jwks.keys[0]!]);
  const verify = createTokenVerifier({ fetchJwks: endpoint.fetchJwks, now: () => clock });
  const sub = crypto.randomUUID();
  const claims = () => claimsFor(sub, { exp: Math.floor(clock / 1000) + 3600 });
  const old = await signAsymmetric(claims(), es.privateKey, { alg: "ES256", kid: "es-1" });
  assert.equal((await verify(`Bearer ${old}`)).sub, sub);
  assert.equal(endpoint.state.fetches, 1);

  // Later, the project rotates to rs-1: the cache has never seen it.
  clock += 10 * 60_000;
  endpoint.state.keys = structuredClone(jwks.keys);
  const rotated = await signAsymmetric(claims(), rs.privateKey, { alg: "RS256", kid: "rs-1" });
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
  const { es, rs, jwks } = await keys();
  let clock = Date.now();
  const endpoint = jwksEndpoint([jwks.keys[0]!]);
  const verify = createTokenVerifier({ fetchJwks: endpoint.fetchJwks, now: () => clock });
  const sub = crypto.randomUUID();
  const claims = () => claimsFor(sub, { exp: Math.floor(clock / 1000) + 3600 });
  const known = () => signAsymmetric(claims(), es.privateKey, { alg: "ES256", kid: "es-1" });
  const unknown = () => signAsymmetric(claims(), rs.privateKey, { alg: "RS256", kid: "rs-1" });
  assert.equal((await verify(`Bearer ${await known()}`)).sub, sub);

  clock += 10 * 60_000;
  endpoint.state.fail = true;
  const token = await unknown();
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, () => verify(`Bearer ${token}`)),
  );
  for (const result of results) {
    assert.equal(result.status, "rejected");
    assert.ok(result.reason instanceof HttpError && result.reason.status === 401);
  }
  assert.equal(endpoint.state.fetches, 2, "one refetch, failed");
  assert.equal((await verify(`Bearer ${await known()}`)).sub, sub, "old keys survive the outage");
  await rejects401(verify(`Bearer ${await unknown()}`), "right after a failed refetch");
  assert.equal(endpoint.state.fetches, 2, "an outage is not hammered");

  clock += 61_000;
  endpoint.state.fail = false;
  endpoint.state.keys = structuredClone(jwks.keys);
  assert.equal((await verify(`Bearer ${await unknown()}`)).sub, sub, "found once it recovers");
  assert.equal(endpoint.state.fetches, 3);
});
