/**
 * bench/report.ts renders BENCHMARKS.md from one run's results: every section is there, in order,
 * and its tables carry the figures. Renders a small hand-made fixture; runs no benchmark.
 */
import assert from "node:assert/strict";
import { renderReport, type Results } from "../bench/report.ts";
import type { LoadPoint, RoundTripPass, StatementCount } from "../bench/http-phases.ts";
import type { LatencySummary } from "../bench/lib.ts";

function latency(p50: number, p99: number, n = 100): LatencySummary {
  return { n, p50, p90: (p50 + p99) / 2, p99, max: p99 * 2, mean: p50 };
}

function point(target: LoadPoint["target"], concurrency: number, rps: number): LoadPoint {
  return {
    target,
    concurrency,
    requests: rps * 10,
    seconds: 10,
    rps,
    latency: latency(1000 * concurrency / rps, 3000 * concurrency / rps),
    unexpected: 0,
    errors: 0,
    cpuPerRequest: { server: 0.2, postgres: 0.1, loadgen: 0.05, other: 0 },
    waits: { CPU: 0.9, "Client:ClientRead": 0.1 },
    activeBackends: 1.5,
    otherCores: 0.01,
    retries: 0,
  };
}

function statement(query: string, calls = 1): StatementCount {
  return {
    query,
    callsPerRequest: calls,
    msPerRequest: 0.05,
    plansPerRequest: 0,
    planMsPerRequest: 0,
    walRecordsPerRequest: 0,
    walBytesPerRequest: 0,
    toplevel: true,
  };
}

function roundTrips(kind: RoundTripPass["kind"], statements: number): RoundTripPass {
  return {
    kind,
    requests: 50,
    statementsPerRequest: statements,
    statements: [statement(`select public.${kind}_statement($1)`, statements)],
    nested: [statement(`select k.* from public.stripe_idempotency_keys k where k.id = $1`)],
    walBytesPerRequest: kind === "fresh" ? 900 : 0,
    walRecordsPerRequest: kind === "fresh" ? 6 : 0,
  };
}

function cleanupRun(rows: number) {
  return {
    deleted: rows,
    seconds: rows / 50_000,
    rowsPerSecond: 50_000,
    walBytes: rows * 100,
    indexEntriesRead: rows,
    indexScans: 10,
  };
}

function pgbenchRun(clients: number, tps: number, p50: number) {
  return {
    clients,
    transactions: tps * 2,
    failed: 0,
    tps,
    latency: latency(p50, p50 * 3),
    postgresCpuMs: 1.5,
    pgbenchCpuMs: 0.05,
    otherCores: 0.01,
  };
}

function historyLevel(orders: number, slower: number) {
  return {
    orders,
    claims: [pgbenchRun(1, 500 / slower, 2 * slower), pgbenchRun(8, 900 / slower, 9 * slower)],
    soldTier: orders === 50_000 ? [pgbenchRun(1, 490, 2.1), pgbenchRun(8, 880, 9.1)] : null,
    latePayment: {
      ...latency(1.5 * slower, 3 * slower),
      perSecond: 600,
      walBytes: 4_500,
      blocksRead: 0.5,
      readMs: 0.01,
      otherCores: 0.01,
    },
    buffersPerClaim: 80,
    walBytesPerClaim: 4_000,
    disagreeingTiers: 0,
  };
}

function onSaleRun(label: "hot tier" | "64 tiers", checkoutsPerSecond: number) {
  return {
    label,
    buyers: 500,
    seats: 100,
    tiers: label === "hot tier" ? 1 : 64,
    concurrency: 64,
    seconds: 500 / checkoutsPerSecond,
    checkoutsPerSecond,
    latency: latency(80, 200, 500),
    finals: { "201": 100, "409 sold_out": 400 },
    answers: { "201": 100, "409 sold_out": 400 },
    fiveHundreds: 0,
    sold: 100,
    soldOut: 400,
    sessionsCreated: 100,
    seatsTaken: 100,
    seatsRecounted: 100,
    disagreeingTiers: 0,
    otherCores: 0.02,
  };
}

