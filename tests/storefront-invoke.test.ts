/**
 * The endpoints called the way a Supabase storefront calls them: supabase-js
 * `functions.invoke` with the Idempotency-Key header, over real HTTP.
 */
import assert from "node:assert/strict";
import { createClient, FunctionsHttpError, type SupabaseClient } from "@supabase/supabase-js";
import { type Harness, newKey, PUBLISHABLE_KEY, startHarness } from "./support/checkout-harness.ts";
import { serveFunctions } from "./support/functions-server.ts";
import { userToken } from "../scripts/lib/jwt.ts";

async function withStorefront(
  fn: (h: Harness, supabase: SupabaseClient) => Promise<void>,
): Promise<void> {
  const h = await startHarness();
  const functions = serveFunctions({ "guest-checkout": h.guest, "enhanced-checkout": h.enhanced });
  // A new project's storefront: the publishable key, which supabase-js sends in apikey.
  const supabase = createClient(functions.url, PUBLISHABLE_KEY, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });
  try {
    await fn(h, supabase);
  } finally {
    await functions.close();
    await h.close();
  }
}

Deno.test("functions.invoke: a guest checkout and its retry with the same Idempotency-Key", () =>
  withStorefront(async (h, supabase) => {
    const key = newKey();
    const body = {
      eventId: h.event.id,
      items: [{ tierId: h.event.balcony, quantity: 2 }],
      email: "guest@example.com",
    };
    const first = await supabase.functions.invoke("guest-checkout", {
      body,
      headers: { "Idempotency-Key": key },
    });
    assert.equal(first.error, null);
    assert.equal(first.response?.status, 201);
    assert.equal(first.response?.headers.get("idempotent-replayed"), "false");
    assert.match(first.data.sessionId, /^cs_test_/);

    const retry = await supabase.functions.invoke("guest-checkout", {
      body,
      headers: { "Idempotency-Key": key },
    });
    assert.equal(retry.response?.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(retry.data, first.data);
    assert.equal(h.stripe.sessionsCreated(), 1);
  }));

Deno.test("functions.invoke: a signed-in buyer's checkout carries their access token", () =>
  withStorefront(async (h, supabase) => {
    const userId = crypto.randomUUID();
    await h.sql`insert into auth.users (id, email) values (${userId}, 'member@example.com')`;
    const { data, error, response } = await supabase.functions.invoke("enhanced-checkout", {
      body: { eventId: h.event.id, items: [{ tierId: h.event.floor, quantity: 1 }] },
      headers: { "Idempotency-Key": newKey(), Authorization: `Bearer ${await userToken(userId)}` },
    });
    assert.equal(error, null);
    assert.equal(response?.status, 201);
    const [order] = await h.sql<{ user_id: string }[]>`
      select user_id from public.orders where id = ${data.orderId}`;
    assert.equal(order?.user_id, userId);
  }));

Deno.test("functions.invoke: the anon key alone is not a signed-in buyer (401 in the error's context)", () =>
  withStorefront(async (h, supabase) => {
    const { data, error } = await supabase.functions.invoke("enhanced-checkout", {
      body: { eventId: h.event.id, items: [{ tierId: h.event.floor, quantity: 1 }] },
      headers: { "Idempotency-Key": newKey() },
    });
    assert.equal(data, null);
    assert.ok(error instanceof FunctionsHttpError);
    const context = error.context as Response;
    assert.equal(context.status, 401);
    assert.equal((await context.json()).error.code, "unauthorized");
  }));

Deno.test("functions.invoke: a missing Idempotency-Key is a 400 the storefront can read", () =>
  withStorefront(async (h, supabase) => {
    const { error } = await supabase.functions.invoke("guest-checkout", {
      body: {
        eventId: h.event.id,
        items: [{ tierId: h.event.floor, quantity: 1 }],
        email: "a@b.co",
      },
    });
    assert.ok(error instanceof FunctionsHttpError);
    const context = error.context as Response;
    assert.equal(context.status, 400);
    assert.equal((await context.json()).error.code, "idempotency_key_missing");
  }));
