/**
 * The checkout endpoints against the real database and the Stripe-compatible server: the happy
 * path, replays, every kind of mismatch, duplicates in flight, crashes, expiry and sold out.
 */
import assert from "node:assert/strict";
import type { CheckoutStore } from "../supabase/functions/_shared/checkout.ts";
import { loadCheckoutConfig } from "../supabase/functions/_shared/config.ts";
import {
  checkoutRequest,
  guestBody,
  newKey,
  PUBLISHABLE_KEY,
  rowCounts,
  withHarness,
} from "./support/checkout-harness.ts";
import { userToken } from "../scripts/lib/jwt.ts";

Deno.test("guest-checkout creates one order and one Stripe session priced from the tiers", () =>
  withHarness(async (h) => {
    const response = await h.guest(checkoutRequest(guestBody(h)));
    assert.equal(response.status, 201);
    assert.equal(response.headers.get("idempotent-replayed"), "false");
    const body = await response.json();
    assert.deepEqual(Object.keys(body).sort(), ["expiresAt", "orderId", "sessionId", "url"]);

    assert.equal(h.stripe.sessionsCreated(), 1);
    const session = h.stripe.sessions.get(body.sessionId)!;
    assert.equal(session.amount_total, 2 * 1500 + 999, "prices come from the database");
    assert.equal(session.mode, "payment");
    assert.equal(session.client_reference_id, body.orderId);
    assert.equal(session.customer_email, "buyer@example.com");
    assert.equal(session.metadata.order_id, body.orderId);
    assert.equal(session.metadata.event_id, h.event.id);
    assert.match(
      session.metadata.operation_key ?? "",
      /^checkout:create:sf-[0-9a-f-]+:[0-9a-f-]{36}$/,
    );
    assert.equal(body.url, session.url);
    assert.equal(body.expiresAt, new Date(session.expires_at * 1000).toISOString());
    const minutes = (session.expires_at * 1000 - Date.now()) / 60_000;
    assert.ok(minutes > 30 && minutes <= 32.1, `session expires in ${minutes} min`);

    const [order] = await h.sql<
      { status: string; amount_total: number; stripe_checkout_session_id: string }[]
    >`
      select status, amount_total, stripe_checkout_session_id from public.orders where id = ${body.orderId}`;
    assert.deepEqual({ ...order }, {
      status: "pending",
      amount_total: 3999,
      stripe_checkout_session_id: body.sessionId,
    });
  }));

/** The largest CHECKOUT_SESSION_TTL_MINUTES the configuration loader accepts. */
function largestAcceptedTtl(): number {
  const env: Record<string, string> = {
    SUPABASE_DB_URL: "postgresql://localhost/postgres",
    STRIPE_SECRET_KEY: "sk_test_ttl",
    SITE_URL: "http://shop.test",
    SUPABASE_PUBLISHABLE_KEY: PUBLISHABLE_KEY,
  };
  for (let ttl = 48 * 60; ttl >= 30; ttl--) {
    env.CHECKOUT_SESSION_TTL_MINUTES = String(ttl);
    try {
      return loadCheckoutConfig((name) => env[name], { requireUserAuth: false }).sessionTtlMinutes;
    } catch {
      // Refused: try one minute less.
    }
  }
  throw new Error("no CHECKOUT_SESSION_TTL_MINUTES is accepted");
}

Deno.test("the largest accepted CHECKOUT_SESSION_TTL_MINUTES yields a session within Stripe's 24 hours", async () => {
  const ttl = largestAcceptedTtl();
  await withHarness(async (h) => {
    const response = await h.guest(checkoutRequest(guestBody(h)));
    const body = await response.json();
    assert.equal(response.status, 201, JSON.stringify(body));
    const session = h.stripe.sessions.get(body.sessionId)!;
    const hours = (session.expires_at - session.created) / 3600;
    assert.ok(hours > 23.9 && hours <= 24, `session lasts ${hours} h`);
  }, { sessionTtlMinutes: ttl });
});

Deno.test("a retry with the same Idempotency-Key replays the same status and body without calling Stripe", () =>
  withHarness(async (h) => {
    const key = newKey();
    const first = await h.guest(checkoutRequest(guestBody(h), { key }));
    const firstText = await first.text();
    const stripeCalls = h.stripe.requests.length;

    const again = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(again.status, first.status);
    assert.equal(await again.text(), firstText);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.equal(h.stripe.requests.length, stripeCalls, "a replay never reaches Stripe");
    assert.equal(h.logs.at(-1)?.outcome, "replayed");
  }));

