/**
 * Tokens for tests and local tooling, shaped like Supabase Auth's: LOCAL USE ONLY, never
 * imported by supabase/functions. One local HS256 secret; HS256, RS256 and ES256 tokens (with
 * a kid); key pairs and the public JWKS that would publish them; and the raw pieces forgery
 * tests need (base64url, a signature over any header and payload, unsigned tokens).
 *
 * Honest tokens are signed by `jose`, so they share no code with the verifier they test; the
 * raw pieces use Web Crypto directly, because they must sign what jose rightly refuses.
 */
import { calculateJwkThumbprint, exportJWK, generateKeyPair as joseKeyPair, SignJWT } from "jose";

/**
 * Supabase's local-development JWT secret (the default of `supabase start`): the HS256 secret
 * of `npm start` and of the tests. Tokens signed with it are worthless anywhere else.
 */
export const LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

/** A token's claims; a claim set to undefined is left out. */
export type JwtClaims = Record<string, unknown>;

/** The asymmetric algorithms Supabase's signing keys use. */
export type AsymmetricAlg = "ES256" | "RS256";

/** An asymmetric signing key: its algorithm, the kid it is published under, both halves. */
export interface SigningKeyPair {
  alg: AsymmetricAlg;
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

/** What signs a token: an HS256 secret (text or bytes), or a key pair (with its alg and kid). */
export type SigningKey = string | Uint8Array | SigningKeyPair;

/** A public key as a JWKS (`/auth/v1/.well-known/jwks.json`) publishes it. */
export type PublicJwk = JsonWebKey & { kid: string; alg: AsymmetricAlg; use: "sig" };

/** Options of {@link signJwt}. */
export interface SignOptions {
  /**
   * Header fields over `{alg, typ: "JWT", kid}`; undefined removes one (`{ kid: undefined }`).
   * `alg` always follows the key: a token that lies about it is made with {@link signature}.
   */
  header?: Record<string, unknown>;
}

/** Options of {@link userToken}. */
export interface UserTokenOptions {
  /** Default: {@link LOCAL_JWT_SECRET}. */
  key?: SigningKey;
  /** Default: one hour. */
  ttlSeconds?: number;
}

/** Options of {@link generateKeyPair}. */
export interface KeyPairOptions {
  /** Default: the RFC 7638 thumbprint of the public key. */
  kid?: string;
  /** Whether the private key can be exported (to keep it in a file); default false. */
  extractable?: boolean;
}

const encoder = new TextEncoder();

function bytes(data: string | Uint8Array): Uint8Array<ArrayBuffer> {
  return typeof data === "string" ? encoder.encode(data) : new Uint8Array(data);
}

function isPair(key: SigningKey): key is SigningKeyPair {
  return typeof key === "object" && !(key instanceof Uint8Array);
}

function withoutUndefined(record: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(record).filter(([, value]) => value !== undefined));
}

/** Signs `claims` (HS256 by default with the local secret; a key pair's alg and kid). */
export async function signJwt(
  claims: JwtClaims,
  key: SigningKey = LOCAL_JWT_SECRET,
  options: SignOptions = {},
): Promise<string> {
  const alg = isPair(key) ? key.alg : "HS256";
  const header = withoutUndefined({
    alg,
    typ: "JWT",
    ...(isPair(key) ? { kid: key.kid } : {}),
    ...options.header,
  });
  return await new SignJWT(withoutUndefined(claims))
    .setProtectedHeader({ ...header, alg })
    .sign(isPair(key) ? key.privateKey : bytes(key));
}

/** `claims` with alg "none" and an empty signature: what no verifier may accept. */
export function unsignedJwt(claims: JwtClaims): string {
  return `${jsonSegment({ alg: "none", typ: "JWT" })}.${jsonSegment(claims)}.`;
}

/**
 * A signed-in user's claims as Supabase Auth issues them (role and aud "authenticated"), valid
 * for `ttlSeconds` from now; `extra` adds, replaces or (with undefined) removes claims.
 */
export function userClaims(
  sub: string,
  extra: JwtClaims = {},
  options: { ttlSeconds?: number } = {},
): JwtClaims {
  const iat = Math.floor(Date.now() / 1000);
  const exp = iat + (options.ttlSeconds ?? 3600);
  return { sub, role: "authenticated", aud: "authenticated", iat, exp, ...extra };
}

/** A signed-in user's access token for `sub`: {@link userClaims} signed with `options.key`. */
export function userToken(
  sub: string,
  extra: JwtClaims = {},
  options: UserTokenOptions = {},
): Promise<string> {
  return signJwt(userClaims(sub, extra, options), options.key);
}