function fixture(): Results {
  const replay = [1, 16].flatMap((c) => [
    point("baseline", c, 2000 * c ** 0.5),
    point("replay", c, 1200 * c ** 0.5),
    ...(c > 1 ? [point("replay-spread", c, 1300 * c ** 0.5)] : []),
  ]);
  const pgbench = (statement: "replay claim_checkout" | "baseline select", clients: number) => ({
    statement,
    clients,
    transactions: 10_000,
    tps: 5000,
    latency: latency(0.2, 0.5),
    postgresCpuMs: 0.1,
    pgbenchCpuMs: 0.02,
    otherCores: 0.02,
    retries: 0,
  });
  const size = (bytesPerRow: number) => ({
    rows: 2000,
    heapBytes: 2 * 1024 * 1024,
    toastBytes: 0,
    indexBytes: 1024 * 1024,
    totalBytes: 3 * 1024 * 1024,
    bytesPerRow,
  });
  return {
    command: "npm run bench",
    quick: true,
    date: "2026-12-01T12:00:00.000Z",
    totalSeconds: 150,
    machine: {
      nproc: 2,
      memoryGiB: 8,
      cpuModel: "Test CPU",
      kernel: "6.1.0",
      postgres: "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu",
      deno: "2.9.6",
      node: "v20.20.2",
      autocannon: "9.0.0",
      postgresSettings: ["fsync=on", "shared_preload_libraries=pg_cron,pg_stat_statements"],
      fsyncMicros: { p50: 250, p99: 1000 },
      busyBeforeStart: 0.01,
      code: "abc1234",
    },
    cronJobsPaused: ["cleanup-expired-idempotency-keys"],
    replay: { operationKey: "bench-replay", secondsPerPoint: 2, spreadKeys: 50, points: replay },
    dbOnly: {
      seconds: 2,
      points: [1, 16].flatMap((c) => [
        pgbench("replay claim_checkout", c),
        pgbench("baseline select", c),
      ]),
    },
    roundTrips: {
      passes: [roundTrips("replay", 1), roundTrips("fresh", 2), roundTrips("baseline", 1)],
    },
    fresh: {
      requests: 100,
      freshE2e: latency(5, 9),
      replayE2e: latency(1, 2),
      handlerMs: latency(4, 8),
      handlerStripeMs: latency(1.5, 3),
      handlerDbMs: latency(1, 2),
      stripeAlone: latency(1.4, 2.5),
      replayHandlerMs: latency(0.6, 1.2),
      replayHandlerDbMs: latency(0.3, 0.6),
      otherCores: 0.03,
      retries: 0,
    },
    storm: {
      concurrent: 200,
      rounds: [{
        sessionsCreated: 1,
        created: 1,
        replayed: 150,
        inUse: 49,
        other: {},
        consistent: true,
        latency: latency(50, 100, 200),
      }],
      latency: latency(50, 100, 200),
      otherCores: 0.02,
    },
    mixed: {
      operations: 300,
      workers: 32,
      retriedShare: 0.1,
      doubleShare: 0.05,
      httpRequests: 400,
      seconds: 3,
      operationsPerSecond: 100,
      requestsPerSecond: 133.3,
      latency: latency(20, 80, 400),
      finals: { "201 created": 280, "409 sold out": 20 },
      answers: { "201 created": 330, "409 sold out": 70 },
      succeeded: 280,
      sessionsCreated: 280,
      splitOperations: 0,
      tiers: [
        { name: "floor", capacity: 1500, seatsTaken: 1500, seatsSold: 1500, oversold: false },
        { name: "balcony", capacity: 500, seatsTaken: 500, seatsSold: 500, oversold: false },
      ],
      ordersWithSession: 280,
      otherCores: 0.04,
    },
    cleanup: {
      cadence: { ...cleanupRun(9000), rows: 9000 },
      ...cleanupRun(100_000),
      expiredRows: 100_000,
      liveRows: 10_000,
      fillSeconds: 18,
      expiredLeft: 0,
      liveBefore: 10_000,
      liveAfter: 10_000,
      claimWorkers: 8,
      claimsWithout: { claims: 3000, seconds: 3, claimsPerSecond: 1000, latency: latency(5, 10) },
      claimsDuring: { claims: 2000, seconds: 2, claimsPerSecond: 1000, latency: latency(6, 15) },
      otherCores: { without: 0.02, during: 0.03 },
      tableBytesBefore: 64 * 1024 * 1024,
    },
    size: {
      checkouts: 2000,
      fillSeconds: 4.5,
      asWritten: size(1600),
      compact: size(1300),
      averageRowText: { key: 70, responseBody: 380 },
      ordersBytesPerCheckout: 400,
      perDay: 8_640_000,
      projectedBytes: { asWritten: 1600 * 8_640_000, compact: 1300 * 8_640_000 },
    },
    history: {
      rounds: 3,
      events: 50,
      tiersPerEvent: 5,
      soldSeats: 10_000,
      seconds: 2,
      latePayments: 50,
      fillSeconds: 3.5,
      levels: [historyLevel(0, 1), historyLevel(10_000, 1.05), historyLevel(50_000, 1.1)],
    },
    hotTier: {
      seconds: 2,
      tiers: 64,
      rounds: 3,
      points: [16, 64].flatMap((clients) => [
        {
          statement: "single-row update" as const,
          run: pgbenchRun(clients, 2000, 8),
          roundsTps: [2100, 1900, 2000],
        },
        {
          statement: "claim, one tier" as const,
          run: pgbenchRun(clients, 600, 25),
          roundsTps: [600, 650, 550],
        },
        {
          statement: "claim, 64 tiers" as const,
          run: pgbenchRun(clients, 620, 24),
          roundsTps: [620, 610, 640],
        },
      ]),
    },
    onSale: { runs: [onSaleRun("hot tier", 300), onSaleRun("64 tiers", 310)] },
  };
}

