/**
 * Reliability suite, hostile input: well over a thousand generated bad requests per endpoint
 * (guest-checkout, enhanced-checkout, stripe-webhook) against the real database. Every answer is
 * a 4xx in the documented error shape `{"error": {"code", "message", "details"?}}`, with CORS on
 * checkout; nothing is written and Stripe is never called. Generators are in
 * support/hostile-input.ts; every request they make is invalid by the README (possibly valid
 * ones are skipped). Seeds are fixed: a failure prints the seed and path that reproduce it
 * (`HOSTILE_SEED=<base>` reruns everything from another base seed). The figures are written to
 * .test-artifacts/reliability/hostile-input.json.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { createTokenVerifier } from "../supabase/functions/_shared/auth.ts";
import { createWebhookHandler } from "../supabase/functions/_shared/webhook.ts";
import { createStripeClient, Stripe } from "../supabase/functions/_shared/stripe.ts";
import {
  ALLOWED_ORIGIN,
  type Harness,
  PUBLISHABLE_KEY,
  rowCounts,
  startHarness,
} from "./support/checkout-harness.ts";
import {
  bodyBytes,
  type BodySpec,
  buildCheckoutRequest,
  buildJwt,
  buildWebhookRequest,
  checkoutCategories,
  type CheckoutEndpoint,
  type CheckoutSpec,
  type CheckoutWorld,
  expectedCheckoutCodes,
  expectedWebhookCodes,
  forgedTokenCases,
  isRecord,
  stripeSignature,
  validJwtSpec,
  webhookCategories,
  type WebhookSpec,
} from "./support/hostile-input.ts";
import { LOCAL_JWT_SECRET, userToken } from "../scripts/lib/jwt.ts";
import { TEST_WEBHOOK_SECRET } from "./support/webhooks.ts";

type Endpoint = CheckoutEndpoint | "stripe-webhook";
const ENDPOINTS: readonly Endpoint[] = ["guest-checkout", "enhanced-checkout", "stripe-webhook"];
const BASE_SEED = Number(Deno.env.get("HOSTILE_SEED") ?? "20261128");
/** `HOSTILE_SCALE=10` multiplies every category's runs (to explore beyond the CI budget). */
const SCALE = Math.max(1, Number(Deno.env.get("HOSTILE_SCALE") ?? "1") || 1);
const MIN_REQUESTS_PER_ENDPOINT = 1_000;
const SUMMARY = new URL("../.test-artifacts/reliability/hostile-input.json", import.meta.url);

/** The README's status for each error code these requests may get. */
const STATUS: Record<string, number> = {
  invalid_json: 400,
  validation_failed: 400,
  idempotency_key_missing: 400,
  idempotency_key_invalid: 400,
  quantity_exceeds_limit: 400,
  redirect_url_not_allowed: 400,
  signature_missing: 400,
  signature_invalid: 400,
  invalid_event: 400,
  unauthorized: 401,
  event_not_found: 404,
  tier_not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  unsupported_media_type: 415,
};

/** Text that must never reach a client: stack frames, secrets, connection strings. */
const LEAKS: RegExp[] = [
  /sk_test/i,
  /sk_live/i,
  /whsec_/i,
  /postgres(ql)?:\/\//i,
  /at file:/i,
  /\n\s+at /,
  /\bat \S+ \(.*:\d+:\d+\)/,
  /PostgresError|TypeError|RangeError|SyntaxError|ReferenceError/,
  new RegExp(LOCAL_JWT_SECRET),
];

interface Tally {
  requests: number;
  statuses: Record<string, number>;
  codes: Record<string, number>;
  serverErrors: number;
  successes: number;
  categories: Record<string, number>;
  /** category → code → count */
  categoryCodes: Record<string, Record<string, number>>;
  /** Generated specs skipped because they might have been valid. */
  skipped: number;
  /** Forged-token case (forgedTokenCases) → requests sent with it. */
  forgeries: Record<string, number>;
}

function newTally(): Tally {
  return {
    requests: 0,
    statuses: {},
    codes: {},
    serverErrors: 0,
    successes: 0,
    categories: {},
    categoryCodes: {},
    skipped: 0,
    forgeries: {},
  };
}

function bump(counts: Record<string, number>, key: string | number): void {
  counts[key] = (counts[key] ?? 0) + 1;
}

/**
 * Checks one answer against the contract; tallies it first, so that a 5xx is counted even
 * when the assertion then fails.
 */
