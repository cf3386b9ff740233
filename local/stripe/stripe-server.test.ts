/**
 * The local Stripe server, driven through the real `stripe` SDK the way production code uses it
 * (fetch HTTP client, pinned API version, explicit idempotency keys, no SDK retries).
 */
import assert from "node:assert/strict";
import {
  isStripeError,
  responseHeader,
  startWebhookReceiver,
  withLocalStripe,
} from "./test-support.ts";
import Stripe from "stripe";
import {
  createWebhookForwarder,
  decodeStripeForm,
  startStripeServer,
  type StripeServer,
  type StripeServerOptions,
} from "./mod.ts";

const NOW_SECONDS = () => Math.floor(Date.now() / 1000);

function stripeFor(server: StripeServer, apiKey = "sk_test_local", timeout?: number): Stripe {
  return new Stripe(apiKey, {
    host: "127.0.0.1",
    port: server.port,
    protocol: "http",
    httpClient: Stripe.createFetchHttpClient(),
    maxNetworkRetries: 0,
    apiVersion: Stripe.API_VERSION,
    ...(timeout === undefined ? {} : { timeout }),
  });
}

function ticketParams(
  overrides: Partial<Stripe.Checkout.SessionCreateParams> = {},
): Stripe.Checkout.SessionCreateParams {
  return {
    mode: "payment",
    line_items: [{
      quantity: 2,
      price_data: {
        currency: "usd",
        unit_amount: 2500,
        product_data: { name: "General admission" },
      },
    }],
    success_url: "https://tickets.example/ok?session_id={CHECKOUT_SESSION_ID}",
    cancel_url: "https://tickets.example/cancel",
    customer_email: "ada@example.com",
    client_reference_id: "order_123",
    metadata: { order_id: "order_123" },
    ...overrides,
  };
}

function withServer(
  run: (server: StripeServer, stripe: Stripe) => Promise<void>,
  options: StripeServerOptions = {},
): Promise<void> {
  return withLocalStripe(run, options, (server) => stripeFor(server));
}

Deno.test("decodes Stripe's bracket encoding into nested objects and arrays", () => {
  const decoded = decodeStripeForm(
    "mode=payment&line_items[0][quantity]=1&line_items[0][price_data][currency]=usd" +
      "&line_items[1][quantity]=2&metadata[order_id]=o%201&expand[]=line_items&metadata[__proto__]=x",
  );
  assert.deepEqual(JSON.parse(JSON.stringify(decoded)), {
    mode: "payment",
    line_items: [{ quantity: "1", price_data: { currency: "usd" } }, { quantity: "2" }],
    metadata: { order_id: "o 1", ["__proto__"]: "x" },
    expand: ["line_items"],
  });
  assert.equal(Object.getPrototypeOf(decoded.metadata), Object.prototype);
  assert.throws(() => decodeStripeForm("a=1&a[b]=2"), /Conflicting parameter/);
  assert.throws(() => decodeStripeForm("a[0]=1&a[b]=2"), /Conflicting parameter/);
  assert.throws(() => decodeStripeForm("a[]=1&a[][b]=2"), /Invalid array index/);
});