Deno.test("bench report renders every section of BENCHMARKS.md, in order", () => {
  const report = renderReport(fixture());
  const headings = report.split("\n").filter((line) => line.startsWith("#"));
  assert.deepEqual(headings, [
    "# Benchmarks",
    "## Flash-sale goals",
    "## Summary",
    "## Command and machine",
    "## 1. Replay path vs baseline",
    "### The same statements without HTTP (pgbench)",
    "### Where the time goes",
    "## 2. Database statements per request",
    "## 3. Fresh path vs the Stripe call alone",
    "## 4. Storm",
    "## 5. Mixed load",
    "## 6. Cleanup",
    "## 7. Size",
    "## 8. History does not matter",
    "## 9. Hot tier",
    "## 10. On-sale over HTTP",
    "## What this run cannot tell",
  ]);
  assert.ok(report.endsWith(".\n"), "the report ends with one newline");
  assert.doesNotMatch(report, /\n\n\n/, "blocks are separated by one blank line");
});

Deno.test("bench report tables carry the run's figures and verdicts", () => {
  const report = renderReport(fixture());
  const lines = report.split("\n");
  assert.ok(lines.includes("| 2. statements per fresh checkout = 2 | 2.00 | **met** |"));
  assert.ok(
    lines.includes("| as written | 2,000 | 2.0 MiB | 0.0 MiB | 1.0 MiB | 3.0 MiB | **1,600** |"),
  );
  assert.ok(lines.includes("| without cleanup | 3,000 | 1,000 | 5.00 | 10.0 | 20.0 |"));
  assert.match(
    report,
    /\| 1\. replay throughput ≥ 0\.5× baseline \| c1 0\.60×, c16 0\.60× \| \*\*met\*\* \|/,
  );
  assert.match(report, /\*\*Quick scale \(BENCH_SCALE=quick\)/);
});

Deno.test("bench report gives each flash-sale goal its figures and a verdict", () => {
  const lines = renderReport(fixture()).split("\n");
  const row = (goal: string) => lines.find((line) => line.startsWith(`| ${goal}`)) ?? "";
  assert.match(
    row("1. history: claims"),
    /worst: 50,000 orders, c1 claims\/s 1\.10× worse.*\*\*met\*\*/,
  );
  assert.match(row("2. hot tier (SQL)"), /c16 0\.30×.*\*\*not met\*\*: worst c16, 1\.67× short/);
  assert.ok(
    lines.some((line) => /^\| 16 \| claim, one tier \| 600 \| 600, 650, 550 \|/.test(line)),
    "the hot tier's table shows the median round and the tps of every round",
  );
  assert.match(row("2. on-sale over HTTP"), /100 of 100 seats sold to 500 buyers.*\*\*met\*\*/);
  assert.match(row("2. on-sale: checkouts/s"), /300 vs 310\/s: 0\.97× \| \*\*met\*\*/);
  assert.match(row("4. claim p99 during a cleanup"), /1\.50× \(100,000 rows\) \| \*\*met\*\*/);
  assert.ok(
    lines.includes(
      "| 50,000 | tier with 10,000 sold seats | 1 | 490 | 2.10 | 6.30 | 0.98× / 1.05× / 1.05× | 80 | 4,000 | 0.01 |",
    ),
    "the sold tier's claims are compared with the empty database's",
  );
});
