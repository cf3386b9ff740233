/**
 * The local project's credentials, as Supabase provisions a new project's: a publishable key, a
 * secret key and an asymmetric (ES256) JWT signing key. `npm start` keeps them in
 * `.local/keys.json` (mode 0600, ignored by git) so that tokens and keys survive a restart;
 * `npm run token` signs users' access tokens with the signing key. LOCAL USE ONLY.
 */
import { generateKeyPair, jwks, type PublicJwk, type SigningKeyPair } from "./jwt.ts";

/** The local project's keys. */
export interface LocalKeys {
  /** `sb_publishable_…`: the storefront's key (apikey header). */
  publishableKey: string;
  /** `sb_secret_…`: operator endpoints' key (apikey header); never for a browser. */
  secretKey: string;
  /** The ES256 key pair that signs users' access tokens; its public half is the JWKS. */
  signingKey: SigningKeyPair;
}

/** What `.local/keys.json` holds (the private key as a JWK). */
interface KeysFile {
  publishableKey: string;
  secretKey: string;
  signingKey: { alg: "ES256"; kid: string; privateJwk: JsonWebKey };
  /** Where the functions run (SUPABASE_URL): the `iss` of users' tokens is `<it>/auth/v1`. */
  supabaseUrl?: string;
}

function randomText(bytes: number): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** Fresh keys (the tests use throwaway ones). */
export async function generateLocalKeys(): Promise<LocalKeys> {
  return {
    publishableKey: `sb_publishable_${randomText(16)}`,
    secretKey: `sb_secret_${randomText(24)}`,
    signingKey: await generateKeyPair("ES256", { extractable: true }),
  };
}

/** The keys in `file`, made and saved there first when it does not exist. */
export async function loadOrCreateLocalKeys(file: string): Promise<LocalKeys> {
  const saved = await readLocalKeys(file);
  if (saved) return saved.keys;
  const keys = await generateLocalKeys();
  await saveLocalKeys(file, keys);
  return keys;
}

/** Writes `keys` (and where the functions run) to `file`, readable by its owner only. */
export async function saveLocalKeys(
  file: string,
  keys: LocalKeys,
  supabaseUrl?: string,
): Promise<void> {
  const content: KeysFile = {
    publishableKey: keys.publishableKey,
    secretKey: keys.secretKey,
    signingKey: {
      alg: "ES256",
      kid: keys.signingKey.kid,
      privateJwk: await crypto.subtle.exportKey("jwk", keys.signingKey.privateKey),
    },
    ...(supabaseUrl ? { supabaseUrl } : {}),
  };
  const temporary = `${file}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(temporary, JSON.stringify(content, null, 2) + "\n", { mode: 0o600 });
  await Deno.rename(temporary, file);
}

/** The keys saved in `file` and the SUPABASE_URL saved with them, or null when there is none. */
export async function readLocalKeys(
  file: string,
): Promise<{ keys: LocalKeys; supabaseUrl: string | null } | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
  const saved = JSON.parse(text) as KeysFile;
  const { kid, privateJwk } = saved.signingKey;
  const params = { name: "ECDSA", namedCurve: "P-256" };
  const privateKey = await crypto.subtle.importKey("jwk", privateJwk, params, true, ["sign"]);
  const { d: _private, key_ops: _ops, ...publicJwk } = privateJwk;
  const publicKey = await crypto.subtle.importKey("jwk", publicJwk, params, true, ["verify"]);
  return {
    keys: {
      publishableKey: saved.publishableKey,
      secretKey: saved.secretKey,
      signingKey: { alg: "ES256", kid, privateKey, publicKey },
    },
    supabaseUrl: saved.supabaseUrl ?? null,
  };
}

/** The public JWKS that publishes the signing key (`/auth/v1/.well-known/jwks.json`). */
export function localJwks(keys: LocalKeys): Promise<{ keys: PublicJwk[] }> {
  return jwks([keys.signingKey]);
}

/**
 * The credential variables the platform provisions for Edge Functions, for these keys: the new
 * ones only (no JWT secret, no anon or service_role key). SUPABASE_URL is the functions host's.
 */
export async function functionsAuthEnv(keys: LocalKeys): Promise<Record<string, string>> {
  return {
    SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: keys.publishableKey }),
    SUPABASE_SECRET_KEYS: JSON.stringify({ default: keys.secretKey }),
    SUPABASE_JWKS: JSON.stringify(await localJwks(keys)),
  };
}
