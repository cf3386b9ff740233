/**
 * The checkout endpoints' HTTP contract for bad input, on both endpoints: every rejection is a
 * 4xx with the documented error shape and CORS headers, and writes nothing (no row, no session).
 */
import assert from "node:assert/strict";
import {
  ALLOWED_ORIGIN,
  checkoutRequest,
  type Harness,
  newKey,
  PUBLISHABLE_KEY,
  rowCounts,
  startHarness,
} from "./support/checkout-harness.ts";
import { userToken } from "../scripts/lib/jwt.ts";

type Endpoint = "guest-checkout" | "enhanced-checkout";
const ENDPOINTS: readonly Endpoint[] = ["guest-checkout", "enhanced-checkout"];
const FOREIGN_ORIGIN = "http://evil.test";
const MAX_BODY_BYTES = 16 * 1024;

/** What a case builds its request from. */
interface Ctx {
  h: Harness;
  endpoint: Endpoint;
  /** A valid body for this endpoint. */
  body: Record<string, unknown>;
  /** Builds a request as the storefront sends it (token included for enhanced-checkout). */
  send: (body: unknown, init?: RawInit) => Request;
}

interface RawInit {
  method?: string;
  /** Header overrides; null removes a default header. */
  headers?: Record<string, string | null>;
  /** Sent as is, instead of the JSON of `body`. */
  raw?: BodyInit | null;
}

interface Case {
  why: string;
  status: number;
  code: string;
  /** Expected `details[0].path`. */
  path?: (string | number)[];
  /** Limits the case to one endpoint. */
  only?: Endpoint;
  request: (ctx: Ctx) => Request;
}

type Item = { tierId: unknown; quantity: unknown };

function validBody(h: Harness, endpoint: Endpoint): Record<string, unknown> {
  const body: Record<string, unknown> = {
    eventId: h.event.id,
    items: [{ tierId: h.event.floor, quantity: 1 }, { tierId: h.event.balcony, quantity: 2 }],
    successUrl: `${ALLOWED_ORIGIN}/thanks`,
    cancelUrl: `${ALLOWED_ORIGIN}/cart`,
  };
  return endpoint === "guest-checkout" ? { ...body, email: "ada@example.com", name: "Ada" } : body;
}

function context(h: Harness, endpoint: Endpoint, token: string): Ctx {
  const send = (body: unknown, init: RawInit = {}): Request => {
    const headers: Record<string, string | null> = {
      "content-type": "application/json",
      origin: ALLOWED_ORIGIN,
      "idempotency-key": newKey(),
      authorization: endpoint === "enhanced-checkout" ? `Bearer ${token}` : null,
      apikey: PUBLISHABLE_KEY,
      ...init.headers,
    };
    const method = init.method ?? "POST";
    const canHaveBody = method !== "GET" && method !== "HEAD";
    return new Request("http://functions.test/functions/v1/checkout", {
      method,
      headers: Object.entries(headers).filter((e): e is [string, string] => e[1] !== null),
      body: !canHaveBody ? null : init.raw !== undefined ? init.raw : JSON.stringify(body),
    });
  };
  return { h, endpoint, body: validBody(h, endpoint), send };
}

function handler(h: Harness, endpoint: Endpoint): (request: Request) => Promise<Response> {
  return endpoint === "guest-checkout" ? h.guest : h.enhanced;
}

/** The valid body with its first item changed. */
function withItem(ctx: Ctx, change: Partial<Item> & Record<string, unknown>) {
  const [first, ...rest] = ctx.body.items as Item[];
  return { ...ctx.body, items: [{ ...first, ...change }, ...rest] };
}

function without(body: Record<string, unknown>, field: string): Record<string, unknown> {
  const { [field]: _dropped, ...rest } = body;
  return rest;
}

