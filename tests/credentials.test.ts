/**
 * Every endpoint × every kind of credential, with the handlers built by wiring.ts from an
 * environment exactly as index.ts builds them: the answer each gets (the README's table "Who may
 * call what"), that a refused caller gets 401 `unauthorized` in the documented shape before its
 * body is read and with nothing written, and that no key or token reaches a log line.
 *
 * Four projects: the variables Supabase provisions today alone (SUPABASE_URL,
 * SUPABASE_PUBLISHABLE_KEYS, SUPABASE_SECRET_KEYS, SUPABASE_JWKS), the same with the JWKS fetched
 * from `<SUPABASE_URL>/auth/v1/.well-known/jwks.json` instead of inline, and each of the two
 * legacy set-ups side by side with them (the JWT secret; the legacy keys themselves).
 */
import assert from "node:assert/strict";
import {
  cancelEventHandlerFromEnv,
  checkoutHandlerFromEnv,
  reconcileHandlerFromEnv,
  refundOrderHandlerFromEnv,
  webhookHandlerFromEnv,
} from "../supabase/functions/_shared/wiring.ts";
import { rowCounts } from "./support/checkout-harness.ts";
import { databaseUrl, openPool, parkLeftoverWork } from "./support/database.ts";
import { TEST_WEBHOOK_SECRET } from "./support/webhooks.ts";
import { startStripeServer } from "../local/stripe/mod.ts";
import {
  apiKey,
  generateKeyPair,
  jwks,
  LOCAL_JWT_SECRET,
  type SigningKey,
  userToken,
} from "../scripts/lib/jwt.ts";

type Endpoint =
  | "guest-checkout"
  | "enhanced-checkout"
  | "reconcile-checkouts"
  | "refund-order"
  | "cancel-event"
  | "stripe-webhook";
const ENDPOINTS: Endpoint[] = [
  "guest-checkout",
  "enhanced-checkout",
  "reconcile-checkouts",
  "refund-order",
  "cancel-event",
  "stripe-webhook",
];

/** What a project has configured, beyond the new variables every project here has. */
interface Project {
  name: string;
  env: Record<string, string>;
  /** SUPABASE_JWT_SECRET is set: HS256 user tokens and legacy JWTs verify. */
  jwtSecret: boolean;
  /** The legacy anon / service_role keys are accepted (by the secret or by value). */
  legacy: boolean;
  /** The `iss` of its users' tokens: `<SUPABASE_URL>/auth/v1`. */
  issuer: string;
}

const random = () => crypto.randomUUID().replaceAll("-", "");
const PUBLISHABLE = `sb_publishable_${random()}`;
const SECOND_PUBLISHABLE = `sb_publishable_${random()}`;
const SECRET = `sb_secret_${random()}`;
const OTHER_PUBLISHABLE = `sb_publishable_${random()}`;
const OTHER_SECRET = `sb_secret_${random()}`;
const OTHER_JWT_SECRET = "another-projects-jwt-secret-at-least-32-characters";

const [es, rs, otherEs] = await Promise.all([
  generateKeyPair("ES256"),
  generateKeyPair("RS256"),
  generateKeyPair("ES256"),
]);
const JWKS = await jwks([es, rs]);
const ANON = await apiKey("anon");
const SERVICE_ROLE = await apiKey("service_role");
const OTHER_ANON = await apiKey("anon", OTHER_JWT_SECRET);
const OTHER_SERVICE_ROLE = await apiKey("service_role", OTHER_JWT_SECRET);

/** A credential as a client sends it, and which endpoints accept it in a given project. */
interface Credential {
  name: string;
  headers: (project: Project) => Promise<Record<string, string>>;
  accepted: Partial<Record<Endpoint, (project: Project) => boolean>>;
}

const always = () => true;
/** The operator endpoints all take the same credentials. */
const operatorEndpoints = (rule: (project: Project) => boolean) => ({
  "reconcile-checkouts": rule,
  "refund-order": rule,
  "cancel-event": rule,
});
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const user = (key: SigningKey, issuer: string) =>
  userToken(crypto.randomUUID(), { iss: issuer }, { key });

