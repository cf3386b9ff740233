/**
 * Generators, request builders and oracles for the hostile-input reliability suite.
 *
 * A generated request is plain, printable data (a "spec"), so that fast-check can print and
 * shrink it; it becomes a `Request` only when sent. Every spec is checked against an oracle that
 * is deliberately independent of the handlers and conservative: when a request might be valid,
 * it is skipped, so that every request actually sent is invalid by the documented contract and
 * must be answered 4xx. The oracle also says which error codes the contract allows for it.
 */
import fc from "fast-check";
import { ALLOWED_ORIGIN } from "./checkout-harness.ts";
import {
  base64UrlDecode,
  base64UrlEncode,
  hmacSha256,
  LOCAL_JWT_SECRET,
  signature as sign,
} from "../../scripts/lib/jwt.ts";
import { TEST_WEBHOOK_SECRET } from "./webhooks.ts";

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/** JSON text inserted as is (numbers JSON.stringify cannot write, deep nesting, odd keys). */
export class Raw {
  constructor(readonly text: string) {}
}

/** A JWT segment inserted as is (already base64url, or garbage). */
export class Segment {
  constructor(readonly text: string) {}
}

/** Serializes a generated value; own `__proto__` keys are written like any other key. */
export function toJson(value: unknown): string {
  if (value instanceof Raw) return value.text;
  if (value === null || value === undefined) return "null";
  if (typeof value === "number") return Number.isFinite(value) ? JSON.stringify(value) : "null";
  if (typeof value === "string" || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return `[${value.map(toJson).join(",")}]`;
  if (typeof value === "object") {
    const record = value as Record<string, unknown>;
    const parts = Object.keys(record).filter((k) => record[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${toJson(record[k])}`);
    return `{${parts.join(",")}}`;
  }
  return "null";
}

/** Sets an own property, even one named `__proto__`. */
function define(target: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(target, key, {
    value,
    enumerable: true,
    writable: true,
    configurable: true,
  });
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

const encoder = new TextEncoder();

/** A header value the Fetch API accepts (no NUL, CR, LF, nothing above U+00FF). */
export function headerOk(value: string): boolean {
  try {
    new Headers([["x-probe", value]]);
    return true;
  } catch {
    return false;
  }
}

/** The method as `new Request` normalizes it, or null when the Fetch API refuses it. */
export function normalizeMethod(method: string): string | null {
  try {
    return new Request("http://functions.test/", { method }).method;
  } catch {
    return null;
  }
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

// Hostile building blocks.

export const SQL_BITS = [
  "'",
  "''",
  '"',
  ";",
  "--",
  "/*",
  "*/",
  "\\",
  "\\\\",
  "`",
  "%",
  "_",
  "$$",
  "$1",
  "' or '1'='1",
  "'; drop table public.orders; --",
  "1; select pg_sleep(5); --",
  "' union select * from auth.users --",
  "\\'; truncate public.stripe_idempotency_keys cascade; --",
  "$$; delete from public.orders; $$",
  "%' and 1=1 --",
  "')) or true --",
  "E'\\\\x00'",
  "\\x00",
];

export const UNICODE_BITS = [
  "😀",
  "👨‍👩‍👧‍👦",
  "🏳️‍🌈",
  "\u202e",
  "\u202d",
  "\u200f",
  "\u200b",
  "\u2066",
  "مرحبا",
  "שלום",
  "日本語",
  "\u0000",
  "\ud800",
  "\udfff",
  "\ud83d",
  "\ufeff",
  "\u2028",
  "\u2029",
  "\uffff",
  "\ufffe",
  "\u0085",
  "\u0301",
  "\u007f",
  "\u001b[31m",
  "ｆｕｌｌ",
  "٣",
  "İ",
  "ß",
  "\r\n",
  "\t",
];

const NAN_LIKE = [
  "NaN",
  "-NaN",
  "Infinity",
  "-Infinity",
  "1e309",
  "-1e309",
  "0x10",
  "0b1",
  "1_000",
  "١",
  "९",
  "",
  " ",
  " 1",
  "1 ",
  "null",
  "undefined",
  "true",
  "[]",
  "{}",
  "-0",
  "+1",
  "1.",
  ".5",
  "1e",
];

export const PROTO_KEYS = [
  "__proto__",
  "constructor",
  "prototype",
  "__defineGetter__",
  "hasOwnProperty",
  "toString",
  "valueOf",
];

/** SQL metacharacters, unicode oddities (emoji, RTL, NUL, lone surrogates), NaN-like text. */
export const hostileString: fc.Arbitrary<string> = fc.oneof(
  fc.array(
    fc.oneof(
      fc.constantFrom(...SQL_BITS),
      fc.constantFrom(...UNICODE_BITS),
      fc.string({ maxLength: 6 }),
    ),
    { minLength: 1, maxLength: 8 },
  ).map((parts) => parts.join("")),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom(...NAN_LIKE),
);

/** Huge, negative, fractional, non-finite numbers, and number texts JSON.stringify never writes. */
export const hostileNumber: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    0,
    -0,
    -1,
    1e308,
    -1e308,
    2 ** 53,
    2 ** 53 + 2,
    2 ** 63,
    2 ** 64,
    1e21,
    5e-324,
    0.5,
    1.5,
    3.999999,
    101,
    1000,
    2 ** 31,
    -(2 ** 31) - 1,
    Number.MAX_SAFE_INTEGER,
    Number.MIN_SAFE_INTEGER,
  ),
  fc.integer(),
  fc.double(),
  fc.constantFrom(
    "1e400",
    "-1e400",
    "1.0000000000000000001",
    "0.99999999999999999",
    "1E0",
    "10e-1",
    "2.0",
    "-0.0",
    "1e-400",
    "123456789012345678901234567890",
  ).map((text) => new Raw(text)),
);

/** Nesting far deeper than any request needs. */
export function deepNesting(maxDepth: number): fc.Arbitrary<Raw> {
  return fc.tuple(fc.integer({ min: 10, max: maxDepth }), fc.constantFrom("[", "{", "mixed")).map(
    ([depth, kind]) => {
      if (kind === "[") return new Raw("[".repeat(depth) + "]".repeat(depth));
      if (kind === "{") return new Raw('{"a":'.repeat(depth) + "1" + "}".repeat(depth));
      return new Raw('[{"a":'.repeat(depth) + "1" + "}]".repeat(depth));
    },
  );
}

/** `{"__proto__": {...}}`-style objects meant to pollute prototypes. */
export const protoObject: fc.Arbitrary<Raw> = fc.tuple(
  fc.constantFrom(...PROTO_KEYS),
  fc.anything({ maxDepth: 1 }),
).map(([key, value]) =>
  new Raw(
    `{${JSON.stringify(key)}:{"polluted":"yes","isAdmin":true,"role":"service_role","x":${
      toJson(value)
    }}}`,
  )
);

const protoKey = fc.oneof(
  fc.constantFrom(
    ...PROTO_KEYS,
    "isAdmin",
    "role",
    "price",
    "unit_amount",
    "amount_total",
    "userId",
    "user_id",
    "status",
    "currency",
    "orderId",
    "eventID",
    "EventId",
    " eventId",
    "eventId\u0000",
    "items ",
    "email",
    "name",
  ),
  fc.string({ maxLength: 10 }),
);

/** Any wrong value: wrong types, hostile strings and numbers, prototype keys, deep nesting. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  hostileNumber,
  hostileString,
  fc.array(fc.anything({ maxDepth: 2 }), { maxLength: 5 }),
  fc.dictionary(protoKey, fc.anything({ maxDepth: 1 }), { maxKeys: 4 }),
  fc.anything({ maxDepth: 2 }),
  protoObject,
  deepNesting(600),
);

// ---------------------------------------------------------------------------------------------
// Checkout requests
// ---------------------------------------------------------------------------------------------

export type CheckoutEndpoint = "guest-checkout" | "enhanced-checkout";
export const MAX_CHECKOUT_BODY = 16 * 1024;
export const MAX_WEBHOOK_BODY = 1024 * 1024;
/** The documented Idempotency-Key: 16–128 characters of A-Z a-z 0-9 _ . - */
const KEY_PATTERN = /^[A-Za-z0-9_.-]{16,128}$/;
const LOOSE_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export type BodySpec =
  | { kind: "none" }
  | { kind: "text"; text: string }
  | { kind: "bytes"; bytes: number[] }
  /** `text`, then `pad` repeated up to `size` bytes. */
  | { kind: "padded"; text: string; size: number; pad: string };

/** The bytes a body spec stands for (lone surrogates become U+FFFD, as on the wire). */
export function bodyBytes(body: BodySpec): Uint8Array<ArrayBuffer> | null {
  switch (body.kind) {
    case "none":
      return null;
    case "text":
      return encoder.encode(body.text);
    case "bytes":
      return Uint8Array.from(body.bytes);
    case "padded": {
      const head = encoder.encode(body.text);
      const out = new Uint8Array(Math.max(body.size, head.length));
      out.set(head);
      out.fill(body.pad.charCodeAt(0), head.length);
      return out;
    }
  }
}

/** A JWT as data: how each part is made. */
export interface JwtSpec {
  scheme: string;
  header: unknown;
  claims: unknown;
  /** HMAC-SHA256 secret; null: `signature` is used as is. */
  signWith: string | null;
  signature: string;
  /** Claims swapped in after signing. */
  tamper?: unknown;
  /** Appended after the token. */
  suffix: string;
}

export type AuthSpec =
  & (
    | { kind: "absent" }
    | { kind: "valid" }
    | { kind: "raw"; value: string }
    | { kind: "jwt"; jwt: JwtSpec }
  )
  & {
    /** The forged-token case that made it ({@link forgedTokenCases}). */
    forgery?: string;
  };

export interface CheckoutSpec {
  category: string;
  method: string;
  /** Idempotency-Key values, appended in order; none: the header is absent. */
  keys: string[];
  /** Content-Type; null: absent. */
  contentType: string | null;
  auth: AuthSpec;
  body: BodySpec;
  extraHeaders: [string, string][];
}

/** What the generators need to know about the harness. */
export interface CheckoutWorld {
  endpoint: CheckoutEndpoint;
  eventId: string;
  /** tier id (lower case) → max_per_order */
  tiers: Map<string, number>;
  floor: string;
  balcony: string;
  last: string;
  /** Every event and tier id in the database (lower case). */
  knownIds: Set<string>;
  userId: string;
  validToken: string;
  /** The project's publishable key: every request carries it in apikey, as supabase-js sends it. */
  publishableKey: string;
}

const GUEST_KEYS = ["eventId", "items", "successUrl", "cancelUrl", "email", "name"];
const USER_KEYS = ["eventId", "items", "successUrl", "cancelUrl"];

/** A valid body for the endpoint (the single-defect categories send it with one bad part). */
export function validBody(world: CheckoutWorld, variant = 0): Record<string, unknown> {
  const body: Record<string, unknown> = {
    eventId: world.eventId,
    items: variant % 2 === 0
      ? [{ tierId: world.floor, quantity: 1 }, { tierId: world.balcony, quantity: 2 }]
      : [{ tierId: world.balcony, quantity: 10 }],
  };
  if (variant % 3 !== 2) {
    body.successUrl = `${ALLOWED_ORIGIN}/thanks?session_id={CHECKOUT_SESSION_ID}`;
    body.cancelUrl = `${ALLOWED_ORIGIN}/cart`;
  }
  if (world.endpoint === "guest-checkout") {
    body.email = "guest@example.com";
    if (variant % 2 === 1) body.name = "Ada";
  }
  return body;
}

function validBodyText(world: CheckoutWorld): fc.Arbitrary<string> {
  return fc.constantFrom(0, 1, 2, 3, 4, 5).map((v) => toJson(validBody(world, v)));
}

/**
 * Could the server accept this body? Conservative: true unless the body is definitely invalid
 * by the README (size, JSON, unknown fields, unknown event or tier, quantity outside 1..max,
 * repeated tier, redirect off the allowed origin, missing or non-string fields).
 */
export function bodyMayBeValid(bytes: Uint8Array | null, world: CheckoutWorld): boolean {
  if (bytes === null || bytes.length > MAX_CHECKOUT_BODY) return false;
  const value = parseJson(bytes);
  return value.ok && valueMayBeValid(value.value, world);
}

/** JSON.parse of UTF-8 bytes, as a server reads them (a leading BOM is dropped). */
export function parseJson(bytes: Uint8Array): { ok: true; value: unknown } | { ok: false } {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

function valueMayBeValid(value: unknown, world: CheckoutWorld): boolean {
  if (!isRecord(value)) return false;
  const allowed = world.endpoint === "guest-checkout" ? GUEST_KEYS : USER_KEYS;
  if (Object.keys(value).some((k) => !allowed.includes(k))) return false;
  const id = (v: unknown) => typeof v === "string" ? v.trim().toLowerCase() : null;
  if (id(value.eventId) !== world.eventId.toLowerCase()) return false;
  const items = value.items;
  if (!Array.isArray(items) || items.length < 1 || items.length > 20) return false;
  const seen = new Set<string>();
  for (const item of items) {
    if (!isRecord(item)) return false;
    if (Object.keys(item).some((k) => k !== "tierId" && k !== "quantity")) return false;
    const tier = id(item.tierId);
    const max = tier === null ? undefined : world.tiers.get(tier);
    if (tier === null || max === undefined || seen.has(tier)) return false;
    seen.add(tier);
    const q = item.quantity;
    if (typeof q !== "number" || !Number.isInteger(q) || q < 1 || q > max) return false;
  }
  for (const field of ["successUrl", "cancelUrl"]) {
    if (!(field in value)) continue;
    const url = value[field];
    if (typeof url !== "string") return false;
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return false;
    }
    if (!/^https?:$/.test(parsed.protocol) || parsed.origin !== ALLOWED_ORIGIN) return false;
  }
  if (world.endpoint === "guest-checkout") {
    if (typeof value.email !== "string" || !/^[^@]+@[^@]+\.[^@]+$/.test(value.email.trim())) {
      return false;
    }
    if ("name" in value && (typeof value.name !== "string" || value.name.trim() === "")) {
      return false;
    }
  }
  return true;
}

/** Idempotency-Key as the server sees it: absent, or valid/invalid by the documented pattern. */
export function keyState(keys: string[]): "missing" | "invalid" | "valid" {
  const headers = new Headers();
  for (const key of keys) headers.append("idempotency-key", key);
  const value = headers.get("idempotency-key");
  if (value === null || value === "") return "missing";
  return KEY_PATTERN.test(value) ? "valid" : "invalid";
}

/** Could this Content-Type be application/json? (Conservative: any parameter or oddity after.) */
export function contentTypeMayBeJson(value: string | null): boolean {
  if (value === null) return false;
  const normalized = new Headers([["content-type", value]]).get("content-type") ?? "";
  return /^application\/json(?![A-Za-z0-9+._/-])/i.test(normalized.trim());
}

/** Could this Authorization be a signed-in user's valid token? */
export function authMayBeValid(auth: AuthSpec): boolean {
  if (auth.kind === "valid") return true;
  if (auth.kind !== "jwt") return false;
  const jwt = auth.jwt;
  if (!/^bearer\s+$/i.test(jwt.scheme) || jwt.suffix.trim() !== "") return false;
  if (jwt.signWith !== LOCAL_JWT_SECRET) return false;
  if (jwt.tamper !== undefined && segment(jwt.tamper) !== segment(jwt.claims)) return false;
  const header = decodeSegment(segment(jwt.header));
  const claims = decodeSegment(segment(jwt.claims));
  if (!isRecord(header) || header.alg !== "HS256" || !isRecord(claims)) return false;
  const now = nowSeconds();
  if (claims.role !== "authenticated") return false;
  const aud = claims.aud;
  if (aud !== "authenticated" && !(Array.isArray(aud) && aud.includes("authenticated"))) {
    return false;
  }
  if (claims.is_anonymous !== undefined && claims.is_anonymous !== false) return false;
  if (typeof claims.exp !== "number" || claims.exp < now - 60) return false;
  if (typeof claims.nbf === "number" && claims.nbf > now + 60) return false;
  return typeof claims.sub === "string" && LOOSE_UUID.test(claims.sub);
}

/** The error codes the README allows for a checkout request; empty: it may be valid. */
export function expectedCheckoutCodes(
  spec: CheckoutSpec,
  bytes: Uint8Array | null,
  world: CheckoutWorld,
): Set<string> {
  const codes = new Set<string>();
  if (spec.method !== "POST") codes.add("method_not_allowed");
  if (world.endpoint === "enhanced-checkout" && !authMayBeValid(spec.auth)) {
    codes.add("unauthorized");
  }
  const key = keyState(spec.keys);
  if (key !== "valid") codes.add(`idempotency_key_${key}`);
  if (!contentTypeMayBeJson(spec.contentType)) codes.add("unsupported_media_type");
  if (bytes !== null && bytes.length > MAX_CHECKOUT_BODY) {
    codes.add("payload_too_large");
  } else if (bytes === null || !parseJson(bytes).ok) {
    codes.add("invalid_json");
  } else if (!bodyMayBeValid(bytes, world)) {
    for (
      const code of [
        "validation_failed",
        "event_not_found",
        "tier_not_found",
        "quantity_exceeds_limit",
        "redirect_url_not_allowed",
      ]
    ) codes.add(code);
  }
  return codes;
}

function segment(value: unknown): string {
  if (value instanceof Segment) return value.text;
  return base64UrlEncode(toJson(value));
}

function decodeSegment(part: string): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(base64UrlDecode(part)));
  } catch {
    return undefined;
  }
}