/** Asserts the documented error shape and that nothing internal leaks; returns the body. */
async function assertError(
  response: Response,
  expected: { status: number; code: string },
  why: string,
): Promise<{ error: { code: string; message: string; details?: unknown } }> {
  assert.equal(response.status, expected.status, why);
  assert.match(response.headers.get("content-type") ?? "", /^application\/json\b/, why);
  const text = await response.text();
  for (const leak of ["sk_test", "postgres://", "postgresql://", "ZodError"]) {
    assert.ok(!text.includes(leak), `${why}: the error body leaks ${leak}`);
  }
  assert.doesNotMatch(text, /\bat .+\.ts:\d+|\n\s+at /, `${why}: the error body has a stack trace`);
  const body = JSON.parse(text);
  assert.deepEqual(Object.keys(body), ["error"], `${why}: only "error" at the top level`);
  const keys = Object.keys(body.error).sort().join(",");
  assert.ok(["code,message", "code,details,message"].includes(keys), `${why}: error has ${keys}`);
  assert.equal(body.error.code, expected.code, why);
  assert.equal(typeof body.error.message, "string", why);
  assert.ok(body.error.message.length > 0, why);
  if (body.error.code === "validation_failed") {
    assert.ok(Array.isArray(body.error.details) && body.error.details.length > 0, why);
    for (const issue of body.error.details) {
      assert.ok(Array.isArray(issue.path), `${why}: every issue has a path`);
      assert.equal(typeof issue.message, "string", why);
    }
  }
  return body;
}

/** CORS headers that only a preflight's answer is read for (Fetch standard, CORS-preflight fetch). */
const PREFLIGHT_ONLY_HEADERS = [
  "access-control-allow-methods",
  "access-control-allow-headers",
  "access-control-max-age",
];

/** Asserts the CORS headers every response carries. */
function assertCors(response: Response, why: string, origin: string | null = ALLOWED_ORIGIN) {
  assert.equal(response.headers.get("access-control-allow-origin"), origin, `${why}: allow-origin`);
  assert.match(response.headers.get("vary") ?? "", /(^|,)\s*Origin\s*(,|$)/i, `${why}: vary`);
  const exposed = (response.headers.get("access-control-expose-headers") ?? "").toLowerCase()
    .split(",").map((h) => h.trim());
  assert.ok(exposed.includes("idempotent-replayed"), `${why}: exposes Idempotent-Replayed`);
}

/** A token for a user who exists, so that enhanced-checkout requests reach the database. */
async function signedInUser(h: Harness): Promise<string> {
  const userId = crypto.randomUUID();
  await h.sql`insert into auth.users (id, email) values (${userId}, ${`${userId}@example.com`})`;
  return await userToken(userId);
}

/** Runs every case on both endpoints against one harness, then checks nothing was written. */
async function rejectsAll(cases: Case[]): Promise<void> {
  const h = await startHarness();
  try {
    const token = await signedInUser(h);
    const before = await rowCounts(h.sql);
    for (const endpoint of ENDPOINTS) {
      const ctx = context(h, endpoint, token);
      for (const c of cases) {
        if (c.only && c.only !== endpoint) continue;
        const why = `${endpoint}: ${c.why}`;
        const response = await handler(h, endpoint)(c.request(ctx));
        assertCors(response, why);
        const body = await assertError(response, c, why);
        if (c.path) {
          const details = body.error.details as { path: unknown }[];
          assert.deepEqual(details[0]?.path, c.path, `${why}: details[0].path`);
        }
      }
    }
    assert.equal(await rowCounts(h.sql), before, "rejected requests wrote nothing");
    assert.equal(h.stripe.sessionsCreated(), 0, "rejected requests created no Stripe session");
  } finally {
    await h.close();
  }
}

function keyCase(why: string, key: string | null, code: string): Case {
  return {
    why,
    status: 400,
    code,
    request: (ctx) => ctx.send(ctx.body, { headers: { "idempotency-key": key } }),
  };
}

function bodyCase(
  why: string,
  path: (string | number)[],
  body: (ctx: Ctx) => unknown,
  only?: Endpoint,
): Case {
  return {
    why,
    status: 400,
    code: "validation_failed",
    path,
    only,
    request: (ctx) => ctx.send(body(ctx)),
  };
}

function rawCase(why: string, status: number, code: string, init: RawInit): Case {
  return { why, status, code, request: (ctx) => ctx.send(null, init) };
}

/** A key as it arrives when a client sends UTF-8 bytes in a header (read as Latin-1). */
function utf8OnTheWire(text: string): string {
  return String.fromCharCode(...new TextEncoder().encode(text));
}

