/**
 * Hold flooding: one client must not lock up an event by opening checkouts it never pays.
 * Pending holds are limited per buyer (a user, or a guest email from one address) and per client
 * address, the one the platform's proxy appended; replays are never limited.
 */
import assert from "node:assert/strict";
import type { ClientAddressConfig } from "../supabase/functions/_shared/client-address.ts";
import { checkoutRequest, type Harness, newKey, withHarness } from "./support/checkout-harness.ts";
import { userToken } from "../scripts/lib/jwt.ts";

const LIMITS = { maxPendingPerBuyer: 2, maxPendingPerAddress: 3, windowSeconds: 1800 };

function withLimits(fn: (h: Harness) => Promise<void>, clientAddress?: ClientAddressConfig) {
  return withHarness(fn, { holdLimits: LIMITS, clientAddress });
}

/**
 * A documentation-range IPv6 address unique to this run, so reruns on one database never collide;
 * no group is zero, so it is already in the normalized form the database returns.
 */
function randomAddress(): string {
  const hex = () => (1 + Math.floor(Math.random() * 0xffff)).toString(16);
  return `2001:db8:${hex()}:${hex()}::${hex()}`;
}

/** A guest checkout from `address`: the platform's proxy appended it after a hop the client wrote. */
function order(h: Harness, email: string, address = randomAddress(), key = newKey()) {
  return guestOrder(h, email, { "x-forwarded-for": `10.0.0.1, ${address}` }, key);
}

function guestOrder(
  h: Harness,
  email: string,
  headers: Record<string, string>,
  key = newKey(),
) {
  return h.guest(checkoutRequest(
    { eventId: h.event.id, items: [{ tierId: h.event.balcony, quantity: 10 }], email },
    { key, headers },
  ));
}

/**
 * Guest checkouts in a row, one per status in `expected`, each from a fresh
 * `tag-i-…@example.com` with the headers `headers()` builds; `check` sees every response as it
 * arrives. Asserts that the statuses were `expected`, in order.
 */
async function assertGuestStatuses(
  h: Harness,
  expected: number[],
  options: {
    tag: string;
    headers: () => Record<string, string>;
    check?: (response: Response, i: number) => Promise<void>;
    message?: string;
  },
): Promise<void> {
  const statuses = [];
  for (let i = 0; i < expected.length; i++) {
    const email = `${options.tag}-${i}-${crypto.randomUUID()}@example.com`;
    const response = await guestOrder(h, email, options.headers());
    statuses.push(response.status);
    await options.check?.(response, i);
  }
  assert.deepEqual(statuses, expected, options.message);
}

async function storedAddress(h: Harness, response: Response): Promise<string | null> {
  const { orderId } = await response.json();
  const [row] = await h.sql<{ address: string | null }[]>`
    select host(client_address) as address from public.orders where id = ${orderId}`;
  return row!.address;
}

Deno.test("a guest email from one address holds at most the configured pending checkouts; replays are never limited", () =>
  withLimits(async (h) => {
    const email = `flood-${crypto.randomUUID()}@example.com`;
    const first = newKey();
    const firstAddress = randomAddress();
    assert.equal((await order(h, email, firstAddress, first)).status, 201);
    assert.equal((await order(h, email, firstAddress)).status, 201);
    const sessions = h.stripe.sessionsCreated();

    const third = await order(h, email, firstAddress);
    assert.equal(third.status, 429);
    assert.equal((await third.json()).error.code, "too_many_pending_checkouts");
    const retryAfter = Number(third.headers.get("retry-after"));
    assert.ok(retryAfter >= 1 && retryAfter <= 1800, String(retryAfter));
    assert.equal(h.stripe.sessionsCreated(), sessions, "no session for a refused checkout");

    const replay = await order(h, email, firstAddress, first);
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get("idempotent-replayed"), "true", "a replay is never limited");
  }));

Deno.test("a client address holds at most the configured pending checkouts across emails", () =>
  withLimits(async (h) => {
    const address = randomAddress();
    const statuses = [];
    for (let i = 0; i < 5; i++) {
      statuses.push(
        (await order(h, `addr-${i}-${crypto.randomUUID()}@example.com`, address)).status,
      );
    }
    assert.deepEqual(statuses, [201, 201, 201, 429, 429]);
    const other = await order(h, `other-${crypto.randomUUID()}@example.com`, randomAddress());
    assert.equal(other.status, 201, "another address is not affected");
  }));

Deno.test("concurrent checkouts of one buyer cannot race past the limit", () =>
  withLimits(async (h) => {
    const email = `race-${crypto.randomUUID()}@example.com`;
    const address = randomAddress();
    const responses = await Promise.all(
      Array.from({ length: 10 }, () => order(h, email, address)),
    );
    const statuses = responses.map((r) => r.status).sort();
    assert.equal(
      statuses.filter((s) => s === 201).length,
      LIMITS.maxPendingPerBuyer,
      statuses.join(),
    );
    assert.equal(statuses.filter((s) => s === 429).length, 10 - LIMITS.maxPendingPerBuyer);
  }));

Deno.test("a paid or expired order frees its slot", () =>
  withLimits(async (h) => {
    const email = `slots-${crypto.randomUUID()}@example.com`;
    const address = randomAddress();
    const a = await (await order(h, email, address)).json();
    await order(h, email, address);
    assert.equal((await order(h, email, address)).status, 429);
    await h.sql`update public.orders set status = 'paid', paid_at = now() where id = ${a.orderId}`;
    assert.equal((await order(h, email, address)).status, 201);
  }));