/** The Authorization value a JWT spec stands for. */
export async function buildJwt(jwt: JwtSpec): Promise<string> {
  const head = segment(jwt.header);
  let payload = segment(jwt.claims);
  const signature = jwt.signWith === null
    ? jwt.signature
    : await sign(`${head}.${payload}`, jwt.signWith);
  if (jwt.tamper !== undefined) payload = segment(jwt.tamper);
  return `${jwt.scheme}${head}.${payload}.${signature}${jwt.suffix}`;
}

/** The Request a checkout spec stands for (always from an allowed Origin). */
export async function buildCheckoutRequest(
  spec: CheckoutSpec,
  world: CheckoutWorld,
  bytes: Uint8Array<ArrayBuffer> | null,
): Promise<Request> {
  const headers = new Headers({ origin: ALLOWED_ORIGIN, apikey: world.publishableKey });
  if (spec.contentType !== null) headers.set("content-type", spec.contentType);
  for (const key of spec.keys) headers.append("idempotency-key", key);
  if (spec.auth.kind === "valid") headers.set("authorization", `Bearer ${world.validToken}`);
  if (spec.auth.kind === "raw") headers.set("authorization", spec.auth.value);
  if (spec.auth.kind === "jwt") headers.set("authorization", await buildJwt(spec.auth.jwt));
  for (const [name, value] of spec.extraHeaders) headers.append(name, value);
  const bodyless = spec.method === "GET" || spec.method === "HEAD";
  return new Request(`http://functions.test/functions/v1/${world.endpoint}`, {
    method: spec.method,
    headers,
    body: bodyless ? null : bytes,
  });
}

