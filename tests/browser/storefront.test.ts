/**
 * The storefront in a real browser (Debian's Chromium driven by playwright-core), against the same
 * local stack `npm start` runs: functions host (each index.ts unchanged), storefront, local
 * Stripe-compatible server with signed webhook forwarding, and the pipeline's database.
 *
 * Run by scripts/test.sh as its own step (DATABASE_URL set); screenshots of every step go to
 * .test-artifacts/screenshots/.
 */
import assert from "node:assert/strict";
import { type BrowserContext, chromium, type Page } from "playwright-core";
import { generateLocalKeys } from "../../scripts/lib/local-keys.ts";
import { DEMO_EVENT_ID, DEMO_TIERS } from "../../scripts/lib/local.ts";
import { type LocalStack, startLocalStack } from "../../scripts/lib/local-stack.ts";
import { openPool } from "../support/database.ts";

const CHROMIUM = Deno.env.get("CHROMIUM_PATH") || "/usr/bin/chromium";
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const SCREENSHOTS = new URL("../../.test-artifacts/screenshots/", import.meta.url);
/** Every wait in the browser is bounded by this. */
const STEP_TIMEOUT_MS = 20_000;

interface Fixture {
  stack: LocalStack;
  context: BrowserContext;
  page: Page;
  /** Browser-side problems (console errors, page errors), shown when an assertion fails. */
  problems: string[];
}

/** Starts the stack and a fresh browser profile, runs `fn`, and stops everything. */
async function withStorefront(fn: (fixture: Fixture) => Promise<void>): Promise<void> {
  await Deno.stat(CHROMIUM).catch(() => {
    throw new Error(`No browser at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)`);
  });
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  const scratch = await Deno.makeTempDir({ prefix: "storefront-test-" });
  const logs: string[] = [];
  const stack = await startLocalStack({
    databaseUrl: Deno.env.get("DATABASE_URL") ?? "",
    functionsPort: 0,
    storefrontPort: 0,
    stripe: { mode: "local", port: 0 },
    keys: await generateLocalKeys(),
    webhookSecret: `whsec_browser_test_${crypto.randomUUID().replaceAll("-", "")}`,
    bundleFile: `${scratch}/app.js`,
    log: (line) => logs.push(line),
  });
  let context: BrowserContext | null = null;
  try {
    assert.deepEqual(stack.failedFunctions, []);
    context = await chromium.launchPersistentContext(`${scratch}/profile`, {
      executablePath: CHROMIUM,
      args: CHROMIUM_FLAGS,
      headless: true,
      viewport: { width: 900, height: 800 },
      timeout: STEP_TIMEOUT_MS,
    });
    context.setDefaultTimeout(STEP_TIMEOUT_MS);
    const page = context.pages()[0] ?? await context.newPage();
    const problems: string[] = [];
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    try {
      await fn({ stack, context, page, problems });
    } catch (error) {
      console.error([
        "browser problems:",
        ...problems,
        "stack log (last 30 lines):",
        ...logs.slice(-30),
      ].join("\n"));
      throw error;
    }
  } finally {
    await context?.close().catch(() => {});
    await stack.close();
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
}

async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: new URL(`${name}.png`, SCREENSHOTS).pathname, fullPage: true });
}

function uniqueEmail(label: string): string {
  return `${label}-${crypto.randomUUID().slice(0, 8)}@example.com`;
}

/** Opens the storefront and fills a cart of one General admission ticket. */
async function fillCart(page: Page, stack: LocalStack, email: string, shot: string) {
  await page.goto(stack.storefrontUrl);
  await page.locator('form#checkout[data-ready="true"]').waitFor();
  const tiers = page.locator("#tiers tbody tr");
  assert.equal(await tiers.count(), 3);
  assert.match(await page.locator("#event-title").innerText(), /Supabase Summit Demo Night/);
  const general = page.locator(`tr[data-tier-id="${DEMO_TIERS.general}"]`);
  assert.match(await general.innerText(), /General admission[\s\S]*\$25\.00/);
  assert.match(
    await page.locator(`tr[data-tier-id="${DEMO_TIERS.vip}"]`).innerText(),
    /VIP[\s\S]*\$99\.00/,
  );
  assert.match(
    await page.locator(`tr[data-tier-id="${DEMO_TIERS.livestream}"]`).innerText(),
    /Livestream[\s\S]*Free/,
  );
  await screenshot(page, `${shot}-1-storefront`);
  await general.locator("input").fill("1");
  await page.locator("#email").fill(email);
  await screenshot(page, `${shot}-2-cart`);
}

interface OrderRow {
  id: string;
  status: string;
  stripe_checkout_session_id: string | null;
  amount_total: number;
}