Deno.test("a missing Idempotency-Key is 400 idempotency_key_missing and a malformed one 400 idempotency_key_invalid", () =>
  rejectsAll([
    keyCase("no header", null, "idempotency_key_missing"),
    keyCase("empty header", "", "idempotency_key_missing"),
    keyCase("blank header", "   ", "idempotency_key_missing"),
    keyCase("15 characters", "a".repeat(15), "idempotency_key_invalid"),
    keyCase("129 characters", "a".repeat(129), "idempotency_key_invalid"),
    keyCase("an inner space", "checkout attempt 0001", "idempotency_key_invalid"),
    keyCase("a slash", "checkout/attempt/0001", "idempotency_key_invalid"),
    keyCase("a colon", "checkout:attempt:0001", "idempotency_key_invalid"),
    keyCase("percent-encoding", "checkout%20attempt%2001", "idempotency_key_invalid"),
    keyCase("Latin-1 letters", "é".repeat(20), "idempotency_key_invalid"),
    keyCase("UTF-8 bytes", utf8OnTheWire("ключ-попытки-0001"), "idempotency_key_invalid"),
  ]));

Deno.test("a body that is not JSON is 400 invalid_json", () =>
  rejectsAll([
    rawCase("an empty body", 400, "invalid_json", { raw: "" }),
    rawCase("a truncated object", 400, "invalid_json", { raw: '{"eventId":' }),
    rawCase("single quotes", 400, "invalid_json", { raw: "{'eventId': 1}" }),
    rawCase("trailing garbage", 400, "invalid_json", { raw: "{} x" }),
    rawCase("invalid UTF-8", 400, "invalid_json", { raw: new Uint8Array([0x7b, 0xff, 0x7d]) }),
  ]));

Deno.test("JSON that is not an object is 400 validation_failed at the root path", () =>
  rejectsAll([
    bodyCase("an array", [], () => []),
    bodyCase("a string", [], () => "checkout"),
    bodyCase("null", [], () => null),
    bodyCase("a number", [], () => 42),
    bodyCase("true", [], () => true),
  ]));

Deno.test("wrong types and non-UUID ids are 400 validation_failed with the field's path", () =>
  rejectsAll([
    bodyCase("eventId missing", ["eventId"], (c) => without(c.body, "eventId")),
    bodyCase("eventId a number", ["eventId"], (c) => ({ ...c.body, eventId: 7 })),
    bodyCase("eventId not a UUID", ["eventId"], (c) => ({ ...c.body, eventId: "event-7" })),
    bodyCase("eventId a truncated UUID", ["eventId"], (c) => ({
      ...c.body,
      eventId: c.h.event.id.slice(0, 35),
    })),
    bodyCase("items missing", ["items"], (c) => without(c.body, "items")),
    bodyCase("items an object", ["items"], (c) => ({ ...c.body, items: { 0: c.body.items } })),
    bodyCase("an item that is a string", ["items", 0], (c) => ({ ...c.body, items: ["floor"] })),
    bodyCase("tierId not a UUID", ["items", 0, "tierId"], (c) => withItem(c, { tierId: "floor" })),
    bodyCase("tierId null", ["items", 0, "tierId"], (c) => withItem(c, { tierId: null })),
    bodyCase("successUrl a number", ["successUrl"], (c) => ({ ...c.body, successUrl: 1 })),
  ]));

Deno.test("quantities that are not whole numbers from 1 up are 400 validation_failed at items[0].quantity", () =>
  rejectsAll([
    ...[0, -1, 1.5, 101, 1e9, 1e21, "2", null, true].map((quantity) =>
      bodyCase(
        `quantity ${JSON.stringify(quantity)}`,
        ["items", 0, "quantity"],
        (c) => withItem(c, { quantity }),
      )
    ),
    bodyCase(
      "quantity missing",
      ["items", 0, "quantity"],
      (c) => ({ ...c.body, items: [{ tierId: c.h.event.floor }] }),
    ),
    {
      why: "quantity above the tier's max_per_order",
      status: 400,
      code: "quantity_exceeds_limit",
      request: (c) => c.send(withItem(c, { quantity: 5 })),
    },
  ]));