// Part generators: each has a valid form and an invalid one.

const VALID_KEY = fc.uuid().map((u) => `hostile-${u}`);

const INVALID_KEY: fc.Arbitrary<string[]> = fc.oneof(
  fc.constant<string[]>([]),
  fc.constantFrom<string[]>([""], ["   "], ["\t"]),
  fc.stringMatching(/^[A-Za-z0-9_.-]{1,15}$/).map((k) => [k]),
  fc.stringMatching(/^[A-Za-z0-9_.-]{129,300}$/).map((k) => [k]),
  fc.tuple(
    fc.stringMatching(/^[A-Za-z0-9_.-]{8,60}$/),
    fc.constantFrom(
      " ",
      "'",
      ";",
      "/",
      "*",
      "\\",
      '"',
      ":",
      "@",
      "é",
      "+",
      "=",
      "%",
      "{",
      "!",
      "ÿ",
    ),
    fc.stringMatching(/^[A-Za-z0-9_.-]{8,60}$/),
  ).map(([a, bad, b]) => [`${a}${bad}${b}`]),
  fc.array(fc.constantFrom(...SQL_BITS), { minLength: 1, maxLength: 4 }).map((p) => [p.join("")]),
  fc.string({ unit: "binary-ascii", maxLength: 140 }).map((k) => [k]),
  fc.tuple(VALID_KEY, VALID_KEY).map(([a, b]) => [a, b]),
).filter((keys) => keys.every(headerOk) && keyState(keys) !== "valid");

const VALID_CONTENT_TYPE = fc.constantFrom("application/json", "application/json; charset=utf-8");

const INVALID_CONTENT_TYPE: fc.Arbitrary<string | null> = fc.oneof(
  fc.constant(null),
  fc.constantFrom(
    "text/plain",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "text/json",
    "json",
    "application/jsonx",
    "application/json-patch+json",
    "application/ld+json",
    "application/vnd.api+json",
    "application/javascript",
    "application/octet-stream",
    "*/*",
    "application/*",
    "",
    "application",
    "application/",
    "; application/json",
    "text/html; application/json",
    "application/x-json",
    "applicaton/json",
  ),
  fc.string({ unit: "binary-ascii", maxLength: 40 }),
).filter((v) => (v === null || headerOk(v)) && !contentTypeMayBeJson(v));

const CHECKOUT_METHODS = fc.oneof(
  fc.constantFrom(
    "GET",
    "HEAD",
    "PUT",
    "PATCH",
    "DELETE",
    "get",
    "put",
    "delete",
    "patch",
    "PROPFIND",
    "MKCOL",
    "COPY",
    "LOCK",
    "PURGE",
    "LINK",
    "QUERY",
    "SEARCH",
    "POSTX",
    "P0ST",
    "POST ",
  ),
  fc.stringMatching(/^[A-Za-z!#$%&'*+.^_`|~-]{1,12}$/),
).map(normalizeMethod).filter((m): m is string => m !== null && m !== "POST" && m !== "OPTIONS");

/** Any method but POST (OPTIONS included: stripe-webhook has no preflight). */
export const WEBHOOK_METHODS = fc.oneof(CHECKOUT_METHODS, fc.constant("OPTIONS"));

/** Unknown UUIDs (never an event or tier of this database). */
function unknownUuid(world: CheckoutWorld): fc.Arbitrary<string> {
  return fc.uuid().filter((u) => !world.knownIds.has(u.toLowerCase()));
}

function idValue(world: CheckoutWorld): fc.Arbitrary<unknown> {
  const known = [world.eventId, world.floor, world.balcony, world.last];
  return fc.oneof(
    hostileValue,
    unknownUuid(world),
    fc.tuple(fc.uuid(), hostileString).map(([u, s]) => `${u}${s}`),
    fc.tuple(fc.constantFrom(...SQL_BITS), fc.uuid()).map(([s, u]) => `${s}${u}`),
    fc.constantFrom(
      "00000000-0000-4000-8000-000000000101",
      "00000000-0000-4000-8000-000000000102",
      "00000000-0000-4000-8000-000000000001",
    ),
    fc.tuple(fc.constantFrom(...known), fc.nat(5)).map(([id, how]) =>
      [
        id.toUpperCase(),
        `{${id}}`,
        `urn:uuid:${id}`,
        id.replaceAll("-", ""),
        ` ${id} `,
        `${id}\u0000`,
      ][how]!
    ),
  );
}

function quantityValue(): fc.Arbitrary<unknown> {
  return fc.oneof(
    hostileNumber,
    hostileValue,
    fc.integer({ min: 5, max: 100 }),
    fc.integer({ min: 101, max: 2 ** 31 }),
    fc.integer({ max: 0 }),
    fc.constantFrom(...NAN_LIKE),
  );
}

const FOREIGN_URLS = [
  "http://evil.test/",
  "https://shop.test/",
  "http://shop.test:8080/",
  "http://shop.test.evil.test/",
  "http://shop.test@evil.test/",
  "http://evil.test\\@shop.test/",
  "javascript:alert(1)",
  "data:text/html,<script>alert(1)</script>",
  "ftp://shop.test/",
  "file:///etc/passwd",
  "//evil.test/",
  "/relative",
  "shop.test/x",
  "http://",
  "http:// shop.test",
  "http://[::1]/",
  "http://127.0.0.1/",
  "HTTP://EVIL.TEST/",
  "http://xn--80ak6aa92e.com/",
  "http://shop.test%2eevil.test/",
  "\u0000http://shop.test/",
  "http://shop.test\u0000.evil.test/",
  "postgres://postgres@127.0.0.1/postgres",
];

/** URLs on the allowed origin with hostile paths, queries and fragments. */
export const hostileAllowedUrl: fc.Arbitrary<string> = fc.tuple(
  fc.constantFrom(
    "/",
    "/thanks?q=",
    "/cart#",
    "/a/../../",
    "/?session_id={CHECKOUT_SESSION_ID}&x=",
  ),
  hostileString,
).map(([path, s]) => `${ALLOWED_ORIGIN}${path}${s}`);

function urlValue(): fc.Arbitrary<unknown> {
  return fc.oneof(
    hostileValue,
    fc.constantFrom(...FOREIGN_URLS),
    hostileAllowedUrl,
    fc.integer({ min: 2100, max: 8000 }).map((n) => `${ALLOWED_ORIGIN}/${"a".repeat(n)}`),
    fc.tuple(fc.constantFrom(...FOREIGN_URLS), hostileString).map(([u, s]) => `${u}${s}`),
  );
}

/** Emails with SQL metacharacters and unicode; most are well-formed (o'brien'--x@…). */
export const hostileEmail: fc.Arbitrary<string> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.tuple(
      fc.array(
        fc.constantFrom("o'brien", "'", "--", "'--", "+", "_", "-", "'or'1'-'1", "a", "0", "'.'"),
        { minLength: 1, maxLength: 5 },
      ),
      fc.constantFrom("example.com", "shop-test.example", "EXAMPLE.COM"),
    ).map(([local, domain]) => `${local.join("")}x@${domain}`),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(
      fc.array(
        fc.constantFrom(
          "o'brien",
          "a+b",
          "x.y",
          "_",
          "-",
          "';--",
          "/*",
          "*/",
          "\\",
          '"',
          "%",
          "😀",
          "\u0000",
          "\u202e",
          "a",
          "1",
        ),
        { minLength: 1, maxLength: 5 },
      ),
      fc.constantFrom(
        "example.com",
        "ex-ample.co",
        "xn--bcher-kva.example",
        "localhost",
        "[127.0.0.1]",
        "exa'mple.com",
        "example.com'; --",
        "EXAMPLE.COM",
      ),
    ).map(([local, domain]) => `${local.join("")}@${domain}`),
  },
);