async function ordersOf(email: string): Promise<OrderRow[]> {
  const sql = openPool(1);
  try {
    return await sql<OrderRow[]>`
      select id, status, stripe_checkout_session_id, amount_total from public.orders
      where guest_email = ${email} and event_id = ${DEMO_EVENT_ID}`;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Checks that exactly one session exists for this cart and the browser is on its page. */
async function assertOneSessionAndOnItsPage(
  stack: LocalStack,
  page: Page,
  email: string,
  sessionsBefore: number,
): Promise<string> {
  const stripe = stack.stripe!;
  await page.waitForURL(new RegExp(`^${stripe.url}/c/pay/cs_test_`));
  await page.locator("main[data-status='open']").waitFor();
  assert.equal(stripe.sessionsCreated() - sessionsBefore, 1, "exactly one session was created");
  const orders = await ordersOf(email);
  assert.equal(orders.length, 1, "exactly one order was created");
  const sessionId = orders[0]!.stripe_checkout_session_id!;
  assert.equal(page.url(), stripe.sessions.get(sessionId)?.url, "the browser is on its page");
  assert.match(await page.locator("h1").innerText(), /Pay USD 25\.00/);
  return sessionId;
}

/** Pays on the hosted page and waits for the storefront to show the order paid. */
async function payAndSeePaid(stack: LocalStack, page: Page, email: string, shot: string) {
  await page.getByRole("button", { name: "Pay" }).click();
  await page.waitForURL(new RegExp(`^${stack.storefrontUrl}/\\?session_id=cs_test_`));
  await page.locator('#order[data-status="paid"]').waitFor();
  assert.equal(await page.locator("#order-status").innerText(), "paid");
  await screenshot(page, shot);
  const [order] = await ordersOf(email);
  assert.equal(order?.status, "paid", "the order is paid in the database");
  assert.equal(order?.amount_total, 2500);
  assert.equal(await page.locator("#order-id").innerText(), order?.id);
}

/** A cart ready to pay: the stack, the page on the storefront and the cart's fresh email. */
interface Cart {
  stack: LocalStack;
  page: Page;
  email: string;
  /** The Idempotency-Key of every guest-checkout POST the page has sent so far. */
  keys: string[];
  /** Their `apikey` and `Authorization` headers: a new project's storefront sends no JWT. */
  credentials: string[];
}

/** Double-clicks Pay; checks that one session came of it and the browser is on its page. */
async function doubleClickPay({ stack, page, email }: Cart): Promise<string> {
  const before = stack.stripe!.sessionsCreated();
  await page.locator("#pay").dblclick();
  return await assertOneSessionAndOnItsPage(stack, page, email, before);
}

/**
 * A browser test on its own stack and profile, starting from a cart of one ticket filled for a
 * fresh `shot-…@example.com`; its screenshots are named after `shot`.
 */
function storefrontTest(
  test: { name: string; shot: string },
  fn: (cart: Cart) => Promise<void>,
): void {
  const { name, shot } = test;
  Deno.test({
    name,
    // playwright-core keeps Node-compat handles (pipes to the browser) the sanitizers would flag.
    sanitizeResources: false,
    sanitizeOps: false,
    fn: () =>
      withStorefront(async ({ stack, page }) => {
        const email = uniqueEmail(shot);
        await fillCart(page, stack, email, shot);
        const keys: string[] = [];
        const credentials: string[] = [];
        page.on("request", (request) => {
          if (request.method() === "POST" && request.url().endsWith("/guest-checkout")) {
            keys.push(request.headers()["idempotency-key"] ?? "");
            credentials.push(
              `${request.headers()["apikey"]} ${request.headers()["authorization"]}`,
            );
          }
        });
        await fn({ stack, page, email, keys, credentials });
      }),
  });
}

storefrontTest({
  name:
    "storefront: a double-clicked Pay creates one Checkout Session; paying marks the order paid",
  shot: "double-click",
}, async (cart) => {
  const sessionId = await doubleClickPay(cart);
  const { stack, page, email, keys } = cart;
  assert.ok(keys.length >= 1 && new Set(keys).size === 1, `one key: ${keys.join(", ")}`);
  await screenshot(page, "double-click-3-hosted-checkout");
  assert.deepEqual(
    [...new Set(cart.credentials)],
    [`${stack.publishableKey} undefined`],
    "its key",
  );

  await payAndSeePaid(stack, page, email, "double-click-4-paid");
  assert.equal(stack.stripe!.sessions.get(sessionId)?.status, "complete");
});

storefrontTest({
  name:
    "storefront: a lost response is retried with the same Idempotency-Key and replays the session",
  shot: "network-cut",
}, async (cart) => {
  const { stack, page, email, keys } = cart;
  // The first request reaches the server (which creates the session), then the connection
  // is cut before the browser sees the answer; later requests go through untouched.
  const replayed: string[] = [];
  let cut = false;
  await page.route("**/functions/v1/guest-checkout", async (route) => {
    if (route.request().method() !== "POST" || cut) return await route.continue();
    cut = true;
    const lost = await route.fetch();
    assert.equal(lost.status(), 201, "the first request created the session");
    await route.abort("connectionreset");
  });
  page.on("response", (response) => {
    if (response.url().endsWith("/guest-checkout") && response.request().method() === "POST") {
      replayed.push(response.headers()["idempotent-replayed"] ?? "");
    }
  });
  await doubleClickPay(cart);
  assert.ok(keys.length >= 2, `the browser retried: ${keys.length} requests`);
  assert.equal(new Set(keys).size, 1, `every try sent the same key: ${keys.join(", ")}`);
  assert.deepEqual(replayed, ["true"], "the retry got the stored session back");
  await screenshot(page, "network-cut-3-hosted-checkout");

  await payAndSeePaid(stack, page, email, "network-cut-4-paid");
});