Deno.test("creates a Checkout Session shaped like Stripe's, with a pay page on the server", async () => {
  await withServer(async (server, stripe) => {
    const before = NOW_SECONDS();
    const session = await stripe.checkout.sessions.create(ticketParams(), {
      idempotencyKey: "order_123:checkout",
    });
    assert.match(session.id, /^cs_test_[A-Za-z0-9]{58}$/);
    assert.equal(session.object, "checkout.session");
    assert.equal(session.url, `${server.url}/c/pay/${session.id}`);
    assert.deepEqual(
      [session.status, session.payment_status, session.mode, session.ui_mode],
      ["open", "unpaid", "payment", "hosted_page"],
    );
    assert.deepEqual([session.amount_subtotal, session.amount_total, session.currency], [
      5000,
      5000,
      "usd",
    ]);
    assert.equal(session.customer_email, "ada@example.com");
    assert.equal(session.client_reference_id, "order_123");
    assert.deepEqual(session.metadata, { order_id: "order_123" });
    assert.equal(session.payment_intent, null);
    assert.equal(session.livemode, false);
    assert.ok(session.created >= before);
    assert.equal(session.expires_at, session.created + 24 * 3600);
    assert.match(session.lastResponse.requestId, /^req_/);

    const [request] = server.requests;
    assert.equal(request?.stripeVersion, Stripe.API_VERSION);
    assert.equal(request?.idempotencyKey, "order_123:checkout");

    const items = await stripe.checkout.sessions.listLineItems(session.id);
    assert.deepEqual(
      items.data.map((item) => [item.description, item.quantity, item.amount_total]),
      [["General admission", 2, 5000]],
    );

    const page = await fetch(session.url ?? "");
    assert.match(await page.text(), /Pay USD 50\.00/);
    assert.match(page.headers.get("request-id") ?? "", /^req_/);
  });
});

Deno.test("replays the same session for a retried Idempotency-Key and creates no second one", async () => {
  await withServer(async (server, stripe) => {
    const first = await stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-1" });
    const again = await stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-1" });
    assert.equal(again.id, first.id);
    assert.equal(responseHeader(again, "idempotent-replayed"), "true");
    assert.equal(responseHeader(again, "idempotency-key"), "k-1");
    assert.equal(responseHeader(again, "original-request"), first.lastResponse.requestId);
    assert.notEqual(again.lastResponse.requestId, first.lastResponse.requestId);
    assert.equal(server.sessionsCreated(), 1);
    assert.deepEqual(server.requests.map((r) => r.replayed), [false, true]);

    const other = await stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-2" });
    assert.notEqual(other.id, first.id);
    assert.equal(server.sessionsCreated(), 2);
  });
});

Deno.test("scopes idempotency keys to the API key", async () => {
  await withServer(async (server, stripe) => {
    const other = stripeFor(server, "sk_test_other_account");
    const a = await stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "shared" });
    const b = await other.checkout.sessions.create(ticketParams(), { idempotencyKey: "shared" });
    assert.notEqual(a.id, b.id);
    assert.equal(server.sessionsCreated(), 2);
  });
});

Deno.test("rejects a key reused with different parameters with StripeIdempotencyError 400", async () => {
  await withServer(async (server, stripe) => {
    await stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-1" });
    await assert.rejects(
      stripe.checkout.sessions.create(ticketParams({ client_reference_id: "order_999" }), {
        idempotencyKey: "k-1",
      }),
      isStripeError(Stripe.errors.StripeIdempotencyError, (error) => {
        assert.equal(error.statusCode, 400);
        assert.equal(error.type, "StripeIdempotencyError");
        assert.equal((error.raw as { type?: string }).type, "idempotency_error");
        assert.match(error.message, /same parameters they were first used with/);
      }),
    );
    // Reusing the key on another endpoint is the same misuse.
    const [session] = server.sessions.keys();
    await assert.rejects(
      stripe.checkout.sessions.expire(session ?? "", {}, { idempotencyKey: "k-1" }),
      isStripeError(Stripe.errors.StripeIdempotencyError),
    );
    assert.equal(server.sessionsCreated(), 1);
  });
});