function emailValue(): fc.Arbitrary<unknown> {
  return fc.oneof(
    hostileValue,
    hostileEmail,
    fc.constantFrom(
      "",
      "plainaddress",
      "@example.com",
      "a@",
      "a@b",
      "a@@example.com",
      "a b@example.com",
      "a@example..com",
      ".a@example.com",
      "a@-example.com",
      "a\u0000@example.com",
      "a@exa mple.com",
      `${"x".repeat(250)}@example.com`,
    ),
  );
}

function nameValue(): fc.Arbitrary<unknown> {
  return fc.oneof(
    hostileValue,
    hostileString,
    fc.constantFrom("", " ", "\t\n", "\u0000", "a\u0000b", "x".repeat(201), " ".repeat(300)),
  );
}

function itemValue(world: CheckoutWorld): fc.Arbitrary<unknown> {
  return fc.oneof(
    hostileValue,
    fc.record({ tierId: idValue(world), quantity: quantityValue() }),
    fc.tuple(fc.constantFrom(world.floor, world.balcony), protoKey, hostileValue).map(
      ([tierId, key, value]) => {
        const item: Record<string, unknown> = { tierId, quantity: 1 };
        define(item, key, value);
        return item;
      },
    ),
  );
}

function itemsValue(world: CheckoutWorld): fc.Arbitrary<unknown> {
  return fc.oneof(
    hostileValue,
    fc.constant([]),
    fc.array(fc.uuid(), { minLength: 21, maxLength: 40 }).map((ids) =>
      ids.map((tierId) => ({ tierId, quantity: 1 }))
    ),
    fc.constantFrom(
      [{ tierId: world.floor, quantity: 1 }, { tierId: world.floor, quantity: 1 }],
      [{ tierId: world.floor, quantity: 1 }, { tierId: world.floor.toUpperCase(), quantity: 2 }],
    ),
    fc.array(itemValue(world), { minLength: 1, maxLength: 4 }),
    deepNesting(2000),
  );
}

type Path = (string | number)[];

type Mutation =
  | { op: "set"; path: Path; value: unknown }
  | { op: "delete"; path: Path }
  | { op: "addKey"; at: "root" | number; key: string; value: unknown };

function mutation(world: CheckoutWorld): fc.Arbitrary<Mutation> {
  const set = (path: Path, value: fc.Arbitrary<unknown>) =>
    value.map((v): Mutation => ({ op: "set", path, value: v }));
  return fc.oneof(
    set(["eventId"], idValue(world)),
    set(["items"], itemsValue(world)),
    fc.nat(1).chain((i) => set(["items", i], itemValue(world))),
    fc.nat(1).chain((i) => set(["items", i, "tierId"], idValue(world))),
    fc.nat(1).chain((i) => set(["items", i, "quantity"], quantityValue())),
    set(["successUrl"], urlValue()),
    set(["cancelUrl"], urlValue()),
    set(["email"], emailValue()),
    set(["name"], nameValue()),
    fc.constantFrom<Path>(
      ["eventId"],
      ["items"],
      ["email"],
      ["items", 0, "tierId"],
      ["items", 0, "quantity"],
      ["items", 0],
    ).map((path): Mutation => ({ op: "delete", path })),
    fc.record({
      op: fc.constant("addKey" as const),
      at: fc.constantFrom<"root" | number>("root", 0, 1),
      key: protoKey,
      value: hostileValue,
    }),
  );
}

/** A deep copy that keeps Raw and Segment values (generated values must never be mutated). */
function copy(value: unknown): unknown {
  if (value instanceof Raw || value instanceof Segment) return value;
  if (Array.isArray(value)) return value.map(copy);
  if (isRecord(value)) {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value)) define(out, key, copy(value[key]));
    return out;
  }
  return value;
}

function applyMutations(base: Record<string, unknown>, mutations: Mutation[]): unknown {
  const body = copy(base) as Record<string, unknown>;
  for (const original of mutations) {
    const m = "value" in original ? { ...original, value: copy(original.value) } : original;
    if (m.op === "addKey") {
      const target = m.at === "root" ? body : (body.items as unknown[] | undefined)?.[m.at];
      if (isRecord(target)) define(target, m.key, m.value);
      continue;
    }
    let target: unknown = body;
    for (const step of m.path.slice(0, -1)) {
      target = isRecord(target) || Array.isArray(target)
        ? (target as Record<string | number, unknown>)[step]
        : undefined;
    }
    const last = m.path[m.path.length - 1]!;
    if (Array.isArray(target) && typeof last === "number") {
      if (m.op === "set") target[last] = m.value;
      else target.splice(last, 1);
    } else if (isRecord(target) && typeof last === "string") {
      if (m.op === "set") define(target, last, m.value);
      else delete target[last];
    }
  }
  return body;
}

/** Bodies that are not JSON (or not UTF-8). */
function malformedBody(world: CheckoutWorld): fc.Arbitrary<BodySpec> {
  const valid = validBodyText(world);
  const text = (arb: fc.Arbitrary<string>) => arb.map((t): BodySpec => ({ kind: "text", text: t }));
  return fc.oneof(
    text(fc.string({ unit: "binary", maxLength: 80 })),
    text(fc.string({ unit: "binary-ascii", maxLength: 80 })),
    text(fc.tuple(valid, fc.nat()).map(([t, n]) => t.slice(0, n % t.length))),
    text(
      fc.tuple(
        valid,
        fc.constantFrom(",", "}", "]", "x", " //", "\u0000", "{}", "'", "--", "/*"),
      ).map(([t, g]) => t + g),
    ),
    text(valid.map((t) => t.replaceAll('"', "'"))),
    text(valid.map((t) => t.replace(/"(\w+)":/g, "$1:"))),
    text(valid.map((t) => t.replace(/}$/, ",}"))),
    text(valid.map((t) => t.replace("{", "{/* comment */"))),
    text(valid.map((t) => t.replace(/("quantity":)\d+/, "$1NaN"))),
    text(valid.map((t) => t.replace(/("quantity":)\d+/, "$1Infinity"))),
    text(valid.map((t) => t.replace(/("quantity":)\d+/, "$1-Infinity"))),
    text(valid.map((t) => t.replace(/("quantity":)\d+/, "$10x1"))),
    text(valid.map((t) => t.replace(/("quantity":)\d+/, "$101"))),
    text(valid.map((t) => t.replace(/("quantity":)\d+/, "$1+1"))),
    text(valid.map((t) => t.replace(/("quantity":)\d+/, "$1undefined"))),
    text(valid.map((t) => t.replace('"eventId":"', '"eventId":"\u0001'))),
    text(valid.map((t) => t.replace('"eventId":"', '"eventId":"\\x'))),
    text(valid.map((t) => t.replace('"eventId":"', '"eventId":"\\u12'))),
    text(valid.map((t) => `\ufeff\ufeff${t}`)),
    text(fc.constantFrom("", " ", "null null", "{", "[", '{"', "{}}", "[]]", "'{}'", "undefined")),
    text(fc.integer({ min: 100, max: 5000 }).map((d) => "[".repeat(d))),
    fc.tuple(
      valid,
      fc.nat(),
      fc.constantFrom(
        [0xff],
        [0xc0, 0xaf],
        [0xed, 0xa0, 0x80],
        [0x80],
        [
          0xf8,
          0x88,
          0x80,
          0x80,
          0x80,
        ],
        [0xfe, 0xff],
        [0xf4, 0x90, 0x80, 0x80],
      ),
    ).map(([t, at, bad]): BodySpec => {
      const bytes = [...encoder.encode(t)];
      bytes.splice(at % bytes.length, 0, ...bad);
      return { kind: "bytes", bytes };
    }),
    valid.map((t): BodySpec => {
      // UTF-16LE with a BOM: valid JSON, wrong encoding.
      const bytes = [0xff, 0xfe];
      for (const c of t) bytes.push(c.charCodeAt(0) & 0xff, c.charCodeAt(0) >> 8);
      return { kind: "bytes", bytes };
    }),
  );
}