Deno.test("the same key with another request is 422 idempotency_key_reused, for every kind of difference", () =>
  withHarness(async (h) => {
    const key = newKey();
    assert.equal((await h.guest(checkoutRequest(guestBody(h), { key }))).status, 201);
    const variants: [string, Request][] = [
      [
        "other items",
        checkoutRequest(guestBody(h, { items: [{ tierId: h.event.floor, quantity: 1 }] }), { key }),
      ],
      ["other email", checkoutRequest(guestBody(h, { email: "mallory@example.com" }), { key })],
      ["other name", checkoutRequest(guestBody(h, { name: "Eve" }), { key })],
      [
        "other redirect",
        checkoutRequest(guestBody(h, { cancelUrl: "http://shop.test/elsewhere" }), { key }),
      ],
    ];
    for (const [why, request] of variants) {
      const response = await h.guest(request);
      assert.equal(response.status, 422, why);
      assert.equal((await response.json()).error.code, "idempotency_key_reused", why);
    }
    const user = await userToken(crypto.randomUUID());
    const { email: _e, name: _n, ...userBody } = guestBody(h);
    const otherEndpoint = await h.enhanced(checkoutRequest(userBody, { key, token: user }));
    assert.equal(otherEndpoint.status, 422, "the other endpoint with the same key");
    assert.equal(h.stripe.sessionsCreated(), 1);
  }));

Deno.test("field order and email case do not make a retry a mismatch", () =>
  withHarness(async (h) => {
    const key = newKey();
    const first = await h.guest(checkoutRequest(guestBody(h), { key }));
    const reordered = {
      name: "Ada",
      email: "buyer@example.COM",
      items: [{ quantity: 1, tierId: h.event.balcony }, { quantity: 2, tierId: h.event.floor }],
      eventId: h.event.id,
    };
    const again = await h.guest(checkoutRequest(reordered, { key }));
    assert.equal(again.status, 201);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(await again.json(), await first.json());
  }));

Deno.test("a duplicate while the first attempt is in flight gets 409 with Retry-After and never calls Stripe", () =>
  withHarness(async (h) => {
    const key = newKey();
    h.stripe.faults.push({ kind: "latency", ms: 400, path: "/v1/checkout/sessions" });
    const first = h.guest(checkoutRequest(guestBody(h), { key }));
    await new Promise((r) => setTimeout(r, 150));
    const duplicate = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(duplicate.status, 409);
    assert.ok(Number(duplicate.headers.get("retry-after")) >= 1);
    assert.equal((await duplicate.json()).error.code, "idempotency_key_in_use");
    assert.equal((await first).status, 201);
    assert.equal(h.stripe.requests.filter((r) => r.method === "POST").length, 1);
  }));

Deno.test("50 concurrent identical requests create exactly one session; every answer is that body or 409", () =>
  withHarness(async (h) => {
    const key = newKey();
    h.stripe.faults.push({ kind: "latency", ms: 100, path: "/v1/checkout/sessions" });
    const responses = await Promise.all(
      Array.from({ length: 50 }, () => h.guest(checkoutRequest(guestBody(h), { key }))),
    );
    assert.equal(h.stripe.sessionsCreated(), 1);
    const bodies = await Promise.all(responses.map((r) => r.text()));
    const created = responses.map((r, i) => [r.status, bodies[i]] as const).filter(([s]) =>
      s === 201
    );
    assert.ok(created.length >= 1);
    assert.equal(new Set(created.map(([, b]) => b)).size, 1, "every 201 carries the same body");
    for (const r of responses) assert.ok([201, 409].includes(r.status), String(r.status));
    const [orders] = await h.sql<{ n: number }[]>`
      select count(*)::int as n from public.orders where event_id = ${h.event.id}`;
    assert.equal(orders?.n, 1, "one order");
  }));

Deno.test("a crash between Stripe's answer and the record: the retry yields the same session", async () => {
  let failNextRecord = true;
  await withHarness(async (h) => {
    const key = newKey();
    const first = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(first.status, 503);
    assert.equal((await first.json()).error.code, "temporarily_unavailable");
    assert.equal(first.headers.get("retry-after"), "1");
    assert.equal(h.stripe.sessionsCreated(), 1);

    const retry = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(retry.status, 201);
    const body = await retry.json();
    assert.equal(
      h.stripe.sessionsCreated(),
      1,
      "Stripe answered the same key with the same session",
    );
    assert.ok(h.stripe.sessions.has(body.sessionId));
    const keys = new Set(
      h.stripe.requests.filter((r) => r.method === "POST").map((r) => r.idempotencyKey),
    );
    assert.equal(keys.size, 1, "both attempts used the same Stripe key");
  }, {
    wrapStore: (store): CheckoutStore => ({
      ...store,
      record: (input) => {
        if (failNextRecord) {
          failNextRecord = false;
          return Promise.reject(new Error("connection lost"));
        }
        return store.record(input);
      },
    }),
  });
});