Deno.test("0 items, 21 items and a repeated tier are 400 validation_failed at items", () =>
  rejectsAll([
    bodyCase("0 items", ["items"], (c) => ({ ...c.body, items: [] })),
    bodyCase("21 items", ["items"], (c) => ({
      ...c.body,
      items: Array.from({ length: 21 }, () => ({ tierId: crypto.randomUUID(), quantity: 1 })),
    })),
    bodyCase("a repeated tier", ["items"], (c) => ({
      ...c.body,
      items: [{ tierId: c.h.event.floor, quantity: 1 }, { tierId: c.h.event.floor, quantity: 1 }],
    })),
    bodyCase("a tier repeated in another letter case", ["items"], (c) => ({
      ...c.body,
      items: [
        { tierId: c.h.event.balcony, quantity: 10 },
        { tierId: c.h.event.balcony.toUpperCase(), quantity: 10 },
      ],
    })),
  ]));

Deno.test("unknown fields, top-level or in an item, and __proto__ keys are 400 validation_failed", () =>
  rejectsAll([
    bodyCase("an unknown top-level field", [], (c) => ({ ...c.body, discount: 100 })),
    bodyCase("a userId choosing the buyer", [], (c) => ({
      ...c.body,
      userId: crypto.randomUUID(),
    })),
    bodyCase("a price inside an item", ["items", 0], (c) => withItem(c, { unitAmount: 1 })),
    {
      why: "a top-level __proto__ key",
      status: 400,
      code: "validation_failed",
      path: [],
      request: (c) =>
        c.send(null, { raw: JSON.stringify(c.body).replace("{", '{"__proto__":{},') }),
    },
    {
      why: "a __proto__ key inside an item",
      status: 400,
      code: "validation_failed",
      path: ["items", 0],
      request: (c) =>
        c.send(null, {
          raw: JSON.stringify(c.body).replace('"items":[{', '"items":[{"__proto__":{"x":1},'),
        }),
    },
    bodyCase("an email on enhanced-checkout", [], (c) => ({
      ...c.body,
      email: "ada@example.com",
    }), "enhanced-checkout"),
    bodyCase(
      "a name on enhanced-checkout",
      [],
      (c) => ({ ...c.body, name: "Ada" }),
      "enhanced-checkout",
    ),
  ]));

Deno.test("guest-checkout refuses a missing or invalid email and a blank or very long name", () =>
  rejectsAll(
    [
      bodyCase("email missing", ["email"], (c) => without(c.body, "email")),
      bodyCase("email empty", ["email"], (c) => ({ ...c.body, email: "" })),
      bodyCase("email without @", ["email"], (c) => ({ ...c.body, email: "ada.example.com" })),
      bodyCase("email without domain", ["email"], (c) => ({ ...c.body, email: "ada@" })),
      bodyCase("email with a space", ["email"], (c) => ({ ...c.body, email: "a da@example.com" })),
      bodyCase("email of 255 characters", ["email"], (c) => ({
        ...c.body,
        email: `${"a".repeat(64)}@${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}`,
      })),
      bodyCase("email a number", ["email"], (c) => ({ ...c.body, email: 42 })),
      bodyCase("name blank", ["name"], (c) => ({ ...c.body, name: "   " })),
      bodyCase("name of 201 characters", ["name"], (c) => ({ ...c.body, name: "n".repeat(201) })),
      bodyCase("name of 10,000 characters", ["name"], (c) => ({
        ...c.body,
        name: "n".repeat(10_000),
      })),
      bodyCase("name a list", ["name"], (c) => ({ ...c.body, name: ["Ada"] })),
    ].map((c) => ({ ...c, only: "guest-checkout" as const })),
  ));

Deno.test("a body over 16 KiB is 413 payload_too_large; exactly 16 KiB is read", () =>
  rejectsAll([
    rawCase("16 KiB + 1 byte", 413, "payload_too_large", {
      raw: `{"pad":"${"x".repeat(MAX_BODY_BYTES + 1 - 10)}"}`,
    }),
    {
      why: "a 1 MB body",
      status: 413,
      code: "payload_too_large",
      request: (c) => c.send({ ...c.body, name: "x".repeat(1024 * 1024) }),
    },
    rawCase("a 1 MB body with a text/plain type", 415, "unsupported_media_type", {
      headers: { "content-type": "text/plain" },
      raw: "x".repeat(1024 * 1024),
    }),
    {
      why: "exactly 16 KiB of JSON is parsed and validated",
      status: 400,
      code: "validation_failed",
      path: ["items"],
      request: (c) => {
        const json = JSON.stringify({ ...c.body, items: [] });
        return c.send(null, { raw: json.padEnd(MAX_BODY_BYTES, " ") });
      },
    },
  ]));