/** JSON whose root is not an object. */
function wrongShapeBody(world: CheckoutWorld): fc.Arbitrary<BodySpec> {
  const valid = validBodyText(world);
  return fc.oneof(
    fc.jsonValue({ maxDepth: 3 }).filter((v) => !isRecord(v)).map(toJson),
    deepNesting(4000).map((r) => r.text),
    fc.constantFrom("null", "[]", '"{}"', "0", "true", "-1e400", "[{}]"),
    valid.map((t) => `[${t}]`),
    valid.map((t) => JSON.stringify(t)),
    fc.tuple(fc.constantFrom(...PROTO_KEYS), valid).map(([k, t]) => `{${JSON.stringify(k)}:${t}}`),
    protoObject.map((r) => r.text),
    valid.map((t) => `{"constructor":{"prototype":{"polluted":"yes"}},${t.slice(1)}`),
    valid.map((t) => `{"__proto__":{"polluted":"yes"},${t.slice(1)}`),
  ).map((text): BodySpec => ({ kind: "text", text }));
}

function mutatedBody(world: CheckoutWorld): fc.Arbitrary<BodySpec> {
  return fc.tuple(fc.nat(5), fc.array(mutation(world), { minLength: 1, maxLength: 3 })).map(
    ([variant, mutations]): BodySpec => ({
      kind: "text",
      text: toJson(applyMutations(validBody(world, variant), mutations)),
    }),
  );
}

/**
 * Well-formed bodies full of hostile strings that reach the database, each made invalid by
 * exactly one thing only the database knows: an unknown event, a tier not in the event, or a
 * quantity above the tier's max_per_order.
 */
function databaseBody(world: CheckoutWorld): fc.Arbitrary<BodySpec> {
  const tierIds = [world.floor, world.balcony, world.last];
  return fc.record({
    defect: fc.oneof(
      unknownUuid(world).map((id) => ({ kind: "event" as const, id, at: 0, over: 0 })),
      fc.tuple(unknownUuid(world), fc.nat(1)).map(([id, at]) => ({
        kind: "tier" as const,
        id,
        at,
        over: 0,
      })),
      fc.tuple(fc.nat(2), fc.integer({ min: 1, max: 120 })).map(([at, over]) => ({
        kind: "quantity" as const,
        id: "",
        at,
        over,
      })),
    ),
    email: hostileEmail,
    name: fc.option(hostileString, { nil: undefined }),
    successUrl: fc.option(hostileAllowedUrl, { nil: undefined }),
    cancelUrl: fc.option(hostileAllowedUrl, { nil: undefined }),
    upper: fc.boolean(),
  }).map((g): BodySpec => {
    const cased = (id: string) => g.upper ? id.toUpperCase() : id;
    const body: Record<string, unknown> = { eventId: cased(world.eventId) };
    let items = [{ tierId: cased(world.floor), quantity: 1 }, {
      tierId: cased(world.balcony),
      quantity: 2,
    }];
    if (g.defect.kind === "event") body.eventId = g.defect.id;
    if (g.defect.kind === "tier") items[g.defect.at]!.tierId = g.defect.id;
    if (g.defect.kind === "quantity") {
      const tier = tierIds[g.defect.at]!;
      items = [{ tierId: cased(tier), quantity: world.tiers.get(tier)! + g.defect.over }];
    }
    body.items = items;
    if (g.successUrl !== undefined) body.successUrl = g.successUrl;
    if (g.cancelUrl !== undefined) body.cancelUrl = g.cancelUrl;
    if (world.endpoint === "guest-checkout") {
      body.email = g.email;
      if (g.name !== undefined) body.name = g.name;
    }
    return { kind: "text", text: toJson(body) };
  });
}

function oversizeBody(world: CheckoutWorld): fc.Arbitrary<BodySpec> {
  return fc.record({
    text: fc.oneof(validBodyText(world), fc.constantFrom("[", "x", '{"eventId":"', "")),
    size: fc.oneof(
      fc.constant(1 << 20),
      fc.constant(MAX_CHECKOUT_BODY + 1),
      fc.integer({ min: MAX_CHECKOUT_BODY + 1, max: 1 << 20 }),
    ),
    pad: fc.constantFrom(" ", "x", "\n", "0"),
  }).map((b): BodySpec => ({ kind: "padded", ...b }));
}

const XFF = fc.oneof(
  fc.constantFrom(
    "203.0.113.7",
    "203.0.113.7, 10.0.0.1",
    "::1",
    "[::1]",
    "999.1.1.1",
    "'; drop table public.orders; --",
    "1.2.3.4'--",
    "fe80::1%eth0",
    "unknown",
    "",
  ),
  fc.array(fc.constantFrom(...SQL_BITS), { minLength: 1, maxLength: 3 }).map((p) => p.join("")),
).filter(headerOk);

const FORWARDED_FOR: fc.Arbitrary<[string, string][]> = fc.option(XFF, { nil: undefined }).map((
  x,
): [string, string][] => x === undefined ? [] : [["x-forwarded-for", x]]);

// Forged tokens.

/** One kind of forged Authorization header: its name, how often it is drawn, what it makes. */
export interface Forgery {
  name: string;
  weight: number;
  auth: fc.Arbitrary<AuthSpec>;
}

/** A part of a JWT: its valid value, forged ones, and the odds valid : forged in the mix. */
interface Part<T> {
  valid: fc.Arbitrary<T>;
  forged: fc.Arbitrary<T>;
  odds: [number, number];
}

/** A part as "any mix of valid and forged parts" draws it: either, at the part's odds. */
function mix<T>(part: Part<T>): fc.Arbitrary<T> {
  return fc.oneof(
    { weight: part.odds[0], arbitrary: part.valid },
    { weight: part.odds[1], arbitrary: part.forged },
  );
}

type ClaimName = "sub" | "role" | "aud" | "is_anonymous" | "exp" | "nbf";
type JwtParts = { [K in keyof JwtSpec]: fc.Arbitrary<JwtSpec[K]> };

/** The claims of a user token, part by part. */
function claimParts(world: CheckoutWorld): Record<ClaimName, Part<unknown>> {
  const now = nowSeconds();
  const badRole = fc.oneof(
    fc.constantFrom(
      "anon",
      "service_role",
      "Authenticated",
      "authenticated ",
      "AUTHENTICATED",
      "supabase_admin",
      "postgres",
      "authenticator",
      "",
      "authenticated\u0000",
      undefined,
    ),
    hostileValue,
  ).filter((r) => r !== "authenticated");
  const badSub = fc.oneof(
    fc.constantFrom(
      undefined,
      "",
      "user-42",
      "00000000-0000-0000-0000-00000000000g",
      `${world.userId}'`,
      `${world.userId}; drop table public.orders; --`,
      "'; drop table public.orders; --",
      "*",
      "%",
    ),
    hostileString,
    fc.integer(),
    hostileValue,
  ).filter((s) => !(typeof s === "string" && LOOSE_UUID.test(s)));
  const past = fc.integer({ min: 60, max: 1e9 }).map((a) => now - a);
  const notANumber = fc.oneof(
    fc.constantFrom("9999999999", null, true, "never", [9999999999], undefined),
    hostileString,
  );
  return {
    sub: { valid: fc.constant(world.userId), forged: badSub, odds: [3, 1] },
    role: { valid: fc.constant("authenticated"), forged: badRole, odds: [3, 1] },
    aud: {
      valid: fc.constantFrom("authenticated", ["authenticated"]),
      forged: fc.constantFrom("anon", undefined, ["anon"], []),
      odds: [2, 4],
    },
    is_anonymous: {
      valid: fc.constantFrom(undefined, false),
      forged: fc.constantFrom(true, "true", 1, null),
      odds: [3, 4],
    },
    exp: {
      valid: fc.constant(now + 3600),
      forged: fc.oneof(past, notANumber),
      odds: [3, 2],
    },
    // At least two minutes ahead: beyond the verifier's leeway.
    nbf: {
      valid: fc.constant(undefined),
      forged: fc.integer({ min: 120, max: 1e9 }).map((a) => now + a),
      odds: [1, 7],
    },
  };
}

const WRONG_SECRET = fc.oneof(
  fc.string({ minLength: 1, maxLength: 64 }),
  fc.constantFrom(
    `${LOCAL_JWT_SECRET}x`,
    LOCAL_JWT_SECRET.slice(0, -1),
    LOCAL_JWT_SECRET.toUpperCase(),
    ` ${LOCAL_JWT_SECRET}`,
    TEST_WEBHOOK_SECRET,
    "secret",
  ),
).filter((s) => s !== LOCAL_JWT_SECRET);

