/**
 * The pieces of `npm start`: the functions host (each index.ts loaded unchanged, started with
 * only the variables Supabase provisions today), the local Stripe server's hosted checkout page
 * with signed webhook forwarding, and the local keys.
 */
import assert from "node:assert/strict";
import Stripe from "stripe";
import { createTokenVerifier } from "../supabase/functions/_shared/auth.ts";
import {
  captureServeHandler,
  createGateway,
  parseFunctionConfig,
} from "../scripts/functions-host.ts";
import { apiKey, LOCAL_JWT_SECRET, userToken, verifyJwt } from "../scripts/lib/jwt.ts";
import {
  functionsAuthEnv,
  generateLocalKeys,
  localJwks,
  readLocalKeys,
  saveLocalKeys,
} from "../scripts/lib/local-keys.ts";
import { localUserToken, parseTokenArgs } from "../scripts/mint-token.ts";
import { databaseUrl } from "./support/database.ts";
import {
  type CheckoutEventType,
  createWebhookForwarder,
  startStripeServer,
  type WebhookDelivery,
} from "../local/stripe/mod.ts";

const WEBHOOK_SECRET = "whsec_local_dev_test";
const stripeSdk = new Stripe("sk_test_local");
const cryptoProvider = Stripe.createSubtleCryptoProvider();

function sessionParams(): Stripe.Checkout.SessionCreateParams {
  return {
    mode: "payment",
    line_items: [{
      quantity: 2,
      price_data: { currency: "usd", unit_amount: 2500, product_data: { name: "Ticket" } },
    }],
    success_url: "http://shop.test/done?session_id={CHECKOUT_SESSION_ID}",
    cancel_url: "http://shop.test/cart",
    customer_email: "ada@example.com",
  };
}

/** A webhook endpoint that verifies signatures the way stripe-webhook does. */
function startReceiver() {
  const events: { type: string; sessionId: string; status: string }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const body = await req.text();
    try {
      const event = await stripeSdk.webhooks.constructEventAsync(
        body,
        req.headers.get("stripe-signature") ?? "",
        WEBHOOK_SECRET,
        undefined,
        cryptoProvider,
      );
      const session = event.data.object as Stripe.Checkout.Session;
      events.push({ type: event.type, sessionId: session.id, status: session.status ?? "" });
      return Response.json({ received: true });
    } catch {
      return Response.json({ error: "bad signature" }, { status: 400 });
    }
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}/hook`,
    events,
    close: () => server.shutdown(),
  };
}

Deno.test("hosted checkout page: Pay completes the session, delivers a signed event, redirects to success_url", async () => {
  const receiver = startReceiver();
  const deliveries: WebhookDelivery[] = [];
  const forward = createWebhookForwarder({
    url: receiver.url,
    secret: WEBHOOK_SECRET,
    log: () => {},
  });
  await using server = await startStripeServer({
    onSessionChange: async (session, type: CheckoutEventType) => {
      deliveries.push(await forward(session, type));
    },
  });
  try {
    const stripe = new Stripe("sk_test_local", {
      host: "127.0.0.1",
      port: server.port,
      protocol: "http",
      httpClient: Stripe.createFetchHttpClient(),
    });
    const session = await stripe.checkout.sessions.create(sessionParams());
    const page = await fetch(session.url!);
    const html = await page.text();
    assert.match(html, /Pay USD 50\.00/);
    assert.match(html, /<button type="submit">Pay<\/button>/);
    assert.match(html, /<button type="submit">Cancel<\/button>/);

    const cancel = await fetch(`${session.url}/cancel`, { method: "POST", redirect: "manual" });
    await cancel.body?.cancel();
    assert.equal(cancel.status, 303);
    assert.equal(cancel.headers.get("location"), "http://shop.test/cart");
    assert.equal(server.sessions.get(session.id)?.status, "open", "Cancel leaves it open");

    const pay = await fetch(`${session.url}/pay`, { method: "POST", redirect: "manual" });
    await pay.body?.cancel();
    assert.equal(pay.status, 303);
    assert.equal(pay.headers.get("location"), `http://shop.test/done?session_id=${session.id}`);
    // The redirect waited for the delivery, as the storefront then reads the paid order.
    assert.deepEqual(receiver.events, [
      { type: "checkout.session.completed", sessionId: session.id, status: "complete" },
    ]);
    assert.equal(deliveries[0]?.status, 200);
    assert.equal((await stripe.checkout.sessions.retrieve(session.id)).payment_status, "paid");

    const again = await fetch(`${session.url}/pay`, { method: "POST", redirect: "manual" });
    assert.equal(again.status, 409, "a completed session cannot be paid twice");
    assert.doesNotMatch(await again.text(), /<button/);
    const get = await fetch(`${session.url}/pay`);
    await get.body?.cancel();
    assert.equal(get.status, 405);

    await stripe.checkout.sessions.expire(
      (await stripe.checkout.sessions.create(sessionParams())).id,
    );
    for (let i = 0; i < 50 && receiver.events.length < 2; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(receiver.events[1]?.type, "checkout.session.expired");
  } finally {
    await receiver.close();
  }
});