Deno.test("answers 409 idempotency_key_in_use to a concurrent same-key request; one session", async () => {
  await withServer(async (server, stripe) => {
    server.faults.push({ kind: "latency", ms: 300, path: "/v1/checkout/sessions" });
    const results = await Promise.allSettled([
      stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-race" }),
      stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-race" }),
    ]);
    const created = results.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
    const refused = results.flatMap((r) => r.status === "rejected" ? [r.reason] : []);
    assert.equal(created.length, 1);
    assert.equal(refused.length, 1);
    // The SDK has no 409 class: it surfaces as StripeAPIError, with Stripe's code.
    isStripeError(Stripe.errors.StripeAPIError, (error) => {
      assert.equal(error.statusCode, 409);
      assert.equal(error.code, "idempotency_key_in_use");
    })(refused[0]);
    assert.equal(server.sessionsCreated(), 1);

    // The 409 was not saved: a later retry replays the session that was created.
    const retry = await stripe.checkout.sessions.create(ticketParams(), {
      idempotencyKey: "k-race",
    });
    assert.equal(retry.id, created[0]?.id);
    assert.equal(server.sessionsCreated(), 1);
  });
});

Deno.test("rejects expires_at outside 30 minutes..24 hours with param expires_at, unsaved", async () => {
  await withServer(async (server, stripe) => {
    for (const expiresAt of [NOW_SECONDS() + 10 * 60, NOW_SECONDS() + 25 * 3600]) {
      await assert.rejects(
        stripe.checkout.sessions.create(ticketParams({ expires_at: expiresAt }), {
          idempotencyKey: "k-exp",
        }),
        isStripeError(Stripe.errors.StripeInvalidRequestError, (error) => {
          assert.equal(error.statusCode, 400);
          assert.equal(error.param, "expires_at");
        }),
      );
    }
    assert.equal(server.sessionsCreated(), 0);
    // Validation failures are not saved, so the same key works once the parameters are fixed.
    const expiresAt = NOW_SECONDS() + 31 * 60;
    const session = await stripe.checkout.sessions.create(
      ticketParams({ expires_at: expiresAt }),
      { idempotencyKey: "k-exp" },
    );
    assert.equal(session.expires_at, expiresAt);
  });
});

Deno.test("validates line items, currency, metadata and client_reference_id like Stripe", async () => {
  await withServer(async (server, stripe) => {
    const rejectsParam = (params: Stripe.Checkout.SessionCreateParams, param: string) =>
      assert.rejects(
        stripe.checkout.sessions.create(params),
        isStripeError(Stripe.errors.StripeInvalidRequestError, (e) => assert.equal(e.param, param)),
      );
    const item = (priceData: Record<string, unknown>, quantity = 1) =>
      ({
        quantity,
        price_data: { product_data: { name: "Ticket" }, ...priceData },
      }) as Stripe.Checkout.SessionCreateParams.LineItem;
    await rejectsParam(ticketParams({ line_items: [] }), "line_items");
    await rejectsParam(
      ticketParams({ line_items: [item({ currency: "usd", unit_amount: 100 }, 0)] }),
      "line_items[0][quantity]",
    );
    await rejectsParam(
      ticketParams({ line_items: [item({ currency: "USD", unit_amount: 100 })] }),
      "line_items[0][price_data][currency]",
    );
    await rejectsParam(
      ticketParams({ line_items: [item({ currency: "usd", unit_amount: -1 })] }),
      "line_items[0][price_data][unit_amount]",
    );
    await rejectsParam(
      ticketParams({
        line_items: [
          item({ currency: "usd", unit_amount: 1 }),
          item({ currency: "eur", unit_amount: 1 }),
        ],
      }),
      "line_items",
    );
    await rejectsParam(
      ticketParams({ line_items: [{ price: "price_unknown", quantity: 1 }] }),
      "line_items[0][price]",
    );
    await rejectsParam(ticketParams({ success_url: undefined }), "success_url");
    await rejectsParam(
      ticketParams({ client_reference_id: "x".repeat(201) }),
      "client_reference_id",
    );
    await rejectsParam(
      ticketParams({ metadata: { ["k".repeat(41)]: "v" } }),
      `metadata[${"k".repeat(41)}]`,
    );
    await rejectsParam(ticketParams({ customer_email: "not-an-email" }), "customer_email");
    await rejectsParam({ ...ticketParams(), ...{ bogus: "1" } }, "bogus");
    assert.equal(server.sessionsCreated(), 0);
  });
});

