/**
 * Verification of Supabase user access tokens (JWTs) with Web Crypto: HS256 with the project's
 * JWT secret (local Supabase) or RS256/ES256 with the project's JWKS (asymmetric signing keys).
 * The function verifies tokens itself, so it never trusts a gateway setting alone.
 */
import { apiError, type HttpError } from "./errors.ts";

/** The verified claims this project uses. */
export interface UserClaims {
  sub: string;
  role: string;
  email?: string;
  exp: number;
}

/** A JSON Web Key as published at /auth/v1/.well-known/jwks.json. */
export interface Jwk extends JsonWebKey {
  kid?: string;
  alg?: string;
}

/** Where the verifier gets its keys. */
export interface VerifierOptions {
  /** HS256 secret (SUPABASE_JWT_SECRET). */
  jwtSecret?: string | null;
  /**
   * Fetches the JWKS; called again when a token names an unknown kid, at most once a minute,
   * and concurrent requests share the one fetch in flight.
   */
  fetchJwks?: () => Promise<{ keys: Jwk[] }>;
  /** Seconds of clock skew tolerated on exp and nbf. */
  leewaySeconds?: number;
  /** The role a token must carry: a signed-in user (default), or the service role (cron jobs). */
  requiredRole?: "authenticated" | "service_role";
  /**
   * The `aud` a token must carry (as a string, or in an array); null: not checked. Defaults to
   * "authenticated" for user tokens and null for the service role, whose keys carry no aud.
   */
  audience?: string | null;
  /** The `iss` a token must carry exactly (`<SUPABASE_URL>/auth/v1`); null or absent: not checked. */
  issuer?: string | null;
  /** Accept Supabase anonymous sign-ins (`is_anonymous`) as users; default false. */
  allowAnonymous?: boolean;
  now?: () => number;
}

/** Verifies a bearer token and returns its claims, or throws 401 `unauthorized`. */
export type TokenVerifier = (authorization: string | null) => Promise<UserClaims>;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const JWKS_REFRESH_MS = 60_000;

