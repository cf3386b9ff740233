/**
 * Settings and keys of the local stack (`npm start`, the browser test): LOCAL USE ONLY. The JWT
 * secret is the well-known default of a local Supabase (`supabase start`), so tokens minted here
 * are worthless anywhere else.
 */

/** Supabase's local-development JWT secret (the default of `supabase start`). */
export const LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

/** The demo event of supabase/seed.sql. */
export const DEMO_EVENT_ID = "00000000-0000-4000-8000-000000000001";

/** The demo event's tiers (supabase/seed.sql). */
export const DEMO_TIERS = {
  general: "00000000-0000-4000-8000-000000000101",
  vip: "00000000-0000-4000-8000-000000000102",
  livestream: "00000000-0000-4000-8000-000000000103",
} as const;

/** Default ports, as a local Supabase uses them (API 54321, database 54322, site 3000). */
export const DEFAULT_PORTS = { functions: 54321, database: 54322, storefront: 3000, stripe: 12111 };

/** The local Postgres that `npm start` keeps under .local/ (when DATABASE_URL is not set). */
export function localDatabaseUrl(port: number = DEFAULT_PORTS.database): string {
  return `postgresql://postgres:postgres@127.0.0.1:${port}/postgres?sslmode=disable`;
}

function base64Url(data: Uint8Array | string): string {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function base64UrlDecode(text: string): Uint8Array<ArrayBuffer> {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/").padEnd(
    Math.ceil(text.length / 4) * 4,
    "=",
  );
  return Uint8Array.from(atob(padded), (char) => char.charCodeAt(0));
}

function hmacKey(secret: string, usage: "sign" | "verify"): Promise<CryptoKey> {
  return crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    [usage],
  );
}

/** Signs `claims` as an HS256 JWT, as local Supabase (GoTrue) signs its tokens. */
export async function signJwt(claims: Record<string, unknown>, secret: string): Promise<string> {
  const signingInput = `${base64Url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${
    base64Url(JSON.stringify(claims))
  }`;
  const signature = await crypto.subtle.sign(
    "HMAC",
    await hmacKey(secret, "sign"),
    new TextEncoder().encode(signingInput),
  );
  return `${signingInput}.${base64Url(new Uint8Array(signature))}`;
}

/** The claims of an HS256 JWT signed with `secret` and not expired, or null. */
export async function verifyJwt(
  token: string,
  secret: string,
  nowSeconds: number = Math.floor(Date.now() / 1000),
): Promise<Record<string, unknown> | null> {
  const [head, body, signature, ...rest] = token.split(".");
  if (!head || !body || !signature || rest.length > 0) return null;
  try {
    const header = JSON.parse(new TextDecoder().decode(base64UrlDecode(head)));
    if (header?.alg !== "HS256") return null;
    const valid = await crypto.subtle.verify(
      "HMAC",
      await hmacKey(secret, "verify"),
      base64UrlDecode(signature),
      new TextEncoder().encode(`${head}.${body}`),
    );
    if (!valid) return null;
    const claims = JSON.parse(new TextDecoder().decode(base64UrlDecode(body)));
    if (typeof claims !== "object" || claims === null) return null;
    if (typeof claims.exp === "number" && claims.exp <= nowSeconds) return null;
    return claims as Record<string, unknown>;
  } catch {
    return null;
  }
}

/**
 * The API key for `role` (anon or service_role). With the default secret these are exactly the
 * demo keys a local Supabase (`supabase start`) prints, so they never change between runs.
 */
export function apiKey(role: "anon" | "service_role", secret: string): Promise<string> {
  return signJwt({ iss: "supabase-demo", role, exp: 1983812996 }, secret);
}

/** A signed-in user's access token for `sub`, valid for `ttlSeconds` (default 1 hour). */
export function userAccessToken(
  sub: string,
  secret: string,
  options: { email?: string; ttlSeconds?: number } = {},
): Promise<string> {
  const iat = Math.floor(Date.now() / 1000);
  return signJwt({
    iss: "supabase-local",
    sub,
    aud: "authenticated",
    role: "authenticated",
    ...(options.email ? { email: options.email } : {}),
    iat,
    exp: iat + (options.ttlSeconds ?? 3600),
  }, secret);
}
