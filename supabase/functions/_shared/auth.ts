/**
 * Who is calling: every function checks its caller itself, before it reads the body (the
 * gateway's `verify_jwt` is off for all of them).
 *
 * - API keys (`apikey` header): the project's publishable keys for the storefront, its secret
 *   keys for operator endpoints, matched in constant time by `@supabase/server`; side by side,
 *   the legacy `anon` / `service_role` JWTs (equal to SUPABASE_ANON_KEY /
 *   SUPABASE_SERVICE_ROLE_KEY, or HS256-signed with SUPABASE_JWT_SECRET, with that role).
 * - User access tokens (`Authorization: Bearer`), verified here with Web Crypto: ES256/RS256
 *   against the project's JWKS (inline, or fetched and cached with one refetch per unknown
 *   kid), HS256 only with the legacy JWT secret.
 */
import { verifyCredentials } from "@supabase/server/core";
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
  /** The signing keys inline (SUPABASE_JWKS): the whole truth, never fetched. */
  jwks?: { keys: Jwk[] } | null;
  /**
   * Fetches the JWKS (when no inline keys are given); called again when a token names an
   * unknown kid, at most once a minute, and concurrent requests share the one fetch in flight.
   */
  fetchJwks?: () => Promise<{ keys: Jwk[] }>;
  /** Seconds of clock skew tolerated on exp and nbf. */
  leewaySeconds?: number;
  /**
   * The role a token must carry: a signed-in user (default), or a legacy API key's role
   * (`anon`, `service_role`).
   */
  requiredRole?: "authenticated" | LegacyRole;
  /**
   * The `aud` a token must carry (as a string, or in an array); null: not checked. Defaults to
   * "authenticated" for user tokens and null for the legacy API keys, which carry no aud.
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

/** The role of a legacy API key (a JWT signed with the legacy JWT secret). */
export type LegacyRole = "anon" | "service_role";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const JWKS_REFRESH_MS = 60_000;

/** What a verifier checks a token's claims against. */
interface ClaimRules {
  requiredRole: "authenticated" | LegacyRole;
  audience: string | null;
  issuer: string | null;
  allowAnonymous: boolean;
  leeway: number;
  now: () => number;
}

/** The keys a verifier checks a signature with. */
interface SigningKeys {
  hmacKey: Promise<CryptoKey> | null;
  jwks: ReturnType<typeof createJwksCache> | null;
}

/** Builds a verifier over the configured keys: parse → signature → claims. */
export function createTokenVerifier(options: VerifierOptions): TokenVerifier {
  const requiredRole = options.requiredRole ?? "authenticated";
  const now = options.now ?? (() => Date.now());
  const rules: ClaimRules = {
    requiredRole,
    audience: options.audience !== undefined
      ? options.audience
      : requiredRole === "authenticated"
      ? "authenticated"
      : null,
    issuer: options.issuer ?? null,
    allowAnonymous: options.allowAnonymous ?? false,
    leeway: options.leewaySeconds ?? 30,
    now,
  };
  const keys: SigningKeys = {
    hmacKey: options.jwtSecret
      ? crypto.subtle.importKey(
        "raw",
        new TextEncoder().encode(options.jwtSecret),
        { name: "HMAC", hash: "SHA-256" },
        false,
        ["verify"],
      )
      : null,
    jwks: options.jwks
      ? createJwksCache(() => Promise.resolve(options.jwks!), now, options.jwks.keys)
      : options.fetchJwks
      ? createJwksCache(options.fetchJwks, now)
      : null,
  };
  return async (authorization) => {
    const token = parseBearer(authorization);
    await verifySignature(token, keys);
    return checkClaims(token.payload, rules);
  };
}

interface ParsedToken {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  signed: Uint8Array<ArrayBuffer>;
  signature: Uint8Array<ArrayBuffer>;
}