/** Builds a verifier over the configured keys. */
export function createTokenVerifier(options: VerifierOptions): TokenVerifier {
  const leeway = options.leewaySeconds ?? 30;
  const requiredRole = options.requiredRole ?? "authenticated";
  const audience = options.audience !== undefined
    ? options.audience
    : requiredRole === "authenticated"
    ? "authenticated"
    : null;
  const issuer = options.issuer ?? null;
  const now = options.now ?? (() => Date.now());
  const hmacKey = options.jwtSecret
    ? crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode(options.jwtSecret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["verify"],
    )
    : null;
  const jwks = options.fetchJwks ? createJwksCache(options.fetchJwks, now) : null;

  return async (authorization) => {
    const token = /^Bearer\s+([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)$/.exec(
      authorization?.trim() ?? "",
    )
      ?.[1];
    if (!token) throw unauthorized("a bearer token is required");
    const [headerPart = "", payloadPart = "", signaturePart = ""] = token.split(".");
    const header = decodeJson(headerPart);
    const payload = decodeJson(payloadPart);
    if (!isRecord(header) || !isRecord(payload)) throw unauthorized("the token is malformed");

    const signed = new TextEncoder().encode(`${headerPart}.${payloadPart}`);
    const signature = decodeBase64Url(signaturePart);
    if (!signature || signature.length === 0) throw unauthorized("the token is not signed");

    let valid = false;
    if (header.alg === "HS256" && hmacKey) {
      valid = await crypto.subtle.verify("HMAC", await hmacKey, signature, signed);
    } else if ((header.alg === "RS256" || header.alg === "ES256") && jwks) {
      const key = await jwks.key(
        typeof header.kid === "string" ? header.kid : undefined,
        header.alg,
      );
      if (!key) throw unauthorized("the token's signing key is not published");
      valid = await crypto.subtle.verify(verifyParams(header.alg), key, signature, signed);
    } else {
      throw unauthorized("the token's algorithm is not accepted");
    }
    if (!valid) throw unauthorized("the token's signature is invalid");

    const nowSeconds = now() / 1000;
    if (typeof payload.exp !== "number" || payload.exp + leeway < nowSeconds) {
      throw unauthorized("the token has expired");
    }
    if (typeof payload.nbf === "number" && payload.nbf - leeway > nowSeconds) {
      throw unauthorized("the token is not valid yet");
    }
    // A token issued for another audience or by another project is not for us.
    if (audience !== null && !hasAudience(payload.aud, audience)) {
      throw unauthorized("the token is not for this audience");
    }
    if (issuer !== null && payload.iss !== issuer) {
      throw unauthorized("the token is from another issuer");
    }
    if (payload.role !== requiredRole) {
      throw unauthorized(
        requiredRole === "authenticated"
          ? "the token is not a signed-in user's"
          : `the token is not ${requiredRole}'s`,
      );
    }
    if (requiredRole === "service_role") {
      return { sub: "", role: requiredRole, exp: payload.exp };
    }
    if (typeof payload.sub !== "string" || !UUID.test(payload.sub)) {
      throw unauthorized("the token has no user id");
    }
    // Anonymous sign-ins also carry role authenticated; anything but an explicit false is one.
    if (
      !options.allowAnonymous && payload.is_anonymous !== undefined &&
      payload.is_anonymous !== false
    ) {
      throw unauthorized("anonymous users cannot buy; sign in first");
    }
    return {
      sub: payload.sub.toLowerCase(),
      role: requiredRole,
      exp: payload.exp,
      email: typeof payload.email === "string" ? payload.email : undefined,
    };
  };
}

/** RFC 7519: `aud` is one string or an array of strings. */
function hasAudience(aud: unknown, audience: string): boolean {
  return aud === audience || (Array.isArray(aud) && aud.includes(audience));
}

function unauthorized(why: string): HttpError {
  return apiError("unauthorized", {
    reason: `not authenticated: ${why}`,
    headers: { "www-authenticate": 'Bearer error="invalid_token"' },
  });
}

function verifyParams(alg: "RS256" | "ES256"): AlgorithmIdentifier | EcdsaParams {
  return alg === "RS256" ? { name: "RSASSA-PKCS1-v1_5" } : { name: "ECDSA", hash: "SHA-256" };
}

function importParams(alg: "RS256" | "ES256"): RsaHashedImportParams | EcKeyImportParams {
  return alg === "RS256"
    ? { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }
    : { name: "ECDSA", namedCurve: "P-256" };
}

function createJwksCache(fetchJwks: () => Promise<{ keys: Jwk[] }>, now: () => number) {
  let keys: Jwk[] = [];
  let fetchedAt = -Infinity;
  let inFlight: Promise<void> | null = null;
  const imported = new Map<string, Promise<CryptoKey>>();

  // Single flight: every request that misses a kid while a fetch runs waits for that fetch,
  // so a rotated key is found by the whole burst. Otherwise at most one fetch a minute, so
  // tokens naming made-up kids cannot turn into a stream of JWKS requests.
  function refresh(): Promise<void> {
    if (inFlight) return inFlight;
    if (now() - fetchedAt < JWKS_REFRESH_MS) return Promise.resolve();
    fetchedAt = now();
    inFlight = Promise.resolve().then(fetchJwks).then(
      (jwks) => {
        if (Array.isArray(jwks?.keys)) keys = jwks.keys;
      },
      () => {
        // Keep the keys we had; a JWKS outage must not sign everybody out.
      },
    ).finally(() => {
      inFlight = null;
    });
    return inFlight;
  }

  return {
    async key(kid: string | undefined, alg: "RS256" | "ES256"): Promise<CryptoKey | null> {
      const find = () =>
        keys.find((k) => (kid === undefined || k.kid === kid) && (!k.alg || k.alg === alg));
      let jwk = find();
      if (!jwk) {
        await refresh();
        jwk = find();
      }
      if (!jwk) return null;
      const cacheKey = `${jwk.kid ?? ""}:${alg}`;
      let key = imported.get(cacheKey);
      if (!key) {
        key = crypto.subtle.importKey("jwk", jwk, importParams(alg), false, ["verify"]);
        imported.set(cacheKey, key);
      }
      return await key.catch(() => null);
    },
  };
}

function decodeBase64Url(part: string): Uint8Array<ArrayBuffer> | null {
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(
      Math.ceil(part.length / 4) * 4,
      "=",
    );
    const binary = atob(base64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  } catch {
    return null;
  }
}

function decodeJson(part: string): unknown {
  const bytes = decodeBase64Url(part);
  if (!bytes) return null;
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    return null;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}