/**
 * The API key for `role` (anon or service_role). With the local secret these are exactly the
 * demo keys a local Supabase (`supabase start`) prints, so they never change between runs.
 */
export function apiKey(
  role: "anon" | "service_role",
  key: SigningKey = LOCAL_JWT_SECRET,
): Promise<string> {
  return signJwt({ iss: "supabase-demo", role, exp: 1983812996 }, key);
}

/** A new ES256 (P-256) or RS256 (2048-bit) key pair, under `kid` or its thumbprint. */
export async function generateKeyPair(
  alg: AsymmetricAlg,
  options: KeyPairOptions = {},
): Promise<SigningKeyPair> {
  const { privateKey, publicKey } = await joseKeyPair(alg, {
    extractable: options.extractable ?? false,
  });
  const kid = options.kid ?? await calculateJwkThumbprint(await exportJWK(publicKey));
  return { alg, kid, privateKey, publicKey };
}

/** The public half of `pair` as a JWK with its kid, alg and `use: "sig"`. */
export async function publicJwk(pair: SigningKeyPair): Promise<PublicJwk> {
  const jwk = await crypto.subtle.exportKey("jwk", pair.publicKey);
  return { ...jwk, kid: pair.kid, alg: pair.alg, use: "sig" };
}

/** The JWKS that publishes `pairs` (public keys only), in order. */
export async function jwks(pairs: SigningKeyPair[]): Promise<{ keys: PublicJwk[] }> {
  return { keys: await Promise.all(pairs.map(publicJwk)) };
}

// ---------------------------------------------------------------- raw pieces (forgeries)

/** Base64url without padding, of bytes or of a string's UTF-8. */
export function base64UrlEncode(data: Uint8Array | string): string {
  let binary = "";
  for (const byte of bytes(data)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The bytes of base64url text (padding optional); throws on text that is not base64. */
export function base64UrlDecode(text: string): Uint8Array<ArrayBuffer> {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="));
  return Uint8Array.from(binary, (char) => char.charCodeAt(0));
}

/** A JWT segment: the base64url of `JSON.stringify(value)`. */
export function jsonSegment(value: unknown): string {
  return base64UrlEncode(JSON.stringify(value));
}

function hmacKey(secret: string | Uint8Array, usage: "sign" | "verify"): Promise<CryptoKey> {
  const algorithm = { name: "HMAC", hash: "SHA-256" };
  return crypto.subtle.importKey("raw", bytes(secret), algorithm, false, [usage]);
}

/** HMAC-SHA256 of `data` under `secret` (the HS256 signature; Stripe's webhook signature). */
export async function hmacSha256(
  secret: string | Uint8Array,
  data: string | Uint8Array,
): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(
    await crypto.subtle.sign("HMAC", await hmacKey(secret, "sign"), bytes(data)),
  );
}

/**
 * The base64url signature of `signingInput` (`<header>.<payload>`, whatever they hold) under
 * `key`: HS256 for a secret, the pair's alg for a key pair. The header is not read.
 */
export async function signature(
  signingInput: string | Uint8Array,
  key: SigningKey,
): Promise<string> {
  if (!isPair(key)) return base64UrlEncode(await hmacSha256(key, signingInput));
  const params = key.alg === "ES256"
    ? { name: "ECDSA", hash: "SHA-256" }
    : { name: "RSASSA-PKCS1-v1_5" };
  return base64UrlEncode(
    new Uint8Array(await crypto.subtle.sign(params, key.privateKey, bytes(signingInput))),
  );
}

// ---------------------------------------------------------------- the local gateway's check

/**
 * The claims of an HS256 JWT signed with `secret` and not expired, or null: what the local
 * functions host checks for `verify_jwt` (a gateway check; the functions verify for themselves).
 */
export async function verifyJwt(
  token: string,
  secret: string,
  nowSeconds: number = Math.floor(Date.now() / 1000),
): Promise<Record<string, unknown> | null> {
  const [head, body, sig, ...rest] = token.split(".");
  if (!head || !body || !sig || rest.length > 0) return null;
  try {
    const header = JSON.parse(new TextDecoder().decode(base64UrlDecode(head)));
    if (header?.alg !== "HS256") return null;
    const valid = await crypto.subtle.verify(
      "HMAC",
      await hmacKey(secret, "verify"),
      base64UrlDecode(sig),
      encoder.encode(`${head}.${body}`),
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
