/**
 * `npm run -s token -- [user uuid] [--email a@b.c]`: prints a signed-in user's access token for
 * the local stack, signed ES256 with the local project's signing key (kept by `npm start` in
 * .local/keys.json, published at <SUPABASE_URL>/auth/v1/.well-known/jwks.json), valid for one
 * hour, and makes sure auth.users has that user (orders reference it). Without a uuid, a new user.
 *
 * The token alone goes to stdout, so `TOKEN=$(npm run -s token)` works; notes go to stderr.
 * Database: DATABASE_URL, else the local PostgreSQL of `npm start` (127.0.0.1:${DB_PORT:-54322}).
 * LOCAL USE ONLY.
 */
import postgres from "postgres";
import { runMain } from "./lib/cli.ts";
import { type SigningKey, userToken } from "./lib/jwt.ts";
import { LOCAL_KEYS_FILE, localDatabaseUrl } from "./lib/local.ts";
import { readLocalKeys } from "./lib/local-keys.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Parsed command line. */
export interface TokenArgs {
  userId: string;
  email: string | null;
}

/** Reads `[uuid] [--email address]`; a missing uuid is a fresh one. */
export function parseTokenArgs(args: string[]): TokenArgs {
  let userId: string | null = null;
  let email: string | null = null;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--email") email = args[++i] ?? null;
    else if (UUID.test(arg)) userId = arg.toLowerCase();
    else throw new Error(`Cannot mint a token: ${arg} is not a user uuid (or --email ADDRESS)`);
  }
  return { userId: userId ?? crypto.randomUUID(), email };
}

/**
 * The access token `npm run token` prints: a signed-in user `userId` (with `email` when given),
 * issued by `<supabaseUrl>/auth/v1` as Supabase Auth would, valid for one hour, signed with `key`
 * (the local ES256 signing key).
 */
export function localUserToken(
  userId: string,
  options: { key: SigningKey; supabaseUrl: string; email?: string | null },
): Promise<string> {
  const iss = `${options.supabaseUrl.replace(/\/+$/, "")}/auth/v1`;
  return userToken(userId, { iss, email: options.email || undefined }, { key: options.key });
}

async function main(): Promise<void> {
  const { userId, email } = parseTokenArgs(Deno.args);
  const keysFile = new URL(`../${LOCAL_KEYS_FILE}`, import.meta.url).pathname;
  const saved = await readLocalKeys(keysFile);
  if (!saved?.supabaseUrl) {
    throw new Error(
      `Cannot mint a token: ${LOCAL_KEYS_FILE} has no signing key yet. Run \`npm start\` first ` +
        "(it provisions the local project's keys).",
    );
  }
  const databaseUrl = Deno.env.get("DATABASE_URL") ||
    localDatabaseUrl(Number(Deno.env.get("DB_PORT") || 54322));
  const sql = postgres(databaseUrl, { max: 1, connect_timeout: 5, onnotice: () => {} });
  try {
    await sql`
      insert into auth.users (id, email) values (${userId}, ${email})
      on conflict (id) do nothing`;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(
      `Cannot create the user in auth.users (${reason}). Is \`npm start\` running? ` +
        "With your own database, set DATABASE_URL as for npm start.",
    );
  } finally {
    await sql.end({ timeout: 5 });
  }
  const token = await localUserToken(userId, {
    key: saved.keys.signingKey,
    supabaseUrl: saved.supabaseUrl,
    email,
  });
  console.error(
    `user ${userId}: access token valid for 1 hour (role authenticated, ES256, ` +
      `kid ${saved.keys.signingKey.kid})`,
  );
  console.log(token);
}

if (import.meta.main) await runMain(main);