Deno.test("one address flooding the event holds at most limit × max_per_order seats", () =>
  withLimits(async (h) => {
    const address = randomAddress();
    for (let i = 0; i < 30; i++) {
      await order(h, `bot-${i}-${crypto.randomUUID()}@example.com`, address);
    }
    const [row] = await h.sql<{ seats: number }[]>`
      select coalesce(sum(i.quantity), 0)::int as seats
      from public.orders o join public.order_items i on i.order_id = o.id
      where o.client_address = ${address}::inet and o.status = 'pending' and o.event_id = ${h.event.id}`;
    assert.equal(row?.seats, LIMITS.maxPendingPerAddress * 10, "3 checkouts × 10 seats, no more");
  }));

Deno.test("a rotating leftmost X-Forwarded-For hop with a fixed rightmost one is limited per address", () =>
  withLimits(async (h) => {
    const address = randomAddress();
    await assertGuestStatuses(h, [201, 201, 201, 429, 429], {
      tag: "rotate",
      headers: () => ({ "x-forwarded-for": `${randomAddress()}, ${address}` }),
      check: async (response) => {
        if (response.status === 429) {
          assert.equal((await response.json()).error.code, "too_many_pending_checkouts");
        } else {
          assert.equal(await storedAddress(h, response), address);
        }
      },
    });
  }));

Deno.test("a victim's email used up to the limit from one address does not block the victim from another", () =>
  withLimits(async (h) => {
    const victim = `victim-${crypto.randomUUID()}@example.com`;
    const attacker = randomAddress();
    for (let i = 0; i < LIMITS.maxPendingPerBuyer; i++) {
      assert.equal((await order(h, victim, attacker)).status, 201);
    }
    const blocked = await order(h, victim, attacker);
    assert.equal(blocked.status, 429, "the attacker's address is limited for that email");
    assert.equal((await blocked.json()).error.code, "too_many_pending_checkouts");

    const own = await order(h, victim, randomAddress());
    assert.equal(own.status, 201, "the victim checks out from their own address");
  }));

Deno.test("a signed-in buyer is limited per user id, whatever the address", () =>
  withLimits(async (h) => {
    const userId = crypto.randomUUID();
    await h.sql`insert into auth.users (id, email) values (${userId}, ${`${userId}@example.com`})`;
    const token = await userToken(userId);
    const statuses = [];
    for (let i = 0; i < 3; i++) {
      const response = await h.enhanced(checkoutRequest(
        { eventId: h.event.id, items: [{ tierId: h.event.balcony, quantity: 1 }] },
        { token, headers: { "x-forwarded-for": randomAddress() } },
      ));
      statuses.push(response.status);
    }
    assert.deepEqual(statuses, [201, 201, 429]);
  }));

Deno.test("CHECKOUT_CLIENT_IP_HEADER names the address; X-Forwarded-For is then ignored", () =>
  withLimits(async (h) => {
    const address = randomAddress();
    await assertGuestStatuses(h, [201, 201, 201, 429], {
      tag: "header",
      headers: () => ({
        "cf-connecting-ip": ` ${address.toUpperCase()} `,
        "x-forwarded-for": `${randomAddress()}, ${randomAddress()}`,
      }),
      check: async (response, i) => {
        if (i === 0) assert.equal(await storedAddress(h, response), address, "trimmed, normalized");
      },
    });

    const fixedForwardedFor = randomAddress();
    await assertGuestStatuses(h, [201, 201, 201, 201], {
      tag: "spread",
      headers: () => ({
        "cf-connecting-ip": randomAddress(),
        "x-forwarded-for": fixedForwardedFor,
      }),
      message: "a shared X-Forwarded-For does not limit",
    });

    const missing = await guestOrder(h, `missing-${crypto.randomUUID()}@example.com`, {
      "x-forwarded-for": address,
    });
    assert.equal(missing.status, 201);
    assert.equal(await storedAddress(h, missing), null, "no header, no address");
  }, { trustedProxyHops: 1, header: "cf-connecting-ip" }));

Deno.test("CHECKOUT_TRUSTED_PROXY_HOPS=2 takes the second X-Forwarded-For entry from the right", () =>
  withLimits(async (h) => {
    const address = randomAddress();
    await assertGuestStatuses(h, [201, 201, 201, 429], {
      tag: "hops",
      headers: () => ({ "x-forwarded-for": `${randomAddress()}, ${address}, ${randomAddress()}` }),
      check: async (response, i) => {
        if (i === 0) assert.equal(await storedAddress(h, response), address);
      },
    });

    // One entry where two proxies should have written: no address, so no per-address limit.
    const lone = randomAddress();
    await assertGuestStatuses(h, [201, 201, 201, 201], {
      tag: "short",
      headers: () => ({ "x-forwarded-for": lone }),
      check: async (response) => {
        assert.equal(response.status, 201);
        assert.equal(await storedAddress(h, response), null);
      },
    });
  }, { trustedProxyHops: 2, header: null }));

Deno.test("a guest with no known address is limited per email among holds with no address", () =>
  withLimits(async (h) => {
    const email = `unknown-${crypto.randomUUID()}@example.com`;
    const statuses = [];
    for (let i = 0; i < 3; i++) {
      statuses.push((await guestOrder(h, email, { "x-forwarded-for": "unknown" })).status);
    }
    assert.deepEqual(statuses, [201, 201, 429]);
    assert.equal((await order(h, email, randomAddress())).status, 201, "a known address is apart");
  }));