const CREDENTIALS: Credential[] = [
  { name: "none", headers: () => Promise.resolve({}), accepted: {} },
  {
    name: "publishable key (apikey)",
    headers: () => Promise.resolve({ apikey: PUBLISHABLE }),
    accepted: { "guest-checkout": always },
  },
  {
    name: "another of the project's publishable keys (apikey)",
    headers: () => Promise.resolve({ apikey: SECOND_PUBLISHABLE }),
    accepted: { "guest-checkout": always },
  },
  {
    name: "secret key (apikey)",
    headers: () => Promise.resolve({ apikey: SECRET }),
    accepted: operatorEndpoints(always),
  },
  {
    name: "user token ES256 (Bearer)",
    headers: async (p) => bearer(await user(es, p.issuer)),
    accepted: { "enhanced-checkout": always },
  },
  {
    name: "user token RS256 (Bearer)",
    headers: async (p) => bearer(await user(rs, p.issuer)),
    accepted: { "enhanced-checkout": always },
  },
  {
    name: "user token HS256 with the legacy secret (Bearer)",
    headers: async (p) => bearer(await user(LOCAL_JWT_SECRET, p.issuer)),
    accepted: { "enhanced-checkout": (p) => p.jwtSecret },
  },
  {
    name: "user token ES256 and publishable key (supabase-js signed in)",
    headers: async (p) => ({ apikey: PUBLISHABLE, ...bearer(await user(es, p.issuer)) }),
    accepted: { "guest-checkout": always, "enhanced-checkout": always },
  },
  {
    name: "legacy anon key (apikey and Bearer, as supabase-js sends it)",
    headers: () => Promise.resolve({ apikey: ANON, ...bearer(ANON) }),
    accepted: { "guest-checkout": (p) => p.legacy },
  },
  {
    name: "legacy anon key (Bearer only, as the legacy gateway read it)",
    headers: () => Promise.resolve(bearer(ANON)),
    accepted: { "guest-checkout": (p) => p.legacy },
  },
  {
    name: "legacy service_role key (Bearer, as the legacy cron job sends it)",
    headers: () => Promise.resolve(bearer(SERVICE_ROLE)),
    accepted: operatorEndpoints((p) => p.legacy),
  },
  {
    name: "legacy service_role key (apikey)",
    headers: () => Promise.resolve({ apikey: SERVICE_ROLE }),
    accepted: operatorEndpoints((p) => p.legacy),
  },
  {
    name: "publishable key in Authorization instead of apikey",
    headers: () => Promise.resolve(bearer(PUBLISHABLE)),
    accepted: {},
  },
  {
    name: "secret key in Authorization instead of apikey",
    headers: () => Promise.resolve(bearer(SECRET)),
    accepted: {},
  },
  {
    name: "wrong publishable key",
    headers: () => Promise.resolve({ apikey: `${PUBLISHABLE.slice(0, -1)}x` }),
    accepted: {},
  },
  {
    name: "wrong secret key",
    headers: () => Promise.resolve({ apikey: `${SECRET}0` }),
    accepted: {},
  },
  {
    name: "a wrong key with a valid legacy key in Authorization",
    headers: () => Promise.resolve({ apikey: `${PUBLISHABLE}0`, ...bearer(SERVICE_ROLE) }),
    accepted: {},
  },
  {
    name: "another project's publishable key",
    headers: () => Promise.resolve({ apikey: OTHER_PUBLISHABLE }),
    accepted: {},
  },
  {
    name: "another project's secret key",
    headers: () => Promise.resolve({ apikey: OTHER_SECRET }),
    accepted: {},
  },
  {
    name: "another project's user token (ES256, its own key)",
    headers: async () => bearer(await user(otherEs, "https://other.supabase.co/auth/v1")),
    accepted: {},
  },
  {
    name: "another project's user token (HS256, its own secret)",
    headers: async (p) => bearer(await user(OTHER_JWT_SECRET, p.issuer)),
    accepted: {},
  },
  {
    name: "another project's legacy anon and service_role keys",
    headers: () => Promise.resolve({ apikey: OTHER_ANON, ...bearer(OTHER_SERVICE_ROLE) }),
    accepted: {},
  },
];