Deno.test("a body that is not application/json is 415 unsupported_media_type", () =>
  rejectsAll([
    {
      why: "text/plain",
      status: 415,
      code: "unsupported_media_type",
      request: (c) => c.send(c.body, { headers: { "content-type": "text/plain" } }),
    },
    {
      why: "application/x-www-form-urlencoded",
      status: 415,
      code: "unsupported_media_type",
      request: (c) =>
        c.send(null, {
          headers: { "content-type": "application/x-www-form-urlencoded" },
          raw: new URLSearchParams({ eventId: c.h.event.id }).toString(),
        }),
    },
    {
      why: "multipart/form-data",
      status: 415,
      code: "unsupported_media_type",
      request: (c) =>
        c.send(null, {
          headers: { "content-type": "multipart/form-data; boundary=x" },
          raw: "--x--",
        }),
    },
    {
      why: "application/jsonp",
      status: 415,
      code: "unsupported_media_type",
      request: (c) => c.send(c.body, { headers: { "content-type": "application/jsonp" } }),
    },
    {
      why: "no Content-Type",
      status: 415,
      code: "unsupported_media_type",
      request: (c) =>
        c.send(null, {
          headers: { "content-type": null },
          raw: new TextEncoder().encode(JSON.stringify(c.body)),
        }),
    },
    {
      why: "Application/JSON; charset=utf-8 is accepted and reaches validation",
      status: 400,
      code: "validation_failed",
      request: (c) =>
        c.send({ ...c.body, items: [] }, {
          headers: { "content-type": "Application/JSON; charset=utf-8" },
        }),
    },
  ]));

Deno.test("GET, PUT, PATCH, DELETE and HEAD are 405 method_not_allowed with an Allow header", async () => {
  const h = await startHarness();
  try {
    const token = await userToken(crypto.randomUUID());
    const before = await rowCounts(h.sql);
    for (const endpoint of ENDPOINTS) {
      const ctx = context(h, endpoint, token);
      for (const method of ["GET", "PUT", "PATCH", "DELETE", "HEAD"]) {
        const why = `${endpoint}: ${method}`;
        const response = await handler(h, endpoint)(ctx.send(ctx.body, { method }));
        assertCors(response, why);
        const allow = (response.headers.get("allow") ?? "").split(",").map((m) => m.trim());
        assert.ok(allow.includes("POST"), `${why}: Allow is ${allow}`);
        assert.ok(!allow.includes(method), `${why}: Allow is ${allow}`);
        await assertError(response, { status: 405, code: "method_not_allowed" }, why);
      }
    }
    assert.equal(await rowCounts(h.sql), before);
    assert.equal(h.stripe.sessionsCreated(), 0);
  } finally {
    await h.close();
  }
});

Deno.test("redirect URLs off the allowed origins are 400 redirect_url_not_allowed; non-http URLs fail validation", () =>
  rejectsAll([
    ...[
      ["another host", "http://evil.test/thanks"],
      ["https instead of http", "https://shop.test/thanks"],
      ["another port", "http://shop.test:8080/thanks"],
      ["a lookalike host", "http://shop.test.evil.test/thanks"],
      ["credentials before another host", "http://shop.test@evil.test/thanks"],
    ].flatMap(([why, url]) =>
      (["successUrl", "cancelUrl"] as const).map((field): Case => ({
        why: `${field} on ${why}`,
        status: 400,
        code: "redirect_url_not_allowed",
        path: [field],
        request: (c) => c.send({ ...c.body, [field]: url }),
      }))
    ),
    // Not http(s), or not a URL at all: refused as a field of the body.
    ...([
      ["a javascript: successUrl", "successUrl", "javascript:alert(document.cookie)"],
      ["a javascript: cancelUrl", "cancelUrl", "javascript://shop.test/%0aalert(1)"],
      ["a data: successUrl", "successUrl", "data:text/html,<script>alert(1)</script>"],
      ["a scheme-relative successUrl", "successUrl", "//evil.test/thanks"],
      ["a successUrl over 2048 characters", "successUrl", `${ALLOWED_ORIGIN}/${"p".repeat(2048)}`],
    ] as const).map(([why, field, url]) =>
      bodyCase(why, [field], (c) => ({ ...c.body, [field]: url }))
    ),
  ]));

