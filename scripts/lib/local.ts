/**
 * Settings of the local stack (`npm start`, the browser test): LOCAL USE ONLY. Its keys are
 * made and kept by ./local-keys.ts, tokens signed by ./jwt.ts.
 */

/** Where `npm start` keeps the local project's keys, relative to the checkout. */
export const LOCAL_KEYS_FILE = ".local/keys.json";

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