Deno.test("replays a 500 saved under the key instead of executing again", async () => {
  await withServer(async (server, stripe) => {
    server.faults.push({ kind: "status", status: 500, storeUnderKey: true });
    const fails = () =>
      stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-500" });
    await assert.rejects(fails(), isStripeError(Stripe.errors.StripeAPIError));
    await assert.rejects(
      fails(),
      isStripeError(Stripe.errors.StripeAPIError, (error) => {
        assert.equal(error.statusCode, 500);
        assert.equal(error.headers?.["idempotent-replayed"], "true");
      }),
    );
    assert.equal(server.sessionsCreated(), 0);
    // A new key is a new request.
    await stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-500b" });
    assert.equal(server.sessionsCreated(), 1);
  });
});

Deno.test("does not save a 503 or 429 that never reached the endpoint", async () => {
  await withServer(async (server, stripe) => {
    server.faults.push({ kind: "status", status: 503 }, { kind: "status", status: 429 });
    const attempt = () =>
      stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-edge" });
    await assert.rejects(attempt(), isStripeError(Stripe.errors.StripeAPIError));
    await assert.rejects(attempt(), isStripeError(Stripe.errors.StripeRateLimitError));
    const session = await attempt();
    assert.equal(responseHeader(session, "idempotent-replayed"), null);
    assert.equal(server.sessionsCreated(), 1);
  });
});

/** With `fault` armed, a create under `key` on a fresh connection fails: StripeConnectionError. */
async function assertConnectionReset(
  server: StripeServer,
  stripe: Stripe,
  options: { fault: "reset_before" | "reset_after"; key: string },
): Promise<void> {
  server.faults.push({ kind: options.fault });
  await assert.rejects(
    stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: options.key }),
    isStripeError(Stripe.errors.StripeConnectionError),
  );
}

Deno.test("reset_before on a fresh connection: StripeConnectionError and no session", async () => {
  await withServer(async (server, stripe) => {
    await assertConnectionReset(server, stripe, { fault: "reset_before", key: "k-rb" });
    assert.equal(server.sessionsCreated(), 0);
    assert.deepEqual(
      server.requests.map((r) => [r.status, r.fault]),
      [[null, "reset_before"]],
    );
  });
});

Deno.test("reset_after: the SDK sees a connection error, the session exists, a retry returns it", async () => {
  await withServer(async (server, stripe) => {
    await assertConnectionReset(server, stripe, { fault: "reset_after", key: "k-ra" });
    assert.equal(server.sessionsCreated(), 1);
    const [created] = server.sessions.keys();

    const retry = await stripe.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-ra" });
    assert.equal(retry.id, created);
    assert.equal(responseHeader(retry, "idempotent-replayed"), "true");
    assert.equal(server.sessionsCreated(), 1);
  });
});

Deno.test("Deno's fetch resends a POST once when a reused connection drops; the key dedupes it", async () => {
  await withServer(async (server, stripe) => {
    // Warm the keep-alive connection, then drop it after the endpoint ran.
    await assert.rejects(stripe.checkout.sessions.retrieve("cs_test_missing"));
    server.faults.push({ kind: "reset_after" });
    const session = await stripe.checkout.sessions.create(ticketParams(), {
      idempotencyKey: "k-warm",
    });
    assert.deepEqual(
      server.requests.map((r) => [r.method, r.status, r.replayed, r.fault]),
      [
        ["GET", 404, false, null],
        ["POST", null, false, "reset_after"],
        ["POST", 200, true, null],
      ],
    );
    assert.equal(responseHeader(session, "idempotent-replayed"), "true");
    assert.equal(server.sessionsCreated(), 1);
  });
});