Deno.test("OPTIONS is a 204 CORS preflight on both endpoints, without a token, key or body", async () => {
  const h = await startHarness();
  try {
    const before = await rowCounts(h.sql);
    for (const endpoint of ENDPOINTS) {
      for (const origin of [ALLOWED_ORIGIN, FOREIGN_ORIGIN]) {
        const why = `${endpoint} preflight from ${origin}`;
        const response = await handler(h, endpoint)(
          new Request("http://functions.test/functions/v1/checkout", {
            method: "OPTIONS",
            headers: {
              origin,
              "access-control-request-method": "POST",
              "access-control-request-headers": "authorization, content-type, idempotency-key",
            },
          }),
        );
        assert.equal(response.status, 204, why);
        assert.equal(await response.text(), "", why);
        assertCors(response, why, origin === ALLOWED_ORIGIN ? origin : null);
        const methods = (response.headers.get("access-control-allow-methods") ?? "").toUpperCase();
        assert.match(methods, /\bPOST\b/, why);
        const allowed = (response.headers.get("access-control-allow-headers") ?? "").toLowerCase();
        for (const header of ["authorization", "content-type", "idempotency-key"]) {
          assert.ok(allowed.includes(header), `${why}: allows ${header}`);
        }
      }
    }
    assert.equal(await rowCounts(h.sql), before);
    assert.equal(h.stripe.sessionsCreated(), 0);
  } finally {
    await h.close();
  }
});

Deno.test("an error for a disallowed or absent Origin carries no access-control-allow-origin", async () => {
  const h = await startHarness();
  try {
    const token = await userToken(crypto.randomUUID());
    for (const endpoint of ENDPOINTS) {
      const ctx = context(h, endpoint, token);
      for (const origin of [FOREIGN_ORIGIN, "null", `${ALLOWED_ORIGIN}.evil.test`, null]) {
        const why = `${endpoint} from ${origin}`;
        const request = ctx.send({ ...ctx.body, items: [] }, { headers: { origin } });
        const response = await handler(h, endpoint)(request);
        assertCors(response, why, null);
        await assertError(response, { status: 400, code: "validation_failed" }, why);
      }
    }
  } finally {
    await h.close();
  }
});

Deno.test("a created checkout carries CORS headers, and keys of exactly 16 and 128 characters are accepted", async () => {
  const h = await startHarness();
  try {
    const token = await signedInUser(h);
    const keys: Record<Endpoint, string> = {
      "guest-checkout": `k-${crypto.randomUUID().replaceAll("-", "").slice(0, 14)}`,
      "enhanced-checkout": `k.${crypto.randomUUID()}_`.padEnd(128, "x"),
    };
    for (const endpoint of ENDPOINTS) {
      const ctx = context(h, endpoint, token);
      const body = { ...ctx.body, items: [{ tierId: h.event.balcony, quantity: 1 }] };
      const origins: [string, string | null][] = [
        [ALLOWED_ORIGIN, ALLOWED_ORIGIN],
        [FOREIGN_ORIGIN, null],
      ];
      for (const [origin, expected] of origins) {
        const key = origin === ALLOWED_ORIGIN ? keys[endpoint] : newKey();
        const why = `${endpoint} with a ${key.length}-character key from ${origin}`;
        const response = await handler(h, endpoint)(
          checkoutRequest(body, {
            key,
            token: endpoint === "enhanced-checkout" ? token : undefined,
            headers: { origin },
          }),
        );
        assert.equal(response.status, 201, `${why}: ${await response.clone().text()}`);
        assertCors(response, why, expected);
        // What a browser may send is the preflight's to say; an actual answer does not repeat it.
        for (const preflightOnly of PREFLIGHT_ONLY_HEADERS) {
          assert.equal(response.headers.get(preflightOnly), null, `${why}: no ${preflightOnly}`);
        }
        assert.equal(response.headers.get("idempotent-replayed"), "false", why);
      }
    }
    assert.equal(keys["guest-checkout"].length, 16);
    assert.equal(keys["enhanced-checkout"].length, 128);
    assert.equal(h.stripe.sessionsCreated(), 4);
  } finally {
    await h.close();
  }
});