/** The parts of a JWT besides its claims and signature. */
const JWT_PARTS: {
  scheme: Part<string>;
  header: Part<unknown>;
  signWith: Part<string | null>;
  suffix: Part<string>;
} = {
  scheme: {
    valid: fc.constant("Bearer "),
    forged: fc.constantFrom(
      "Bearer  ",
      "Bearer\t",
      "Basic ",
      "Token ",
      "JWT ",
      "Bearer",
      "Bearer: ",
      "Bearer=",
      "Beare ",
      "Bearer ,",
    ),
    odds: [8, 2],
  },
  header: {
    valid: fc.constant({ alg: "HS256", typ: "JWT" }),
    forged: fc.oneof(
      {
        weight: 3,
        arbitrary: fc.record({
          alg: fc.constantFrom<unknown>(
            "none",
            "None",
            "NONE",
            "nOnE",
            "",
            "HS512",
            "HS384",
            "RS256",
            "ES256",
            "PS256",
            "EdDSA",
            "hs256",
            "HS256 ",
            " HS256",
            null,
            256,
            ["HS256"],
            { alg: "HS256" },
          ),
          typ: fc.constantFrom("JWT", undefined),
        }),
      },
      { weight: 1, arbitrary: fc.constant<unknown>({ typ: "JWT" }) },
      {
        weight: 1,
        arbitrary: fc.constantFrom<unknown>(
          new Raw("[]"),
          new Raw("null"),
          new Raw('"HS256"'),
          new Raw("{"),
          new Raw('{"__proto__":{"alg":"HS256"}}'),
        ),
      },
      {
        weight: 1,
        arbitrary: fc.stringMatching(/^[A-Za-z0-9_-]{0,40}$/).map((s) => new Segment(s)),
      },
    ),
    odds: [6, 6],
  },
  signWith: {
    valid: fc.constant(LOCAL_JWT_SECRET),
    forged: fc.oneof(
      { weight: 2, arbitrary: WRONG_SECRET },
      { weight: 1, arbitrary: fc.constant(null) },
    ),
    odds: [3, 3],
  },
  suffix: {
    valid: fc.constant(""),
    forged: fc.constantFrom(".", "..", " x", ".abc", ",Bearer x.y.z", "!"),
    odds: [8, 1],
  },
};

/** An empty or made-up signature, for a token that is not signed. */
const ANY_SIGNATURE = fc.oneof(fc.constant(""), fc.stringMatching(/^[A-Za-z0-9_-]{1,86}$/));

/**
 * Every kind of forged Authorization header enhanced-checkout must refuse, by name: raw values,
 * JWTs with one forged part each (all else valid), and any mix of valid and forged parts.
 */
export function forgedTokenCases(world: CheckoutWorld): Forgery[] {
  const claim = claimParts(world);
  const claimsOf = (pick: (name: ClaimName) => fc.Arbitrary<unknown>) =>
    fc.record({
      sub: pick("sub"),
      role: pick("role"),
      aud: pick("aud"),
      is_anonymous: pick("is_anonymous"),
      iat: fc.constant(nowSeconds()),
      exp: pick("exp"),
      nbf: pick("nbf"),
      email: fc.option(hostileString, { nil: undefined }),
    }).map((claims): unknown => claims);
  const validClaims = claimsOf((name) => claim[name].valid);
  const mixedClaims = claimsOf((name) => mix(claim[name]));
  const forgedClaim = (forged: ClaimName) =>
    claimsOf((name) => name === forged ? claim[name].forged : claim[name].valid);
  const underProto = (claims: fc.Arbitrary<unknown>) =>
    claims.map((c): unknown => new Raw(`{"__proto__":${toJson(c)}}`));
  const notAnObject = fc.oneof(
    fc.jsonValue({ maxDepth: 2 }).filter((v) => !isRecord(v)),
    fc.stringMatching(/^[A-Za-z0-9_-]{0,60}$/).map((s) => new Segment(s)),
  );
  /** A JWT whose parts are valid but for `forged`. */
  const jwt = (forged: Partial<JwtParts>): fc.Arbitrary<AuthSpec> =>
    fc.record<JwtSpec>({
      scheme: JWT_PARTS.scheme.valid,
      header: JWT_PARTS.header.valid,
      claims: validClaims,
      signWith: JWT_PARTS.signWith.valid,
      signature: fc.constant(""),
      tamper: fc.constant(undefined),
      suffix: JWT_PARTS.suffix.valid,
      ...forged,
    }).map((spec): AuthSpec => ({ kind: "jwt", jwt: spec }));
  const raw = (value: fc.Arbitrary<string>) =>
    value.filter(headerOk).map((v): AuthSpec => ({ kind: "raw", value: v }));
  const one = (name: string, auth: fc.Arbitrary<AuthSpec>): Forgery => ({ name, weight: 1, auth });
  return [
    one("no Authorization header", fc.constant<AuthSpec>({ kind: "absent" })),
    one(
      "a known bad value",
      raw(fc.constantFrom(
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer null",
        "Bearer undefined",
        "Bearer a.b.c",
        "Bearer ..",
        "Bearer ...",
        `Bearer ${"A".repeat(9000)}.${"B".repeat(9000)}.${"C".repeat(100)}`,
        `Bearer ${world.validToken.split(".").slice(0, 2).join(".")}`,
        `Bearer ${world.validToken.split(".").reverse().join(".")}`,
        world.validToken,
      )),
    ),
    one("a hostile string", raw(hostileString)),
    one("binary ASCII", raw(fc.string({ unit: "binary-ascii", maxLength: 120 }))),
    one(
      "Bearer and random base64url segments",
      raw(
        fc.array(fc.stringMatching(/^[A-Za-z0-9_-]{0,50}$/), { minLength: 1, maxLength: 5 })
          .map((segments) => `Bearer ${segments.join(".")}`),
      ),
    ),
    one("a scheme other than `Bearer `", jwt({ scheme: JWT_PARTS.scheme.forged })),
    one(
      "a header with another alg, or not a JSON object",
      jwt({ header: JWT_PARTS.header.forged }),
    ),
    one("sub missing or not a UUID", jwt({ claims: forgedClaim("sub") })),
    one("role not authenticated", jwt({ claims: forgedClaim("role") })),
    one("aud without authenticated", jwt({ claims: forgedClaim("aud") })),
    one("an anonymous sign-in (is_anonymous)", jwt({ claims: forgedClaim("is_anonymous") })),
    one("expired, or exp not a number", jwt({ claims: forgedClaim("exp") })),
    one("not valid yet (nbf ahead)", jwt({ claims: forgedClaim("nbf") })),
    one("the claims under __proto__", jwt({ claims: underProto(validClaims) })),
    one("claims that are not a JSON object", jwt({ claims: notAnObject })),
    one("signed with another secret", jwt({ signWith: WRONG_SECRET })),
    one(
      "unsigned: an empty or made-up signature",
      jwt({ signWith: fc.constant(null), signature: ANY_SIGNATURE }),
    ),
    one(
      "another user's claims swapped in after signing",
      jwt({ tamper: claimsOf((name) => name === "sub" ? fc.uuid() : claim[name].valid) }),
    ),
    one("hostile claims swapped in after signing", jwt({ tamper: mixedClaims })),
    one("junk after the token", jwt({ suffix: JWT_PARTS.suffix.forged })),
    {
      name: "any mix of valid and forged parts",
      weight: 11,
      auth: jwt({
        scheme: mix(JWT_PARTS.scheme),
        header: mix(JWT_PARTS.header),
        claims: fc.oneof(
          { weight: 6, arbitrary: mixedClaims },
          { weight: 1, arbitrary: underProto(mixedClaims) },
          { weight: 1, arbitrary: notAnObject },
        ),
        signWith: mix(JWT_PARTS.signWith),
        signature: ANY_SIGNATURE,
        tamper: fc.oneof(
          { weight: 5, arbitrary: fc.constant(undefined) },
          { weight: 1, arbitrary: mixedClaims },
        ),
        suffix: mix(JWT_PARTS.suffix),
      }),
    },
  ];
}

/** A forged Authorization header of any kind in {@link forgedTokenCases}, tagged with it. */
function forgedAuth(world: CheckoutWorld): fc.Arbitrary<AuthSpec> {
  return fc.oneof(
    ...forgedTokenCases(world).map(({ name, weight, auth }) => ({
      weight,
      arbitrary: auth.map((spec): AuthSpec => ({ ...spec, forgery: name })),
    })),
  ).filter((a) => !authMayBeValid(a));
}