Deno.test("a timeout fault saves the result but answers late; the retry replays it", async () => {
  await using server = await startStripeServer();
  const impatient = stripeFor(server, "sk_test_local", 200);
  server.faults.push({ kind: "timeout", ms: 5_000 });
  await assert.rejects(
    impatient.checkout.sessions.create(ticketParams(), { idempotencyKey: "k-slow" }),
    isStripeError(Stripe.errors.StripeConnectionError, (e) => assert.match(e.message, /timeout/)),
  );
  const retry = await impatient.checkout.sessions.create(ticketParams(), {
    idempotencyKey: "k-slow",
  });
  assert.equal(responseHeader(retry, "idempotent-replayed"), "true");
  assert.equal(server.sessionsCreated(), 1);
});

Deno.test("rejects a bad API key with 401 StripeAuthenticationError", async () => {
  await withServer(async (server) => {
    for (const key of ["sk_live_real", "rk_test_restricted"]) {
      await assert.rejects(
        stripeFor(server, key).checkout.sessions.create(ticketParams()),
        isStripeError(Stripe.errors.StripeAuthenticationError, (e) => {
          assert.equal(e.statusCode, 401);
          assert.equal((e.raw as { type?: string }).type, "invalid_request_error");
        }),
      );
    }
    assert.equal(server.sessionsCreated(), 0);
  });
  await withServer(async (server) => {
    await assert.rejects(
      stripeFor(server, "sk_test_someone_else").checkout.sessions.retrieve("cs_test_x"),
      isStripeError(Stripe.errors.StripeAuthenticationError),
    );
    await stripeFor(server, "sk_test_exact").checkout.sessions.create(ticketParams());
  }, { secretKey: "sk_test_exact" });
});

Deno.test("retrieves and expires a session; unknown ids are 404 resource_missing", async () => {
  const changes: string[] = [];
  await withServer(async (server, stripe) => {
    const session = await stripe.checkout.sessions.create(ticketParams());
    assert.equal((await stripe.checkout.sessions.retrieve(session.id)).status, "open");

    const expired = await stripe.checkout.sessions.expire(session.id);
    assert.equal(expired.status, "expired");
    assert.equal(expired.url, null);
    assert.equal((await stripe.checkout.sessions.retrieve(session.id)).status, "expired");
    await assert.rejects(
      stripe.checkout.sessions.expire(session.id),
      isStripeError(
        Stripe.errors.StripeInvalidRequestError,
        (e) => assert.equal(e.statusCode, 400),
      ),
    );
    await assert.rejects(
      stripe.checkout.sessions.retrieve("cs_test_nope"),
      isStripeError(Stripe.errors.StripeInvalidRequestError, (e) => {
        assert.equal(e.statusCode, 404);
        assert.equal(e.code, "resource_missing");
      }),
    );
    assert.deepEqual(server.sessions.get(session.id)?.status, "expired");
  }, { onSessionChange: (session, event) => changes.push(`${event}:${session.status}`) });
  assert.deepEqual(changes, ["checkout.session.expired:expired"]);
});

Deno.test("completeSession and the clock drive sessions to complete and expired", async () => {
  let now = Date.now();
  const changes: string[] = [];
  await withServer(async (server, stripe) => {
    const paid = await stripe.checkout.sessions.create(ticketParams());
    const completed = server.completeSession(paid.id);
    assert.deepEqual([completed.status, completed.payment_status], ["complete", "paid"]);
    assert.match(completed.payment_intent ?? "", /^pi_/);
    assert.equal((await stripe.checkout.sessions.retrieve(paid.id)).payment_status, "paid");
    assert.throws(() => server.expireSession(paid.id), /status is complete/);

    const late = await stripe.checkout.sessions.create(
      ticketParams({ expires_at: Math.floor(now / 1000) + 3600 }),
    );
    now += 3601 * 1000;
    assert.deepEqual(server.sweepExpired(), [late.id]);
    assert.equal((await stripe.checkout.sessions.retrieve(late.id)).status, "expired");
  }, {
    now: () => now,
    onSessionChange: (session, event) => changes.push(`${event}:${session.id.slice(0, 8)}`),
  });
  assert.deepEqual(changes, [
    "checkout.session.completed:cs_test_",
    "checkout.session.expired:cs_test_",
  ]);
});