async function checkAnswer(
  endpoint: Endpoint,
  category: string,
  expected: Set<string>,
  response: Response,
  tally: Tally,
): Promise<void> {
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const error = isRecord(body) && isRecord(body.error) ? body.error : undefined;
  tally.requests++;
  bump(tally.statuses, response.status);
  bump(tally.codes, typeof error?.code === "string" ? error.code : "(none)");
  bump(tally.categories, category);
  bump(
    tally.categoryCodes[category] ??= {},
    typeof error?.code === "string" ? error.code : `(status ${response.status})`,
  );
  if (response.status >= 500) tally.serverErrors++;
  if (response.status < 300) tally.successes++;

  const excerpt = text.length > 400 ? `${text.slice(0, 400)}…` : text;
  assert.ok(
    response.status >= 400 && response.status < 500,
    `${endpoint} answered ${response.status}, not a 4xx: ${excerpt}`,
  );
  for (const leak of LEAKS) assert.ok(!leak.test(text), `${endpoint} leaked ${leak}: ${excerpt}`);
  assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
  assert.ok(isRecord(body), `${endpoint}: the body is not a JSON object: ${excerpt}`);
  assert.deepEqual(Object.keys(body), ["error"], `${endpoint}: keys other than error: ${excerpt}`);
  assert.ok(error, `${endpoint}: error is not an object: ${excerpt}`);
  const extra = Object.keys(error).filter((k) => !["code", "message", "details"].includes(k));
  assert.deepEqual(extra, [], `${endpoint}: undocumented error keys: ${excerpt}`);
  assert.equal(typeof error.code, "string", excerpt);
  assert.equal(typeof error.message, "string", excerpt);
  assert.ok((error.message as string).length > 0, excerpt);
  if ("details" in error && error.code === "validation_failed") {
    assert.ok(Array.isArray(error.details), `details is not a list: ${excerpt}`);
    for (const issue of error.details as unknown[]) {
      assert.ok(isRecord(issue) && Array.isArray(issue.path), `details without a path: ${excerpt}`);
    }
  }
  const code = error.code as string;
  assert.ok(
    expected.has(code),
    `${endpoint}: code ${code} is not one the contract allows here (${[...expected]}): ${excerpt}`,
  );
  assert.equal(
    response.status,
    STATUS[code],
    `${endpoint}: ${code} with status ${response.status}`,
  );
  if (code === "method_not_allowed") assert.match(response.headers.get("allow") ?? "", /POST/);

  if (endpoint !== "stripe-webhook") {
    assert.equal(response.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN, excerpt);
    assert.match(
      response.headers.get("access-control-expose-headers") ?? "",
      /Idempotent-Replayed/i,
    );
    assert.match(response.headers.get("vary") ?? "", /Origin/i);
  }
}

/** Runs one fast-check property; a failure names the category, seed and path to reproduce. */
async function runCategory<T>(
  label: string,
  seed: number,
  runs: number,
  arbitrary: fc.Arbitrary<T>,
  send: (spec: T) => Promise<void>,
): Promise<void> {
  const details = await fc.check(fc.asyncProperty(arbitrary, send), {
    seed,
    numRuns: runs,
    maxSkipsPerRun: 20,
  });
  if (details.failed) {
    let example = fc.stringify(details.counterexample);
    if (example.length > 2_000) example = `${example.slice(0, 2_000)}… (${example.length} chars)`;
    const error = details.errorInstance instanceof Error
      ? details.errorInstance.message
      : String(details.errorInstance);
    throw new Error(
      `${label} failed after ${details.numRuns} runs: seed ${seed}, path "${details.counterexamplePath}" ` +
        `(reproduce: fc.check(…, { seed: ${seed}, path: "${details.counterexamplePath}" }); ` +
        `base seed HOSTILE_SEED=${BASE_SEED})\n${error}\ncounterexample: ${example}`,
    );
  }
}

/** What the database holds, and what was written since the suite started. */
interface Snapshot {
  /** rowCounts(): orders/order_items/stripe_idempotency_keys */
  rows: string;
  webhookEvents: number;
  /** Orders, idempotency rows and webhook events created or updated since the start. */
  touched: number;
  /** pg_cron runs since the start (the cleanup job may delete other tests' expired keys). */
  cronRuns: number;
}

async function snapshot(h: Harness, since: Date): Promise<Snapshot> {
  const [row] = await h.sql<{ events: number; touched: number; cron: number }[]>`
    select (select count(*)::int from public.stripe_webhook_events) as events,
           (select count(*)::int from public.orders
             where created_at >= ${since} or updated_at >= ${since})
           + (select count(*)::int from public.stripe_idempotency_keys
             where created_at >= ${since} or updated_at >= ${since})
           + (select count(*)::int from public.stripe_webhook_events
             where received_at >= ${since} or processed_at >= ${since}) as touched,
           (select count(*)::int from cron.job_run_details where start_time >= ${since}) as cron`;
  return {
    rows: await rowCounts(h.sql),
    webhookEvents: row!.events,
    touched: row!.touched,
    cronRuns: row!.cron,
  };
}