/** What a guest-checkout request may carry as Authorization: it is ignored there. */
const GUEST_AUTH: fc.Arbitrary<AuthSpec> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<AuthSpec>({ kind: "absent" }) },
  { weight: 1, arbitrary: fc.constant<AuthSpec>({ kind: "valid" }) },
  {
    weight: 1,
    arbitrary: hostileString.filter(headerOk).map((value): AuthSpec => ({ kind: "raw", value })),
  },
);

/** The named categories of bad checkout requests, each with one kind of defect (or several). */
export function checkoutCategories(
  world: CheckoutWorld,
): { name: string; runs: number; arbitrary: fc.Arbitrary<CheckoutSpec> }[] {
  const enhanced = world.endpoint === "enhanced-checkout";
  const validAuth: fc.Arbitrary<AuthSpec> = enhanced ? fc.constant({ kind: "valid" }) : GUEST_AUTH;
  const validBodySpec = validBodyText(world).map((text): BodySpec => ({ kind: "text", text }));
  const invalidBody = fc.oneof(
    malformedBody(world),
    wrongShapeBody(world),
    mutatedBody(world),
    databaseBody(world),
    oversizeBody(world),
  );
  const spec = (
    category: string,
    parts: {
      method?: fc.Arbitrary<string>;
      keys?: fc.Arbitrary<string[]>;
      contentType?: fc.Arbitrary<string | null>;
      auth?: fc.Arbitrary<AuthSpec>;
      body?: fc.Arbitrary<BodySpec>;
      extraHeaders?: fc.Arbitrary<[string, string][]>;
    },
  ): fc.Arbitrary<CheckoutSpec> =>
    fc.record({
      category: fc.constant(category),
      method: parts.method ?? fc.constant("POST"),
      keys: parts.keys ?? VALID_KEY.map((k) => [k]),
      contentType: parts.contentType ?? VALID_CONTENT_TYPE,
      auth: parts.auth ?? validAuth,
      body: parts.body ?? validBodySpec,
      extraHeaders: parts.extraHeaders ?? fc.constant([]),
    });
  const categories = [
    {
      name: "wrong method",
      runs: 80,
      arbitrary: spec("wrong method", { method: CHECKOUT_METHODS }),
    },
    {
      name: "bad Idempotency-Key",
      runs: 120,
      arbitrary: spec("bad Idempotency-Key", { keys: INVALID_KEY }),
    },
    {
      name: "wrong Content-Type",
      runs: 100,
      arbitrary: spec("wrong Content-Type", {
        contentType: INVALID_CONTENT_TYPE,
        body: fc.oneof(validBodySpec, mutatedBody(world)),
      }),
    },
    {
      name: "body over 16 KiB (up to 1 MiB)",
      runs: 50,
      arbitrary: spec("body over 16 KiB (up to 1 MiB)", { body: oversizeBody(world) }),
    },
    {
      name: "malformed JSON",
      runs: 150,
      arbitrary: spec("malformed JSON", { body: malformedBody(world) }),
    },
    {
      name: "JSON root not an object",
      runs: 60,
      arbitrary: spec("JSON root not an object", { body: wrongShapeBody(world) }),
    },
    {
      name: "wrong types and hostile values at every field",
      runs: 300,
      arbitrary: spec("wrong types and hostile values at every field", {
        body: mutatedBody(world),
      }),
    },
    {
      name: "hostile strings that reach the database",
      runs: 150,
      arbitrary: spec("hostile strings that reach the database", {
        body: databaseBody(world),
        extraHeaders: FORWARDED_FOR,
      }),
    },
    {
      name: "several defects at once",
      runs: 100,
      arbitrary: spec("several defects at once", {
        method: fc.oneof(fc.constant("POST"), CHECKOUT_METHODS),
        keys: fc.oneof(VALID_KEY.map((k) => [k]), INVALID_KEY),
        contentType: fc.oneof(VALID_CONTENT_TYPE, INVALID_CONTENT_TYPE),
        auth: enhanced ? fc.oneof(validAuth, forgedAuth(world)) : validAuth,
        body: fc.oneof(validBodySpec, invalidBody),
        extraHeaders: FORWARDED_FOR,
      }),
    },
  ];
  if (enhanced) {
    categories.push({
      name: "forged tokens",
      // 21 kinds (forgedTokenCases); the mix alone gets as many runs as all 320 had before.
      runs: 640,
      arbitrary: spec("forged tokens", { auth: forgedAuth(world) }),
    });
  }
  return categories;
}

/** A valid token spec (used once to check that the JWT builder signs like Supabase). */
export function validJwtSpec(world: CheckoutWorld): JwtSpec {
  const now = nowSeconds();
  return {
    scheme: "Bearer ",
    header: { alg: "HS256", typ: "JWT" },
    claims: {
      sub: world.userId,
      role: "authenticated",
      aud: "authenticated",
      iat: now,
      exp: now + 600,
    },
    signWith: LOCAL_JWT_SECRET,
    signature: "",
    suffix: "",
  };
}

// ---------------------------------------------------------------------------------------------
// Webhook requests
// ---------------------------------------------------------------------------------------------

export type SignatureFormat =
  | "standard"
  | "no-t"
  | "no-v1"
  | "v0-only"
  | "t-mismatch"
  | "t-garbage"
  | "other-body"
  | "empty-v1";

export type SignatureSpec =
  | { kind: "absent" }
  | { kind: "raw"; value: string }
  /** Signed with `secret`, `age` seconds ago (negative: in the future). */
  | { kind: "hmac"; secret: string; age: number; format: SignatureFormat };

export interface WebhookSpec {
  category: string;
  method: string;
  signature: SignatureSpec;
  body: BodySpec;
}

function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A Stripe-Signature header, made the way Stripe makes it (`t=…,v1=hex(hmac(t.payload))`). */
export async function stripeSignature(
  secret: string,
  timestamp: number,
  payload: Uint8Array,
  format: SignatureFormat = "standard",
): Promise<string> {
  const signed = (body: Uint8Array) => {
    const prefix = encoder.encode(`${timestamp}.`);
    const data = new Uint8Array(prefix.length + body.length);
    data.set(prefix);
    data.set(body, prefix.length);
    return hmacSha256(secret, data);
  };
  const mac = hex(await signed(format === "other-body" ? encoder.encode("{}") : payload));
  switch (format) {
    case "standard":
    case "other-body":
      return `t=${timestamp},v1=${mac}`;
    case "no-t":
      return `v1=${mac}`;
    case "no-v1":
      return `t=${timestamp}`;
    case "v0-only":
      return `t=${timestamp},v0=${mac}`;
    case "t-mismatch":
      return `t=${timestamp + 7},v1=${mac}`;
    case "t-garbage":
      return `t=abc${timestamp},v1=${mac}`;
    case "empty-v1":
      return `t=${timestamp},v1=`;
  }
}

/** The Request a webhook spec stands for. */
export async function buildWebhookRequest(
  spec: WebhookSpec,
  bytes: Uint8Array<ArrayBuffer> | null,
): Promise<Request> {
  const headers = new Headers({ "content-type": "application/json" });
  const sig = spec.signature;
  if (sig.kind === "raw") headers.set("stripe-signature", sig.value);
  if (sig.kind === "hmac") {
    headers.set(
      "stripe-signature",
      await stripeSignature(
        sig.secret,
        nowSeconds() - sig.age,
        bytes ?? new Uint8Array(),
        sig.format,
      ),
    );
  }
  const bodyless = spec.method === "GET" || spec.method === "HEAD";
  return new Request("http://functions.test/functions/v1/stripe-webhook", {
    method: spec.method,
    headers,
    body: bodyless ? null : bytes,
  });
}

/** Is this JSON shaped like a Stripe event (what a signed body must be to be applied)? */
function eventShaped(value: unknown): boolean {
  return isRecord(value) && typeof value.id === "string" && /^evt_[A-Za-z0-9_]+$/.test(value.id) &&
    typeof value.type === "string" && typeof value.data === "object" && value.data !== null;
}

/** The error codes the README allows for a webhook delivery; empty: it may be valid. */
export function expectedWebhookCodes(spec: WebhookSpec, bytes: Uint8Array | null): Set<string> {
  const codes = new Set<string>();
  if (spec.method !== "POST") codes.add("method_not_allowed");
  const sig = spec.signature;
  const headerValue = sig.kind === "absent"
    ? null
    : sig.kind === "raw"
    ? new Headers([["stripe-signature", sig.value]]).get("stripe-signature")
    : "signed";
  if (!headerValue) {
    codes.add("signature_missing");
    return codes;
  }
  const body = bytes ?? new Uint8Array();
  if (body.length > MAX_WEBHOOK_BODY) codes.add("payload_too_large");
  const signedRight = sig.kind === "hmac" && sig.secret === TEST_WEBHOOK_SECRET &&
    sig.format === "standard" && sig.age < 360;
  if (!signedRight) {
    codes.add("signature_invalid");
    return codes;
  }
  const parsed = parseJson(body);
  if (!parsed.ok) {
    codes.add("signature_invalid");
    codes.add("invalid_event");
  } else if (!eventShaped(parsed.value)) {
    codes.add("invalid_event");
    codes.add("signature_invalid");
  }
  return codes;
}

