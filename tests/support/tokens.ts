/** Mints Supabase-style access tokens for tests, signed like local Supabase does (HS256). */

/** The JWT secret the tests configure the functions with. */
export const TEST_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

function base64Url(bytes: Uint8Array | string): string {
  const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  return btoa(String.fromCharCode(...data)).replace(/\+/g, "-").replace(/\//g, "_").replace(
    /=+$/,
    "",
  );
}

/** Signs `claims` with HS256 (or leaves it unsigned with alg "none"). */
export async function signToken(
  claims: Record<string, unknown>,
  options: { secret?: string; alg?: "HS256" | "none" } = {},
): Promise<string> {
  const alg = options.alg ?? "HS256";
  const head = base64Url(JSON.stringify({ alg, typ: "JWT" }));
  const body = base64Url(JSON.stringify(claims));
  if (alg === "none") return `${head}.${body}.`;
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(options.secret ?? TEST_JWT_SECRET),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const signature = await crypto.subtle.sign(
    "HMAC",
    key,
    new TextEncoder().encode(`${head}.${body}`),
  );
  return `${head}.${body}.${base64Url(new Uint8Array(signature))}`;
}

/** A valid signed-in user's token for `sub`, expiring in an hour. */
export function userToken(sub: string, extra: Record<string, unknown> = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return signToken({
    sub,
    role: "authenticated",
    aud: "authenticated",
    iat: now,
    exp: now + 3600,
    ...extra,
  });
}