/** Rows added or changed since `before` (a deletion by the cron cleanup is not a write). */
function rowsWritten(before: Snapshot, after: Snapshot): number {
  const a = before.rows.split("/").map(Number);
  const b = after.rows.split("/").map(Number);
  return after.touched +
    b.reduce((sum, n, i) => sum + Math.max(0, n - (a[i] ?? 0)), 0) +
    Math.max(0, after.webhookEvents - before.webhookEvents);
}

/** rowCounts unchanged; only if pg_cron ran meanwhile may expired idempotency keys be fewer. */
function assertUnchanged(before: Snapshot, after: Snapshot, label: string): void {
  assert.equal(
    rowsWritten(before, after),
    0,
    `${label} wrote rows: ${before.rows} → ${after.rows}`,
  );
  assert.equal(
    after.webhookEvents,
    before.webhookEvents,
    `${label}: stripe_webhook_events changed`,
  );
  if (after.cronRuns === 0) {
    assert.equal(after.rows, before.rows, `${label}: rowCounts changed`);
  } else {
    const [a, b] = [before.rows.split("/"), after.rows.split("/")];
    assert.deepEqual(b.slice(0, 2), a.slice(0, 2), `${label}: orders/order_items changed`);
  }
}

Deno.test("hostile input: 1,000+ generated bad requests per endpoint get a documented 4xx, write nothing and never reach Stripe", async (t) => {
  const started = performance.now();
  const h = await startHarness();
  const userId = crypto.randomUUID();
  await h.sql`insert into auth.users (id, email) values (${userId}, ${`${userId}@example.com`})`;
  const tallies = Object.fromEntries(ENDPOINTS.map((e) => [e, newTally()])) as Record<
    Endpoint,
    Tally
  >;
  const failures: string[] = [];
  const prototypeBefore = Object.getOwnPropertyNames(Object.prototype).sort();
  const webhook = createWebhookHandler({
    sql: h.sql,
    stripe: h.stripeClient,
    webhookSecret: TEST_WEBHOOK_SECRET,
    log: () => {},
  });
  let before: Snapshot | undefined;
  let after: Snapshot | undefined;
  try {
    const ids = await h.sql<{ id: string }[]>`
      select id::text from events.events union all select id::text from events.ticket_tiers`;
    const tiers = await h.sql<{ id: string; max_per_order: number }[]>`
      select id::text, max_per_order from events.ticket_tiers where event_id = ${h.event.id}`;
    const validToken = await userToken(userId);
    const world = (endpoint: CheckoutEndpoint): CheckoutWorld => ({
      endpoint,
      eventId: h.event.id,
      tiers: new Map(tiers.map((tier) => [tier.id.toLowerCase(), tier.max_per_order])),
      floor: h.event.floor,
      balcony: h.event.balcony,
      last: h.event.last,
      knownIds: new Set(ids.map((row) => row.id.toLowerCase())),
      userId,
      validToken,
      publishableKey: PUBLISHABLE_KEY,
    });

    // The builders make valid requests when asked to: the defects are the only difference.
    const verify = createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET });
    const built = await buildJwt(validJwtSpec(world("enhanced-checkout")));
    assert.equal((await verify(built)).sub, userId);
    const payload = new TextEncoder().encode('{"id":"evt_probe","object":"event"}');
    const ts = Math.floor(Date.now() / 1000);
    const event = await createStripeClient("sk_test_probe").webhooks.constructEventAsync(
      new TextDecoder().decode(payload),
      await stripeSignature(TEST_WEBHOOK_SECRET, ts, payload),
      TEST_WEBHOOK_SECRET,
      undefined,
      Stripe.createSubtleCryptoProvider(),
    );
    assert.equal(event.id, "evt_probe");

    const [clock] = await h.sql<{ now: Date }[]>`select now() as now`;
    const since = clock!.now;
    before = await snapshot(h, since);
    let categoryIndex = 0;
    // One generator category as one step: its runs, each request's body as the bytes sent, and
    // afterwards nothing written and (`after`) whatever else the endpoint must not have done.
    const runStep = async <S extends { method: string; body: BodySpec }>(
      label: string,
      category: { runs: number; arbitrary: fc.Arbitrary<S> },
      send: (spec: S, bytes: Uint8Array<ArrayBuffer> | null) => Promise<void>,
      after: () => void = () => {},
    ) => {
      const seed = BASE_SEED + categoryIndex++;
      const runs = category.runs * SCALE;
      const ok = await t.step(`${label} (${runs} runs, seed ${seed})`, async () => {
        await runCategory(label, seed, runs, category.arbitrary, (spec: S) => {
          const bodyless = spec.method === "GET" || spec.method === "HEAD";
          return send(spec, bodyless ? null : bodyBytes(spec.body));
        });
        assertUnchanged(before!, await snapshot(h, since), label);
        after();
      });
      if (!ok) failures.push(label);
    };

    for (const endpoint of ["guest-checkout", "enhanced-checkout"] as const) {
      const w = world(endpoint);
      const handler = endpoint === "guest-checkout" ? h.guest : h.enhanced;
      const tally = tallies[endpoint];
      for (const category of checkoutCategories(w)) {
        const label = `${endpoint} / ${category.name}`;
        await runStep(label, category, async (spec: CheckoutSpec, bytes) => {
          const expected = expectedCheckoutCodes(spec, bytes, w);
          if (expected.size === 0) tally.skipped++;
          fc.pre(expected.size > 0);
          const response = await handler(await buildCheckoutRequest(spec, w, bytes));
          if (spec.auth.forgery) bump(tally.forgeries, spec.auth.forgery);
          await checkAnswer(endpoint, spec.category, expected, response, tally);
        }, () => assert.equal(h.stripe.requests.length, 0, `${label} called Stripe`));
        h.logs.length = 0;
      }
    }

    const tally = tallies["stripe-webhook"];
    for (const category of webhookCategories()) {
      await runStep(
        `stripe-webhook / ${category.name}`,
        category,
        async (spec: WebhookSpec, bytes) => {
          const expected = expectedWebhookCodes(spec, bytes);
          if (expected.size === 0) tally.skipped++;
          fc.pre(expected.size > 0);
          const response = await webhook(await buildWebhookRequest(spec, bytes));
          await checkAnswer("stripe-webhook", spec.category, expected, response, tally);
        },
      );
    }

    after = await snapshot(h, since);
    const ok = await t.step(
      "after every request: nothing written, no session, no polluted prototype",
      () => {
        assertUnchanged(before!, after!, "the suite");
        assert.equal(h.stripe.sessionsCreated(), 0);
        assert.equal(h.stripe.requests.length, 0);
        assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), prototypeBefore);
        assert.equal(({} as Record<string, unknown>).polluted, undefined);
        for (const endpoint of ENDPOINTS) {
          assert.ok(
            tallies[endpoint].requests >= MIN_REQUESTS_PER_ENDPOINT,
            `${endpoint}: only ${tallies[endpoint].requests} requests`,
          );
          assert.equal(tallies[endpoint].serverErrors, 0, `${endpoint}: 5xx answers`);
          assert.equal(tallies[endpoint].successes, 0, `${endpoint}: 2xx answers`);
        }
        const forged = tallies["enhanced-checkout"].forgeries;
        for (const { name } of forgedTokenCases(world("enhanced-checkout"))) {
          assert.ok((forged[name] ?? 0) > 0, `no request carried a forged token of kind: ${name}`);
        }
      },
    );
    if (!ok) failures.push("final invariants");
  } finally {
    const durationMs = Math.round(performance.now() - started);
    const written = before && after ? rowsWritten(before, after) : null;
    const summary = {
      suite: "hostile-input",
      test: "tests/reliability-hostile-input.test.ts",
      baseSeed: BASE_SEED,
      durationMs,
      passed: failures.length === 0 && after !== undefined,
      failures,
      rowsBefore: before ?? null,
      rowsAfter: after ?? null,
      rowsWritten: written,
      stripeRequests: h.stripe.requests.length,
      sessionsCreated: h.stripe.sessionsCreated(),
      endpoints: Object.fromEntries(ENDPOINTS.map((e) => {
        const x = tallies[e];
        return [e, {
          requests: x.requests,
          statuses: x.statuses,
          codes: x.codes,
          serverErrors: x.serverErrors,
          successes: x.successes,
          skippedAsPossiblyValid: x.skipped,
          categories: x.categories,
          codesByCategory: x.categoryCodes,
          ...(e === "enhanced-checkout" ? { forgedTokens: x.forgeries } : {}),
        }];
      })),
    };
    await Deno.mkdir(new URL(".", SUMMARY), { recursive: true });
    await Deno.writeTextFile(SUMMARY, JSON.stringify(summary, null, 2) + "\n");
    for (const e of ENDPOINTS) {
      const x = tallies[e];
      const codes = Object.entries(x.codes).sort((a, b) => b[1] - a[1])
        .map(([code, n]) => `${code} ${n}`).join(", ");
      console.log(
        `hostile-input ${e}: ${x.requests} requests, statuses ${JSON.stringify(x.statuses)}, ` +
          `5xx ${x.serverErrors}, 2xx ${x.successes}, rows written ${written ?? "?"}; ${codes}`,
      );
    }
    console.log(
      `hostile-input: ${durationMs} ms, summary in .test-artifacts/reliability/hostile-input.json`,
    );
    await h.sql`delete from auth.users where id = ${userId}`.catch(() => {});
    await h.close();
  }
});
