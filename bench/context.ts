/**
 * What every benchmark phase shares: the database (a bookkeeping connection as the `bench`
 * role, so the functions' own statements, made as `postgres`, can be counted apart), the bench
 * event, and the processes under test.
 */
import postgres from "postgres";
import type { Child } from "./lib.ts";

/** The bookkeeping client (role `bench`); never used for the statements being measured. */
export type AdminSql = postgres.Sql;

/** A published event made for the bench, with tiers for each phase. */
export interface BenchEvent {
  id: string;
  /** unlimited, max 10 per order: replay, fresh path, storm */
  open: string;
  /** capacity-limited tiers for the mixed load */
  floor: { id: string; capacity: number; maxPerOrder: number };
  balcony: { id: string; capacity: number; maxPerOrder: number };
  /** unlimited, max 1 per order */
  stream: string;
}

/** The processes under test. */
export interface Services {
  stripeUrl: string;
  stripeControl: string;
  stripe: Child;
  /** http://127.0.0.1:PORT/functions/v1/guest-checkout */
  guestUrl: string;
  guest: Child;
  /** Its stdout: one JSON log line per request. */
  guestLog: string;
  /** http://127.0.0.1:PORT/ */
  baselineUrl: string;
  baseline: Child;
}

/** The bench's shared state. */
export interface Bench {
  root: string;
  artifacts: string;
  /** The throwaway cluster's folder (data/, postmaster.pid). */
  clusterDir: string;
  /** As the functions get it (role postgres). */
  databaseUrl: string;
  admin: AdminSql;
  postmasterPid: number;
  event: BenchEvent;
  services: Services;
  /** Distinguishes this run's keys. */
  runTag: string;
}

/** Opens the bookkeeping client as `role` on the same server. */
export function openAdmin(databaseUrl: string, role: string): AdminSql {
  const url = new URL(databaseUrl);
  return postgres({
    host: url.hostname,
    port: Number(url.port),
    database: url.pathname.slice(1) || "postgres",
    username: role,
    password: "bench",
    max: 4,
    ssl: false,
    onnotice: () => {},
    connection: { application_name: "bench-bookkeeping" },
  });
}

/** Sessions the Stripe server has really created so far. */
export async function sessionsCreated(services: Services): Promise<number> {
  const response = await fetch(`${services.stripeControl}/stats`);
  const stats = await response.json() as { sessionsCreated: number };
  return stats.sessionsCreated;
}

/** A guest checkout body for `items`. */
export function guestBody(
  event: BenchEvent,
  items: { tierId: string; quantity: number }[],
  email: string,
): string {
  return JSON.stringify({ eventId: event.id, items, email });
}

/** A synthetic client address (first X-Forwarded-For hop) for client number `n`. */
export function clientAddress(n: number): string {
  return `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
}