Deno.test("a replay whose session expired starts a fresh session under a new key instead of a dead link", () =>
  withHarness(async (h) => {
    const key = newKey();
    const first = await (await h.guest(checkoutRequest(guestBody(h), { key }))).json();
    h.stripe.expireSession(first.sessionId);
    await h.sql`update public.orders set status = 'expired' where id = ${first.orderId}`;

    const renewed = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(renewed.status, 201);
    assert.equal(renewed.headers.get("idempotent-replayed"), "false");
    const body = await renewed.json();
    assert.notEqual(body.sessionId, first.sessionId);
    assert.notEqual(body.orderId, first.orderId);
    assert.equal(h.stripe.sessionsCreated(), 2);
    const stripeKeys = h.stripe.requests.filter((r) => r.method === "POST").map((r) =>
      r.idempotencyKey
    );
    assert.equal(new Set(stripeKeys).size, 2, "the fresh attempt used a new Stripe key");
    assert.equal(
      stripeKeys[0]!.slice(0, -36),
      stripeKeys[1]!.slice(0, -36),
      "same operation, new UUID",
    );

    const replay = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(replay.headers.get("idempotent-replayed"), "true");
    assert.equal((await replay.json()).sessionId, body.sessionId);
  }));

Deno.test("a replay of a paid order is 409 order_already_paid", () =>
  withHarness(async (h) => {
    const key = newKey();
    const first = await (await h.guest(checkoutRequest(guestBody(h), { key }))).json();
    await h
      .sql`update public.orders set status = 'paid', paid_at = now() where id = ${first.orderId}`;
    const again = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(again.status, 409);
    assert.equal((await again.json()).error.code, "order_already_paid");
  }));

Deno.test("sold out, unknown event, foreign tier and too many tickets are refused and write nothing", () =>
  withHarness(async (h) => {
    const ok = await h.guest(
      checkoutRequest(guestBody(h, { items: [{ tierId: h.event.last, quantity: 1 }] })),
    );
    assert.equal(ok.status, 201);
    const before = await rowCounts(h.sql);
    const cases: [string, Record<string, unknown>, number, string][] = [
      ["sold out", { items: [{ tierId: h.event.last, quantity: 1 }] }, 409, "sold_out"],
      ["unknown event", { eventId: crypto.randomUUID() }, 404, "event_not_found"],
      [
        "foreign tier",
        { items: [{ tierId: crypto.randomUUID(), quantity: 1 }] },
        404,
        "tier_not_found",
      ],
      [
        "over max_per_order",
        { items: [{ tierId: h.event.floor, quantity: 5 }] },
        400,
        "quantity_exceeds_limit",
      ],
    ];
    for (const [why, change, status, code] of cases) {
      const response = await h.guest(checkoutRequest(guestBody(h, change)));
      assert.equal(response.status, status, why);
      assert.equal((await response.json()).error.code, code, why);
    }
    assert.equal(await rowCounts(h.sql), before, "rejections wrote nothing");
    assert.equal(h.stripe.sessionsCreated(), 1);
  }));

Deno.test("a Stripe 500 is 503 with Retry-After, and the retry gets a new key and succeeds", () =>
  withHarness(async (h) => {
    const key = newKey();
    h.stripe.faults.push({
      kind: "status",
      status: 500,
      storeUnderKey: true,
      path: "/v1/checkout/sessions",
    });
    h.stripe.faults.push({
      kind: "status",
      status: 500,
      storeUnderKey: true,
      path: "/v1/checkout/sessions",
    });
    const first = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(first.status, 503);
    assert.equal((await first.json()).error.code, "payment_provider_unavailable");
    assert.ok(first.headers.get("retry-after"));

    const retry = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(retry.status, 201);
    const keys = h.stripe.requests.filter((r) => r.method === "POST").map((r) => r.idempotencyKey);
    assert.equal(new Set(keys).size, 2, "the burnt key was replaced");
    assert.equal(h.stripe.sessionsCreated(), 1);
    const [orders] = await h.sql<{ statuses: string }[]>`
      select string_agg(status, ',' order by created_at) as statuses from public.orders where event_id = ${h.event.id}`;
    assert.equal(orders?.statuses, "cancelled,pending", "the failed attempt's hold was released");
  }));