/** The bearer token's parts, decoded, or 401. */
function parseBearer(authorization: string | null): ParsedToken {
  const token = /^Bearer\s+([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)$/.exec(
    authorization?.trim() ?? "",
  )?.[1];
  if (!token) throw unauthorized("a bearer token is required");
  const [headerPart = "", payloadPart = "", signaturePart = ""] = token.split(".");
  const header = decodeJson(headerPart);
  const payload = decodeJson(payloadPart);
  if (!isRecord(header) || !isRecord(payload)) throw unauthorized("the token is malformed");
  const signature = decodeBase64Url(signaturePart);
  if (!signature || signature.length === 0) throw unauthorized("the token is not signed");
  const signed = new TextEncoder().encode(`${headerPart}.${payloadPart}`);
  return { header, payload, signed, signature };
}

/** HS256 with the legacy secret, or RS256/ES256 with a published key; 401 otherwise. */
async function verifySignature(token: ParsedToken, keys: SigningKeys): Promise<void> {
  const { header, signed, signature } = token;
  let valid = false;
  if (header.alg === "HS256" && keys.hmacKey) {
    valid = await crypto.subtle.verify("HMAC", await keys.hmacKey, signature, signed);
  } else if ((header.alg === "RS256" || header.alg === "ES256") && keys.jwks) {
    const key = await keys.jwks.key(
      typeof header.kid === "string" ? header.kid : undefined,
      header.alg,
    );
    if (!key) throw unauthorized("the token's signing key is not published");
    valid = await crypto.subtle.verify(verifyParams(header.alg), key, signature, signed);
  } else {
    throw unauthorized("the token's algorithm is not accepted");
  }
  if (!valid) throw unauthorized("the token's signature is invalid");
}

/** Expiry, audience, issuer, role, user id and the anonymous-user rule; 401 otherwise. */
function checkClaims(payload: Record<string, unknown>, rules: ClaimRules): UserClaims {
  const nowSeconds = rules.now() / 1000;
  if (typeof payload.exp !== "number" || payload.exp + rules.leeway < nowSeconds) {
    throw unauthorized("the token has expired");
  }
  if (typeof payload.nbf === "number" && payload.nbf - rules.leeway > nowSeconds) {
    throw unauthorized("the token is not valid yet");
  }
  // A token issued for another audience or by another project is not for us.
  if (rules.audience !== null && !hasAudience(payload.aud, rules.audience)) {
    throw unauthorized("the token is not for this audience");
  }
  if (rules.issuer !== null && payload.iss !== rules.issuer) {
    throw unauthorized("the token is from another issuer");
  }
  if (payload.role !== rules.requiredRole) {
    throw unauthorized(
      rules.requiredRole === "authenticated"
        ? "the token is not a signed-in user's"
        : `the token is not ${rules.requiredRole}'s`,
    );
  }
  if (rules.requiredRole !== "authenticated") {
    return { sub: "", role: rules.requiredRole, exp: payload.exp };
  }
  if (typeof payload.sub !== "string" || !UUID.test(payload.sub)) {
    throw unauthorized("the token has no user id");
  }
  // Anonymous sign-ins also carry role authenticated; anything but an explicit false is one.
  if (
    !rules.allowAnonymous && payload.is_anonymous !== undefined && payload.is_anonymous !== false
  ) {
    throw unauthorized("anonymous users cannot buy; sign in first");
  }
  return {
    sub: payload.sub.toLowerCase(),
    role: rules.requiredRole,
    exp: payload.exp,
    email: typeof payload.email === "string" ? payload.email : undefined,
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

function createJwksCache(
  fetchJwks: () => Promise<{ keys: Jwk[] }>,
  now: () => number,
  inline?: Jwk[],
) {
  let keys: Jwk[] = inline ?? [];
  // Inline keys never change: "fetching" them again could find nothing new.
  let fetchedAt = inline ? Infinity : -Infinity;
  let inFlight: Promise<void> | null = null;
  const imported = new Map<string, Promise<CryptoKey>>();

  // Single flight: every request that misses a kid while a fetch runs waits for that fetch,
  // so a rotated key is found by the whole burst. Otherwise at most one fetch a minute, so
  // tokens naming made-up kids cannot turn into a stream of JWKS requests.
  function refresh(): Promise<void> {
    if (inFlight) return inFlight;
    if (fetchedAt === Infinity || now() - fetchedAt < JWKS_REFRESH_MS) return Promise.resolve();
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

// ---------------------------------------------------------------- callers

/** Who called, once checked. Never carries a key or a token. */
export type Caller =
  | { kind: "user"; claims: UserClaims }
  | { kind: "publishable" | "secret"; keyName: string }
  | { kind: "legacy"; role: LegacyRole };

/** Checks a request's credentials from its headers alone; throws 401 `unauthorized`. */
export type CallerCheck = (request: Request) => Promise<Caller>;

/** enhanced-checkout: the user's access token in `Authorization: Bearer`. */
export function userCaller(verifyToken: TokenVerifier): CallerCheck {
  return async (request) => ({
    kind: "user",
    claims: await verifyToken(request.headers.get("authorization")),
  });
}

/** The keys one kind of API key check accepts; see {@link publishableKeyCaller}. */
export interface ApiKeyCheckOptions {
  /** The project's keys of that kind, by name (SUPABASE_PUBLISHABLE_KEYS / SUPABASE_SECRET_KEYS). */
  keys: Readonly<Record<string, string>>;
  /** Legacy: the JWT key itself (SUPABASE_ANON_KEY / SUPABASE_SERVICE_ROLE_KEY). */
  legacyKey?: string | null;
  /** Legacy: the JWT secret; a JWT it signed with the right role is accepted. */
  jwtSecret?: string | null;
}

/**
 * guest-checkout: a publishable key in the `apikey` header, or (while the project has them)
 * the legacy anon JWT, in `apikey` or, as the legacy gateway read it, `Authorization: Bearer`.
 */
export function publishableKeyCaller(options: ApiKeyCheckOptions): CallerCheck {
  return apiKeyCaller("publishable", "anon", options);
}

/**
 * Operator endpoints (reconcile-checkouts, and every refund or cancellation endpoint): a secret
 * key in the `apikey` header, or (while the project has them) the legacy service_role JWT.
 * A publishable key, a user's token or anything else is 401.
 */
export function operatorCaller(options: ApiKeyCheckOptions): CallerCheck {
  return apiKeyCaller("secret", "service_role", options);
}

/** Where the project's legacy key sits in the set handed to the matcher. */
const LEGACY_KEY_NAME = "\u0000legacy";

function apiKeyCaller(
  kind: "publishable" | "secret",
  legacyRole: LegacyRole,
  options: ApiKeyCheckOptions,
): CallerCheck {
  // One constant-time match over the new keys and the legacy key alike.
  const keys: Record<string, string> = { ...options.keys };
  if (options.legacyKey) keys[LEGACY_KEY_NAME] = options.legacyKey;
  const legacyToken = options.jwtSecret
    ? createTokenVerifier({ jwtSecret: options.jwtSecret, requiredRole: legacyRole })
    : null;
  const refuse = (why: string) =>
    apiError("unauthorized", {
      reason: `not authenticated: ${why}`,
      headers: { "www-authenticate": `apikey realm="${kind} key"` },
    });
  // Publishable keys (and the legacy anon key) are public by design: shipped in every browser
  // page, so there is no secret for a timing attack to learn. A key that matched once is
  // remembered (only configured keys can enter: at most one entry each), which spares every
  // storefront request the constant-time match (an HMAC key import and two signatures per
  // comparison: a fifth of a replay's CPU in the function, profiled). Secret keys are matched
  // in constant time on every request.
  const matched = kind === "publishable" ? new Map<string, string>() : null;
  const keyNameOf = async (credential: string) => {
    const known = matched?.get(credential);
    if (known !== undefined) return known;
    const keyName = await matchKey(kind, credential, keys);
    if (keyName !== null) matched?.set(credential, keyName);
    return keyName;
  };

  return async (request) => {
    const apikey = request.headers.get("apikey")?.trim() || null;
    const bearer = /^Bearer\s+(\S+)$/i.exec(request.headers.get("authorization")?.trim() ?? "")
      ?.[1] ?? null;
    // The apikey header decides when present, so a bad key is never rescued by another header.
    const credential = apikey ?? bearer;
    if (!credential) throw refuse(`the ${kind} key is required in the apikey header`);
    if (!apikey && credential.startsWith("sb_")) {
      throw refuse("an API key belongs in the apikey header, not in Authorization");
    }
    const keyName = await keyNameOf(credential);
    if (keyName === LEGACY_KEY_NAME) return { kind: "legacy", role: legacyRole };
    if (keyName !== null) return { kind, keyName };
    if (legacyToken && !credential.startsWith("sb_")) {
      await legacyToken(`Bearer ${credential}`);
      return { kind: "legacy", role: legacyRole };
    }
    throw refuse(`the apikey is not one of this project's ${kind} keys`);
  };
}

/** The name of the key in `keys` that equals `candidate` (constant time), or null. */
async function matchKey(
  kind: "publishable" | "secret",
  candidate: string,
  keys: Readonly<Record<string, string>>,
): Promise<string | null> {
  if (Object.keys(keys).length === 0) return null;
  // @supabase/server's own check (`publishable:*` / `secret:*`), fed our parsed configuration
  // so that it reads nothing from the environment itself.
  const { data } = await verifyCredentials({ token: null, apikey: candidate }, {
    auth: `${kind}:*`,
    env: {
      url: "http://localhost",
      publishableKeys: kind === "publishable" ? { ...keys } : {},
      secretKeys: kind === "secret" ? { ...keys } : {},
      jwks: { keys: [] },
    },
  });
  return data?.keyName ?? null;
}