Deno.test("webhook forwarder retries a failed delivery, bounded, and reports the last status", async () => {
  let calls = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    calls += 1;
    return new Response("no", { status: calls < 2 ? 500 : 200 });
  });
  try {
    const forward = createWebhookForwarder({
      url: `http://127.0.0.1:${server.addr.port}/`,
      secret: WEBHOOK_SECRET,
      attempts: 3,
      log: () => {},
    });
    // deno-lint-ignore no-explicit-any
    const session = { id: "cs_test_x", object: "checkout.session" } as any;
    const delivery = await forward(session, "checkout.session.completed");
    assert.deepEqual([delivery.status, delivery.attempts, calls], [200, 2, 2]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("functions host: captures the handler an index.ts passes to Deno.serve, without listening", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/index.ts`,
      `Deno.serve({ port: 1 }, (req) => new Response("hello " + new URL(req.url).pathname));\n`,
    );
    const original = Deno.serve;
    const handler = await captureServeHandler(new URL(`file://${dir}/index.ts`));
    assert.equal(Deno.serve, original, "Deno.serve is restored");
    const info = {
      remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
      completed: Promise.resolve(),
    } as Deno.ServeHandlerInfo<Deno.NetAddr>;
    const response = await handler(new Request("http://x/functions/v1/demo"), info);
    assert.equal(await response.text(), "hello /functions/v1/demo");

    await Deno.writeTextFile(`${dir}/silent.ts`, `export const nothing = 1;\n`);
    await assert.rejects(
      captureServeHandler(new URL(`file://${dir}/silent.ts`)),
      /did not call Deno\.serve/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("functions host: the gateway's JWT check applies to a verify_jwt = true function only, and it serves the JWKS", async () => {
  const echo = () => new Response("reached");
  const gateway = createGateway([
    { name: "open", entrypoint: new URL("file:///open.ts"), verifyJwt: false, handler: echo },
    { name: "closed", entrypoint: new URL("file:///closed.ts"), verifyJwt: true, handler: echo },
  ], { jwtSecret: LOCAL_JWT_SECRET, jwks: { keys: [] } });
  const info = {
    remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
    completed: Promise.resolve(),
  } as Deno.ServeHandlerInfo<Deno.NetAddr>;
  const call = async (path: string, headers: Record<string, string> = {}) => {
    const response = await gateway(
      new Request(`http://host.test${path}`, { method: "POST", headers }),
      info,
    );
    return [response.status, await response.text()] as const;
  };
  assert.deepEqual(await call("/functions/v1/open"), [200, "reached"]);
  assert.equal((await call("/functions/v1/closed"))[0], 401);
  const anon = `Bearer ${await apiKey("anon", LOCAL_JWT_SECRET)}`;
  assert.deepEqual(await call("/functions/v1/closed", { authorization: anon }), [200, "reached"]);
  const jwksResponse = await gateway(
    new Request("http://host.test/auth/v1/.well-known/jwks.json"),
    info,
  );
  assert.deepEqual(await jwksResponse.json(), { keys: [] });
});

Deno.test("functions host: config.toml verify_jwt per function", async () => {
  const config = parseFunctionConfig(
    await Deno.readTextFile(new URL("../supabase/config.toml", import.meta.url)),
  );
  for (
    const name of ["enhanced-checkout", "guest-checkout", "reconcile-checkouts", "stripe-webhook"]
  ) {
    assert.equal(config.get(name)?.verifyJwt, false, `${name} checks its caller itself`);
  }
  assert.equal(config.get("guest-checkout")?.entrypoint, "./functions/guest-checkout/index.ts");
});

Deno.test("functions host: the real functions start with only the new variables and check their callers themselves", async () => {
  const keys = await generateLocalKeys();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-sys",
      "scripts/functions-host.ts",
    ],
    cwd: new URL("../", import.meta.url).pathname,
    // No SUPABASE_JWT_SECRET, no anon or service_role key; SUPABASE_URL is the host's own.
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "/root",
      ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
      PORT: "0",
      SUPABASE_DB_URL: databaseUrl(),
      STRIPE_SECRET_KEY: "sk_test_local",
      STRIPE_API_BASE: "http://127.0.0.1:9",
      SITE_URL: "http://shop.test",
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      ...await functionsAuthEnv(keys),
      NO_COLOR: "1",
    },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let output = "";
    let base: string | undefined;
    const deadline = Date.now() + 60_000;
    while (!base && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      output += value;
      base = /listening on (http:\/\/\S+?)\/functions\/v1\//.exec(output)?.[1];
    }
    assert.ok(base, `the host did not start:\n${output}`);
    assert.doesNotMatch(output, /FAILED/);
    for (
      const name of ["enhanced-checkout", "guest-checkout", "reconcile-checkouts", "stripe-webhook"]
    ) {
      assert.match(output, new RegExp(`functions-host: ${name} \\(checks its caller itself\\)`));
    }
    const call = async (path: string, init: RequestInit = {}) => {
      const response = await fetch(`${base}/functions/v1/${path}`, init);
      return [response.status, await response.json().catch(() => null)] as const;
    };
    const post = (headers: Record<string, string>, body = "{}") => ({
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body,
    });
    assert.deepEqual(await call("nope", { method: "POST" }), [404, {
      error: { code: "not_found", message: "Function not found" },
    }]);
    // The local stand-in for Supabase Auth publishes the signing key.
    const jwksResponse = await fetch(`${base}/auth/v1/.well-known/jwks.json`);
    assert.deepEqual(await jwksResponse.json(), await localJwks(keys));

    // guest-checkout: no key → its own 401; the publishable key → on to the Idempotency-Key.
    const [noKey, noKeyBody] = await call("guest-checkout", post({}));
    assert.equal(noKey, 401);
    assert.equal(noKeyBody.error.code, "unauthorized");
    const [status, body] = await call("guest-checkout", post({ apikey: keys.publishableKey }));
    assert.equal(status, 400);
    assert.equal(body.error.code, "idempotency_key_missing");

    // enhanced-checkout: an ES256 token from the local signing key, issued by the host's
    // SUPABASE_URL, passes (the empty body is then refused); an HS256 one does not.
    const idempotency = { "idempotency-key": `local-dev-${crypto.randomUUID()}` };
    const es256 = await localUserToken(crypto.randomUUID(), {
      key: keys.signingKey,
      supabaseUrl: base,
    });
    const [userStatus, userBody] = await call(
      "enhanced-checkout",
      post({ authorization: `Bearer ${es256}`, ...idempotency }),
    );
    assert.equal(userStatus, 400, JSON.stringify(userBody));
    assert.equal(userBody.error.code, "validation_failed");
    const hs256 = await userToken(crypto.randomUUID(), { iss: `${base}/auth/v1` });
    assert.equal(
      (await call("enhanced-checkout", post({ authorization: `Bearer ${hs256}`, ...idempotency })))[
        0
      ],
      401,
      "no legacy secret configured: HS256 is refused",
    );

    // stripe-webhook: no credential needed, its handler checks the signature.
    const [hookStatus] = await call("stripe-webhook", { method: "POST", body: "{}" });
    assert.equal(hookStatus, 400);
    // reconcile-checkouts: the secret key only.
    assert.equal(
      (await call("reconcile-checkouts", post({ apikey: keys.publishableKey })))[0],
      401,
    );
    assert.equal(
      (await call("reconcile-checkouts", post({ authorization: `Bearer ${es256}` })))[0],
      401,
    );
    const [reconciled, summary] = await call(
      "reconcile-checkouts",
      post({ apikey: keys.secretKey }),
    );
    assert.equal(reconciled, 200, JSON.stringify(summary));
  } finally {
    child.kill("SIGTERM");
    await reader.cancel().catch(() => {});
    await child.status;
  }
});

Deno.test("local keys: kept across restarts; npm run token's ES256 tokens verify against the published JWKS", async () => {
  // The legacy demo anon key is still exactly the one a local Supabase prints.
  assert.equal(
    await apiKey("anon", LOCAL_JWT_SECRET),
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0",
  );
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/keys.json`;
    const keys = await generateLocalKeys();
    assert.match(keys.publishableKey, /^sb_publishable_[0-9a-f]{32}$/);
    assert.match(keys.secretKey, /^sb_secret_[0-9a-f]{48}$/);
    await saveLocalKeys(file, keys, "http://127.0.0.1:54321");
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600, "readable by its owner only");
    const saved = await readLocalKeys(file);
    assert.equal(saved?.supabaseUrl, "http://127.0.0.1:54321");
    assert.equal(saved?.keys.publishableKey, keys.publishableKey);
    assert.deepEqual(await localJwks(saved!.keys), await localJwks(keys), "the same key pair");

    const userId = crypto.randomUUID();
    const token = await localUserToken(userId, {
      key: saved!.keys.signingKey,
      supabaseUrl: "http://127.0.0.1:54321",
      email: "a@b.co",
    });
    assert.equal(JSON.parse(atob(token.split(".")[0]!)).alg, "ES256");
    const verify = createTokenVerifier({
      jwks: await localJwks(keys),
      issuer: "http://127.0.0.1:54321/auth/v1",
    });
    const claims = await verify(`Bearer ${token}`);
    assert.equal(claims.sub, userId);
    assert.equal(claims.email, "a@b.co");
    assert.equal(await verifyJwt(token, LOCAL_JWT_SECRET), null, "not an HS256 token");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const userId = crypto.randomUUID();
  assert.deepEqual(parseTokenArgs([userId.toUpperCase(), "--email", "a@b.co"]), {
    userId,
    email: "a@b.co",
  });
  assert.throws(() => parseTokenArgs(["nope"]), /not a user uuid/);
});