/** A local stand-in for Supabase Auth's JWKS endpoint, counting its fetches. */
function startAuthServer() {
  let fetches = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (request) => {
    if (new URL(request.url).pathname !== "/auth/v1/.well-known/jwks.json") {
      return new Response("not found", { status: 404 });
    }
    fetches++;
    return Response.json(JWKS);
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    fetches: () => fetches,
    close: () => server.shutdown(),
  };
}

/** A POST whose body records whether anything read it. */
function probe(endpoint: Endpoint, headers: Record<string, string>) {
  const state = { bodyRead: false };
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      state.bodyRead = true;
      controller.enqueue(new TextEncoder().encode("{}"));
      controller.close();
    },
  }, { highWaterMark: 0 });
  const request = new Request(`http://functions.test/functions/v1/${endpoint}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "idempotency-key": `credentials-${crypto.randomUUID()}`,
      ...headers,
    },
    body,
  });
  return { request, state };
}

/** Every line the handlers log while `fn` runs (they log through console.log). */
async function capturingLogs<T>(fn: () => Promise<T>): Promise<{ result: T; lines: string[] }> {
  const lines: string[] = [];
  const saved = { log: console.log, warn: console.warn, error: console.error };
  const capture = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  console.log = capture;
  console.warn = capture;
  console.error = capture;
  try {
    return { result: await fn(), lines };
  } finally {
    Object.assign(console, saved);
  }
}

Deno.test({
  name: "every endpoint answers every kind of credential as the README's table says",
  // The handlers' pools stay open, as in a function's process.
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const sql = openPool(2);
    const stripe = await startStripeServer();
    const auth = startAuthServer();
    try {
      const base = {
        SUPABASE_DB_URL: databaseUrl(),
        STRIPE_SECRET_KEY: "sk_test_credentials",
        STRIPE_API_BASE: stripe.url,
        SITE_URL: "http://shop.test",
        STRIPE_WEBHOOK_SECRET: TEST_WEBHOOK_SECRET,
        SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({
          default: PUBLISHABLE,
          mobile: SECOND_PUBLISHABLE,
        }),
        SUPABASE_SECRET_KEYS: JSON.stringify({ default: SECRET }),
      };
      const hosted = "https://project.supabase.co";
      const inline = { ...base, SUPABASE_URL: hosted, SUPABASE_JWKS: JSON.stringify(JWKS) };
      const projects: Project[] = [
        {
          name: "new variables only (SUPABASE_JWKS inline)",
          env: inline,
          jwtSecret: false,
          legacy: false,
          issuer: `${hosted}/auth/v1`,
        },
        {
          name: "new variables only (JWKS fetched from SUPABASE_URL)",
          env: { ...base, SUPABASE_URL: auth.url },
          jwtSecret: false,
          legacy: false,
          issuer: `${auth.url}/auth/v1`,
        },
        {
          name: "new and legacy side by side (SUPABASE_JWT_SECRET)",
          env: { ...inline, SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET },
          jwtSecret: true,
          legacy: true,
          issuer: `${hosted}/auth/v1`,
        },
        {
          name: "new and legacy side by side (SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY)",
          env: { ...inline, SUPABASE_ANON_KEY: ANON, SUPABASE_SERVICE_ROLE_KEY: SERVICE_ROLE },
          jwtSecret: false,
          legacy: true,
          issuer: `${hosted}/auth/v1`,
        },
      ];

      const secrets = [
        PUBLISHABLE,
        SECOND_PUBLISHABLE,
        SECRET,
        OTHER_PUBLISHABLE,
        OTHER_SECRET,
        ANON,
        SERVICE_ROLE,
        OTHER_ANON,
        OTHER_SERVICE_ROLE,
      ];
      const mismatches: string[] = [];
      // An accepted reconcile call must find nothing to do, whatever other files left behind.
      await parkLeftoverWork(sql);
      const countsBefore = await rowCounts(sql);
      const webhookEvents = async () =>
        (await sql<{ n: string }[]>`select count(*)::text as n from public.stripe_webhook_events`)[
          0
        ]
          ?.n;
      const eventsBefore = await webhookEvents();
      const { lines } = await capturingLogs(async () => {
        for (const project of projects) {
          const read = (name: string) => (project.env as Record<string, string>)[name];
          const handlers: Record<Endpoint, (request: Request) => Promise<Response>> = {
            "guest-checkout": checkoutHandlerFromEnv("guest-checkout", read),
            "enhanced-checkout": checkoutHandlerFromEnv("enhanced-checkout", read),
            "reconcile-checkouts": reconcileHandlerFromEnv(read),
            "refund-order": refundOrderHandlerFromEnv(read),
            "cancel-event": cancelEventHandlerFromEnv(read),
            "stripe-webhook": webhookHandlerFromEnv(read),
          };
          for (const credential of CREDENTIALS) {
            const headers = await credential.headers(project);
            secrets.push(
              ...Object.values(headers).map((v) => v.replace(/^Bearer /, "")),
            );
            for (const endpoint of ENDPOINTS) {
              const cell = `${project.name} · ${endpoint} · ${credential.name}`;
              const accepted = credential.accepted[endpoint]?.(project) ?? false;
              const { request, state } = probe(endpoint, headers);
              const response = await handlers[endpoint](request);
              const body = await response.json();
              const got = `${response.status} ${body?.error?.code ?? ""}`.trim();
              const want = endpoint === "stripe-webhook"
                ? "400 signature_missing" // Stripe's signature only, whatever else is sent
                : !accepted
                ? "401 unauthorized"
                : endpoint === "reconcile-checkouts"
                ? "200"
                : "400 validation_failed"; // past the caller check: the empty body is refused
              if (got !== want) mismatches.push(`${cell}: ${got}, expected ${want}`);
              if (want === "401 unauthorized") {
                if (state.bodyRead) mismatches.push(`${cell}: the body was read`);
                assert.deepEqual(Object.keys(body), ["error"], cell);
                assert.deepEqual(Object.keys(body.error).sort(), ["code", "message"], cell);
                assert.match(body.error.message, /^Cannot [a-z ]+: not authenticated: /, cell);
              }
            }
          }
        }
      });
      assert.deepEqual(mismatches, []);
      assert.equal(
        await rowCounts(sql),
        countsBefore,
        "refused and invalid requests wrote nothing",
      );
      assert.equal(await webhookEvents(), eventsBefore, "unsigned webhooks wrote nothing");
      assert.ok(auth.fetches() >= 1 && auth.fetches() <= 2, `JWKS fetches: ${auth.fetches()}`);

      // Keys and tokens never reach a log line (each request logs one).
      assert.ok(lines.length >= projects.length * CREDENTIALS.length * ENDPOINTS.length);
      const leaked = lines.filter((line) => secrets.some((secret) => line.includes(secret)));
      assert.deepEqual(leaked, []);
      for (const line of lines) assert.doesNotMatch(line, /sb_(publishable|secret)_|eyJ/);
    } finally {
      await auth.close();
      await stripe.close();
      await sql.end({ timeout: 5 });
    }
  },
});

Deno.test({
  name:
    "stripe-webhook answers a correctly signed event whatever credential comes with it, or none",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const env: Record<string, string> = {
      SUPABASE_DB_URL: databaseUrl(),
      STRIPE_SECRET_KEY: "sk_test_credentials",
      STRIPE_API_BASE: "http://127.0.0.1:9",
      STRIPE_WEBHOOK_SECRET: TEST_WEBHOOK_SECRET,
    };
    const { sessionEvent, signedDelivery } = await import("./support/webhooks.ts");
    const webhook = webhookHandlerFromEnv((name) => env[name]);
    const { lines } = await capturingLogs(async () => {
      const credentials: Record<string, string>[] = [
        {},
        { apikey: OTHER_SECRET },
        bearer(OTHER_SERVICE_ROLE),
      ];
      for (const headers of credentials) {
        const signed = await signedDelivery(
          sessionEvent("payment_intent.created", { id: `pi_${random()}` }),
        );
        const request = new Request(signed.url, {
          method: "POST",
          headers: { ...Object.fromEntries(signed.headers), ...headers },
          body: await signed.text(),
        });
        const response = await webhook(request);
        const body = await response.json();
        assert.equal(response.status, 200, JSON.stringify(body));
        assert.equal(body.received, true);
      }
    });
    assert.ok(lines.length >= 3);
  },
});
