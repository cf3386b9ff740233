/**
 * Serves the demo storefront (storefront/) for local runs, with two dev-only read endpoints that
 * stand in for the PostgREST reads a hosted storefront would make (there is no PostgREST here):
 *
 *   GET /                        storefront/index.html (also /checkout/success and /cancel)
 *   GET /app.js                  storefront/app.ts bundled with supabase-js (`deno bundle`)
 *   GET /config.json             { supabaseUrl, publishableKey, eventId }
 *   GET /api/events/:id          a published event and its tiers (prices, seats left)
 *   GET /api/orders?session_id=  an order's status and refunded amount by its Checkout Session id
 *
 * LOCAL USE ONLY: it reads the database as the superuser and binds 127.0.0.1.
 */
import { createSql, type Sql } from "../supabase/functions/_shared/db.ts";

const ROOT = new URL("../", import.meta.url);
const STOREFRONT = new URL("storefront/", ROOT);

/** What the page needs to call the functions. */
export interface StorefrontConfig {
  supabaseUrl: string;
  /** The project's publishable key: what a new project's storefront calls with. */
  publishableKey: string;
  eventId: string;
}

/** A running storefront server. */
export interface StorefrontServer {
  /** e.g. http://127.0.0.1:3000 */
  url: string;
  close(): Promise<void>;
}

/** Bundles storefront/app.ts and supabase-js into one browser module at `outFile`. */
export async function buildStorefrontBundle(outFile: string): Promise<void> {
  const temporary = `${outFile}.${crypto.randomUUID()}.tmp.js`;
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--platform", "browser", "--quiet", "-o", temporary, "storefront/app.ts"],
    cwd: ROOT.pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    await Deno.remove(temporary).catch(() => {});
    const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    throw new Error(`Cannot bundle storefront/app.ts (deno bundle exited ${code}):\n${output}`);
  }
  // Renamed into place so that a running server never serves half a file.
  await Deno.rename(temporary, outFile);
}

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  json: "application/json; charset=utf-8",
};

function file(path: string | URL, type: string): Promise<Response> {
  return Deno.readFile(path).then(
    (bytes) =>
      new Response(bytes, { headers: { "content-type": type, "cache-control": "no-store" } }),
    () => Response.json({ error: "not found" }, { status: 404 }),
  );
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function eventInfo(sql: Sql, id: string): Promise<Response> {
  if (!UUID.test(id)) return Response.json({ error: "not found" }, { status: 404 });
  const [event] = await sql<{ id: string; title: string; currency: string; starts_at: Date }[]>`
    select id, title, currency, starts_at from events.events
    where id = ${id} and status = 'published'`;
  if (!event) return Response.json({ error: "not found" }, { status: 404 });
  const tiers = await sql<
    {
      id: string;
      name: string;
      unit_amount: number;
      max_per_order: number;
      seats_left: number | null;
    }[]
  >`
    select t.id, t.name, t.unit_amount, t.max_per_order,
           case when t.capacity is null then null
                else greatest(t.capacity - private.tier_seats_taken(t.id), 0)::int end as seats_left
    from events.ticket_tiers t
    where t.event_id = ${id}
    order by t.created_at, t.id`;
  return Response.json({
    id: event.id,
    title: event.title,
    currency: event.currency,
    startsAt: event.starts_at?.toISOString() ?? null,
    tiers: tiers.map((tier) => ({
      id: tier.id,
      name: tier.name,
      unitAmount: tier.unit_amount,
      maxPerOrder: tier.max_per_order,
      seatsLeft: tier.seats_left,
    })),
  });
}

async function orderInfo(sql: Sql, sessionId: string | null): Promise<Response> {
  if (!sessionId || sessionId.length > 255) {
    return Response.json({ error: "session_id is required" }, { status: 400 });
  }
  const [order] = await sql<
    {
      id: string;
      status: string;
      amount_total: number;
      amount_refunded: number;
      currency: string;
      items: { name: string; quantity: number }[];
    }[]
  >`
    -- amount_refunded read through to_jsonb: 0 while orders has no such column yet.
    select o.id, o.status, o.amount_total, o.currency,
           coalesce((to_jsonb(o) ->> 'amount_refunded')::int, 0) as amount_refunded,
           coalesce((select json_agg(json_build_object('name', i.product_name,
                                                       'quantity', i.quantity)
                                     order by i.product_name)
                     from public.order_items i where i.order_id = o.id), '[]') as items
    from public.orders o
    where o.stripe_checkout_session_id = ${sessionId}`;
  if (!order) return Response.json({ error: "not found" }, { status: 404 });
  return Response.json({
    id: order.id,
    status: order.status,
    amountTotal: order.amount_total,
    amountRefunded: order.amount_refunded,
    currency: order.currency,
    items: order.items,
  });
}

/**
 * Builds the bundle into `bundleFile` and serves the storefront on 127.0.0.1:`port` (0: a free
 * port). `config` is read at each request, so it may name a functions URL known only later.
 */
export async function startStorefrontServer(options: {
  port: number;
  databaseUrl: string;
  bundleFile: string;
  config: () => StorefrontConfig;
}): Promise<StorefrontServer> {
  await buildStorefrontBundle(options.bundleFile);
  const sql = createSql(options.databaseUrl, { max: 2 });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: options.port, onListen: () => {} },
    async (request) => {
      const url = new URL(request.url);
      if (request.method !== "GET" && request.method !== "HEAD") {
        return Response.json({ error: "method not allowed" }, { status: 405 });
      }
      try {
        // Also the default redirect targets (SITE_URL/checkout/success and /checkout/cancel).
        if (["/", "/index.html", "/checkout/success", "/checkout/cancel"].includes(url.pathname)) {
          return await file(new URL("index.html", STOREFRONT), TYPES.html!);
        }
        if (url.pathname === "/app.js") return await file(options.bundleFile, TYPES.js!);
        if (url.pathname === "/config.json") return Response.json(options.config());
        const event = /^\/api\/events\/([^/]+)$/.exec(url.pathname);
        if (event) return await eventInfo(sql, event[1]!);
        if (url.pathname === "/api/orders") {
          return await orderInfo(sql, url.searchParams.get("session_id"));
        }
        if (url.pathname === "/favicon.ico") return new Response(null, { status: 204 });
        return Response.json({ error: "not found" }, { status: 404 });
      } catch (error) {
        console.error("storefront-server:", error);
        return Response.json({ error: "internal error" }, { status: 500 });
      }
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    async close() {
      await server.shutdown();
      await sql.end({ timeout: 5 });
    },
  };
}