const EVENT_TYPES = [
  "checkout.session.completed",
  "checkout.session.expired",
  "checkout.session.async_payment_succeeded",
  "checkout.session.async_payment_failed",
  "charge.succeeded",
];

/** Event-shaped JSON (valid if it were signed right), with hostile strings inside. */
const eventBody: fc.Arbitrary<BodySpec> = fc.record({
  id: fc.stringMatching(/^evt_[A-Za-z0-9]{10,30}$/),
  type: fc.constantFrom(...EVENT_TYPES),
  session: fc.stringMatching(/^cs_test_[A-Za-z0-9]{10,40}$/),
  reference: fc.oneof(fc.uuid(), hostileString),
  amount: fc.oneof(fc.integer({ min: 0, max: 10_000 }), hostileNumber),
}).map((e): BodySpec => ({
  kind: "text",
  text: toJson({
    id: e.id,
    object: "event",
    api_version: "2026-10-28.endive",
    created: nowSeconds(),
    livemode: false,
    pending_webhooks: 1,
    type: e.type,
    data: {
      object: {
        id: e.session,
        object: "checkout.session",
        payment_status: "paid",
        client_reference_id: e.reference,
        metadata: { order_id: e.reference },
        amount_total: e.amount,
        currency: "usd",
      },
    },
  }),
}));

/** Bodies that are not Stripe events: garbage, malformed JSON, broken events, huge ones. */
const garbageEventBody: fc.Arbitrary<BodySpec> = fc.oneof(
  fc.string({ unit: "binary", maxLength: 200 }).map((text): BodySpec => ({ kind: "text", text })),
  fc.jsonValue({ maxDepth: 3 }).map((v): BodySpec => ({ kind: "text", text: toJson(v) })),
  fc.record({
    id: fc.oneof(
      hostileValue,
      hostileString.map((s) => `evt_${s}`),
      fc.constantFrom("evt_", "evt_'; drop table public.stripe_webhook_events; --", "EVT_abc"),
    ),
    type: fc.oneof(fc.constantFrom(...EVENT_TYPES), hostileValue),
    data: fc.oneof(fc.constant<unknown>({ object: {} }), hostileValue),
    object: fc.constant("event"),
  }, { requiredKeys: [] }).map((e): BodySpec => ({ kind: "text", text: toJson(e) })),
  eventBody.map((b): BodySpec => ({
    kind: "text",
    text: `{"__proto__":${b.kind === "text" ? b.text : "{}"}}`,
  })),
  eventBody.map((b): BodySpec => ({
    kind: "text",
    text: b.kind === "text" ? b.text.slice(0, -1) : "{",
  })),
  eventBody.map((b): BodySpec => ({
    kind: "bytes",
    bytes: [0xff, ...encoder.encode(b.kind === "text" ? b.text : "")],
  })),
  deepNesting(200_000).map((r): BodySpec => ({ kind: "text", text: r.text })),
  fc.record({
    text: fc.constantFrom('{"id":"evt_big","type":"x","data":{"pad":"', "[", "x"),
    size: fc.oneof(
      fc.constant(MAX_WEBHOOK_BODY + 1),
      fc.integer({ min: MAX_WEBHOOK_BODY + 1, max: 2 * MAX_WEBHOOK_BODY }),
    ),
    pad: fc.constantFrom(" ", "a"),
  }).map((b): BodySpec => ({ kind: "padded", ...b })),
);

const MALFORMED_SIGNATURE: fc.Arbitrary<SignatureSpec> = fc.oneof(
  fc.oneof(
    fc.constantFrom(
      "",
      " ",
      "t=",
      "v1=",
      "t=,v1=",
      "t=123",
      "t=0,v1=00",
      `t=${nowSeconds()},v1=${"0".repeat(64)}`,
      "t=-1,v1=abc",
      "t=1e10,v1=abc",
      "whsec_test_secret_for_local_runs_only",
      `t=${nowSeconds()},v1=${"z".repeat(8000)}`,
    ),
    hostileString,
    fc.string({ unit: "binary-ascii", maxLength: 200 }),
    fc.stringMatching(/^[0-9a-f]{64}$/).map((mac) => `t=${nowSeconds()},v1=${mac}`),
  ).filter(headerOk).map((value): SignatureSpec => ({ kind: "raw", value })),
  fc.record({
    kind: fc.constant("hmac" as const),
    secret: fc.constant(TEST_WEBHOOK_SECRET),
    age: fc.integer({ min: 0, max: 60 }),
    format: fc.constantFrom<SignatureFormat>(
      "no-t",
      "no-v1",
      "v0-only",
      "t-mismatch",
      "t-garbage",
      "other-body",
      "empty-v1",
    ),
  }),
);

/** The named categories of bad webhook deliveries. */
export function webhookCategories(): {
  name: string;
  runs: number;
  arbitrary: fc.Arbitrary<WebhookSpec>;
}[] {
  const anyBody = fc.oneof(eventBody, garbageEventBody);
  const wrongSecret = fc.oneof(
    fc.string({ minLength: 1, maxLength: 64 }),
    fc.constantFrom(
      `${TEST_WEBHOOK_SECRET}x`,
      TEST_WEBHOOK_SECRET.slice(0, -1),
      "whsec_",
      "whsec_live_other",
      LOCAL_JWT_SECRET,
    ),
  ).filter((s) => s !== TEST_WEBHOOK_SECRET);
  const spec = (
    category: string,
    parts: {
      method?: fc.Arbitrary<string>;
      signature: fc.Arbitrary<SignatureSpec>;
      body: fc.Arbitrary<BodySpec>;
    },
  ): fc.Arbitrary<WebhookSpec> =>
    fc.record({
      category: fc.constant(category),
      method: parts.method ?? fc.constant("POST"),
      signature: parts.signature,
      body: parts.body,
    });
  const fresh = (format: SignatureFormat = "standard") =>
    fc.integer({ min: 0, max: 60 }).map((age): SignatureSpec => ({
      kind: "hmac",
      secret: TEST_WEBHOOK_SECRET,
      age,
      format,
    }));
  return [
    {
      name: "unsigned",
      runs: 200,
      arbitrary: spec("unsigned", {
        signature: fc.constant<SignatureSpec>({ kind: "absent" }),
        body: anyBody,
      }),
    },
    {
      name: "signed with the wrong secret",
      runs: 200,
      arbitrary: spec("signed with the wrong secret", {
        signature: fc.tuple(wrongSecret, fc.integer({ min: 0, max: 60 })).map((
          [secret, age],
        ): SignatureSpec => ({ kind: "hmac", secret, age, format: "standard" })),
        body: anyBody,
      }),
    },
    {
      name: "stale timestamp",
      runs: 150,
      arbitrary: spec("stale timestamp", {
        signature: fc.oneof(
          fc.integer({ min: 360, max: 1e9 }),
          fc.constantFrom(301 + 60, 3600, 86_400),
        ).map((age): SignatureSpec => ({
          kind: "hmac",
          secret: TEST_WEBHOOK_SECRET,
          age,
          format: "standard",
        })),
        body: eventBody,
      }),
    },
    {
      name: "malformed Stripe-Signature",
      runs: 150,
      arbitrary: spec("malformed Stripe-Signature", {
        signature: MALFORMED_SIGNATURE,
        body: anyBody,
      }),
    },
    {
      name: "signed garbage",
      runs: 320,
      arbitrary: spec("signed garbage", { signature: fresh(), body: garbageEventBody }),
    },
    {
      name: "wrong method",
      runs: 80,
      arbitrary: spec("wrong method", {
        method: WEBHOOK_METHODS,
        signature: fresh(),
        body: eventBody,
      }),
    },
    {
      name: "several defects at once",
      runs: 60,
      arbitrary: spec("several defects at once", {
        method: fc.oneof(fc.constant("POST"), WEBHOOK_METHODS),
        signature: fc.oneof(
          fc.constant<SignatureSpec>({ kind: "absent" }),
          fresh(),
          MALFORMED_SIGNATURE,
          fc.integer({ min: 360, max: 1e9 }).map((age): SignatureSpec => ({
            kind: "hmac",
            secret: TEST_WEBHOOK_SECRET,
            age,
            format: "standard",
          })),
        ),
        body: anyBody,
      }),
    },
  ];
}