Deno.test("a paid payment-mode session carries its payment_intent: retrieve, checkout.session.completed, its charge", async () => {
  const secret = "whsec_local_session_events_test";
  await using receiver = startWebhookReceiver(secret);
  const forward = createWebhookForwarder({ url: receiver.url, secret, log: () => {} });
  await withServer(async (server, stripe) => {
    // Paid by the customer on the hosted page.
    const session = await stripe.checkout.sessions.create(ticketParams());
    assert.equal((await stripe.checkout.sessions.retrieve(session.id)).payment_intent, null);
    const pay = await fetch(`${session.url}/pay`, { method: "POST", redirect: "manual" });
    await pay.body?.cancel();
    assert.equal(pay.status, 303);
    const paid = await stripe.checkout.sessions.retrieve(session.id, { expand: ["line_items"] });
    assert.deepEqual([paid.status, paid.payment_status], ["complete", "paid"]);
    assert.match(String(paid.payment_intent), /^pi_[A-Za-z0-9]{24}$/);
    await receiver.waitFor(1);
    const completed = receiver.events[0]!;
    assert.equal(completed.type, "checkout.session.completed");
    const object = completed.data.object as Stripe.Checkout.Session;
    assert.equal(object.id, session.id);
    assert.equal(object.payment_intent, paid.payment_intent);
    assert.equal(object.payment_status, "paid");
    const charges = [...server.charges.values()];
    assert.deepEqual(charges.map((charge) => charge.payment_intent), [paid.payment_intent]);

    // Completed by the test, the same; an expired session never gets one.
    const other = await stripe.checkout.sessions.create(ticketParams());
    const byTest = server.completeSession(other.id);
    assert.match(String(byTest.payment_intent), /^pi_/);
    assert.notEqual(byTest.payment_intent, paid.payment_intent);
    assert.equal(
      (await stripe.checkout.sessions.retrieve(other.id)).payment_intent,
      byTest.payment_intent,
    );
    const lapsed = await stripe.checkout.sessions.expire(
      (await stripe.checkout.sessions.create(ticketParams())).id,
    );
    assert.equal(lapsed.payment_intent, null);
    await receiver.waitFor(3);
    const events = receiver.events.slice(1).map((event) => {
      const { id, payment_intent } = event.data.object as Stripe.Checkout.Session;
      return [event.type, id, payment_intent];
    }).sort();
    assert.deepEqual(events, [
      ["checkout.session.completed", other.id, byTest.payment_intent],
      ["checkout.session.expired", lapsed.id, null],
    ]);
  }, { onEvent: forward });
});

Deno.test("answers unknown routes, wrong methods and oversized keys with Stripe errors", async () => {
  await withServer(async (server) => {
    const call = async (method: string, path: string, headers: Record<string, string> = {}) => {
      const response = await fetch(`${server.url}${path}`, {
        method,
        headers: { authorization: "Bearer sk_test_local", ...headers },
        body: method === "POST" ? "" : undefined,
      });
      const body = await response.json();
      assert.match(response.headers.get("request-id") ?? "", /^req_/);
      return [response.status, body.error?.type] as const;
    };
    assert.deepEqual(await call("GET", "/v1/unknown"), [404, "invalid_request_error"]);
    assert.deepEqual(await call("DELETE", "/v1/checkout/sessions/cs_test_x"), [
      405,
      "invalid_request_error",
    ]);
    assert.deepEqual(
      await call("POST", "/v1/checkout/sessions", { "idempotency-key": "k".repeat(256) }),
      [400, "invalid_request_error"],
    );
    assert.deepEqual(await call("GET", "/v1/checkout/sessions/x", { authorization: "" }), [
      401,
      "invalid_request_error",
    ]);
  });
});