Deno.test("a Stripe 4xx is 502 payment_provider_error", () =>
  withHarness(async (h) => {
    h.stripe.faults.push({
      kind: "status",
      status: 402,
      storeUnderKey: true,
      body: { error: { type: "invalid_request_error", message: "nope" } },
      path: "/v1/checkout/sessions",
    });
    const response = await h.guest(checkoutRequest(guestBody(h)));
    assert.equal(response.status, 502);
    const body = await response.json();
    assert.equal(body.error.code, "payment_provider_error");
    assert.ok(!JSON.stringify(body).includes("sk_test"), "no secret in the answer");
  }));

Deno.test("a connection dropped before Stripe answered keeps the key: the retry reaches the same session", () =>
  withHarness(async (h) => {
    const key = newKey();
    // Both the first try and the SDK's own retry are dropped after Stripe created the session.
    h.stripe.faults.push({ kind: "reset_after", path: "/v1/checkout/sessions" });
    h.stripe.faults.push({ kind: "reset_after", path: "/v1/checkout/sessions" });
    h.stripe.faults.push({ kind: "reset_after", path: "/v1/checkout/sessions" });
    const first = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(first.status, 503);
    assert.equal((await first.json()).error.code, "payment_provider_unavailable");
    h.stripe.faults.length = 0;

    const retry = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(retry.status, 201);
    assert.equal(h.stripe.sessionsCreated(), 1, "never a second session");
    const keys = new Set(
      h.stripe.requests.filter((r) => r.method === "POST").map((r) => r.idempotencyKey),
    );
    assert.equal(keys.size, 1);
  }));

Deno.test("enhanced-checkout makes the order the token's user's", () =>
  withHarness(async (h) => {
    const userId = crypto.randomUUID();
    await h.sql`insert into auth.users (id, email) values (${userId}, 'u@example.com')`;
    const { email: _e, name: _n, ...body } = guestBody(h);
    const response = await h.enhanced(checkoutRequest(body, { token: await userToken(userId) }));
    assert.equal(response.status, 201);
    const { orderId } = await response.json();
    const [order] = await h.sql<{ user_id: string; guest_email: string | null }[]>`
      select user_id, guest_email from public.orders where id = ${orderId}`;
    assert.deepEqual({ ...order }, { user_id: userId, guest_email: null });
  }));

Deno.test("every request logs one JSON line with the operation key and never the buyer's email", () =>
  withHarness(async (h) => {
    const key = newKey();
    await h.guest(checkoutRequest(guestBody(h), { key }));
    await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(h.logs.length, 2);
    assert.deepEqual(h.logs.map((l) => l.outcome), ["created", "replayed"]);
    for (const line of h.logs) {
      assert.equal(line.operation, `checkout:create:${key}`);
      assert.equal(typeof line.db_ms, "number");
      assert.equal(typeof line.stripe_ms, "number");
      assert.ok(!JSON.stringify(line).toLowerCase().includes("buyer@example.com"));
    }
  }));

Deno.test("a function killed after Stripe answered: duplicates wait out the lease, then take over the same session", async () => {
  let crashed = false;
  await withHarness(async (h) => {
    const key = newKey();
    const first = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(first.status, 503, "the dying attempt could neither record nor release");
    assert.ok(crashed);

    const early = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(early.status, 409, "the dead attempt's lease is still live");
    assert.equal(h.stripe.sessionsCreated(), 1);

    await new Promise((r) => setTimeout(r, 1_100));
    const later = await h.guest(checkoutRequest(guestBody(h), { key }));
    assert.equal(later.status, 201);
    assert.equal(h.logs.at(-1)?.claim, "takeover");
    const body = await later.json();
    assert.equal(h.stripe.sessionsCreated(), 1, "the takeover got the original session back");
    assert.ok(h.stripe.sessions.has(body.sessionId));
  }, {
    leaseSeconds: 1,
    wrapStore: (store): CheckoutStore => ({
      ...store,
      // The process "dies" between Stripe's answer and the record: nothing after it reaches the
      // database for that attempt.
      record: (input) => {
        if (!crashed) {
          crashed = true;
          return Promise.reject(new Error("killed"));
        }
        return store.record(input);
      },
      release: (input) =>
        crashed && input.error === "record failed"
          ? Promise.reject(new Error("killed"))
          : store.release(input),
    }),
  });
});
