/**
 * Renders BENCHMARKS.md from one run's results. Every figure, verdict and explanation is computed
 * from the results, so `npm run bench` reproduces the whole file.
 */
import type {
  ClaimLoad,
  CleanupResult,
  CleanupRun,
  DbOnlyResult,
  PgbenchPoint,
  RelationSize,
  SizeResult,
} from "./db-phases.ts";
import type {
  FreshResult,
  LoadPoint,
  MixedResult,
  ReplayResult,
  RoundTripPass,
  RoundTripResult,
  StatementCount,
  StormResult,
} from "./http-phases.ts";
import type {
  HistoryLevel,
  HistoryResult,
  HotTierPoint,
  HotTierResult,
  OnSaleResult,
  OnSaleRun,
} from "./flash-phases.ts";
import type { PgbenchRun } from "./db-phases.ts";
import { DISTURBED_CORES, fmt, type LatencySummary } from "./lib.ts";

/** The machine the run was made on. */
export interface Machine {
  nproc: number;
  memoryGiB: number;
  cpuModel: string;
  kernel: string;
  postgres: string;
  deno: string;
  node: string;
  autocannon: string;
  postgresSettings: string[];
  fsyncMicros: { p50: number; p99: number };
  /** Share of all cores busy (other processes) just before the run started. */
  busyBeforeStart: number;
  /** The git commit measured (and uncommitted changes to the code under test, if any). */
  code: string;
}

/** Everything one run measured. */
export interface Results {
  command: string;
  quick: boolean;
  date: string;
  totalSeconds: number;
  machine: Machine;
  cronJobsPaused: string[];
  replay: ReplayResult;
  dbOnly: DbOnlyResult;
  roundTrips: RoundTripResult;
  fresh: FreshResult;
  storm: StormResult;
  mixed: MixedResult;
  cleanup: CleanupResult;
  size: SizeResult;
  history: HistoryResult;
  hotTier: HotTierResult;
  onSale: OnSaleResult;
}

const ms = (value: number) => fmt(value, value < 10 ? 2 : 1);
const x = (value: number) => `${fmt(value, 2)}×`;
const pct = (value: number, digits = 0) => `${fmt(value * 100, digits)}%`;
const int = (value: number) => fmt(value, 0);
const mib = (bytes: number) => `${fmt(bytes / 1024 / 1024, 1)} MiB`;
const gib = (bytes: number) => `${fmt(bytes / 1024 / 1024 / 1024, 2)} GiB`;
const met = (ok: boolean) => (ok ? "**met**" : "**not met**");
/** How far a ratio is above its upper limit: `1.08× over`. */
const over = (ratio: number, limit: number) => `${x(ratio / limit)} over`;
/** How far a ratio is below its lower goal: `1.80× short`. */
const short = (ratio: number, goal: number) => `${x(goal / ratio)} short`;

/** A verdict cell: met / not met, and why not when `miss` says so. */
function verdict(ok: boolean, miss: string | false): string {
  return met(ok) + (miss ? `: ${miss}` : "");
}

function table(header: string[], rows: string[][]): string {
  return [
    `| ${header.join(" | ")} |`,
    `| ${header.map(() => "---").join(" | ")} |`,
    ...rows.map((row) => `| ${row.join(" | ")} |`),
  ].join("\n");
}

function code(query: string, max = 90): string {
  const text = query.replace(/\|/g, "\\|");
  return "`" + (text.length > max ? `${text.slice(0, max - 1)}…` : text) + "`";
}

function lat(summary: LatencySummary): string[] {
  return [ms(summary.p50), ms(summary.p99), ms(summary.max)];
}

/** `key: value, …` of a count per answer. */
function counts(record: Record<string, number>, format: (value: number) => string = int): string {
  return Object.entries(record).map(([k, v]) => `${k}: ${format(v)}`).join(", ");
}

/** Cores other processes used during a measurement, and how often it was measured again. */
function otherCoresCell(point: { otherCores: number; retries: number }): string {
  const { otherCores, retries } = point;
  return fmt(otherCores, 2) + (retries ? ` (${retries} re-run${retries > 1 ? "s" : ""})` : "");
}

/** The paragraph under a section on how much other processes used the machine. */
function otherNote(cores: number, retries = 0, when = "meanwhile"): string {
  const again = retries ? ` (measured ${retries + 1} times: earlier runs were disturbed)` : "";
  return cores > DISTURBED_CORES
    ? `**Other processes used ${fmt(cores, 2)} cores ${when}${again}: these figures are ` +
      "disturbed by someone else's work on the machine.**"
    : `Other processes used ${fmt(cores, 2)} cores ${when}${again}.`;
}

// ---------------------------------------------------------------------------------------------
// Derived figures and goals
// ---------------------------------------------------------------------------------------------

interface ReplayVerdict {
  concurrency: number;
  baseline: LoadPoint;
  replay: LoadPoint;
  spread: LoadPoint | undefined;
  throughputRatio: number;
  p99Ratio: number;
  ok: boolean;
}

function replayVerdicts(replay: ReplayResult): ReplayVerdict[] {
  const find = (target: LoadPoint["target"], c: number) =>
    replay.points.find((p) => p.target === target && p.concurrency === c);
  return replay.points.filter((p) => p.target === "replay").map((point) => {
    const baseline = find("baseline", point.concurrency)!;
    const throughputRatio = point.rps / baseline.rps;
    const p99Ratio = point.latency.p99 / baseline.latency.p99;
    return {
      concurrency: point.concurrency,
      baseline,
      replay: point,
      spread: find("replay-spread", point.concurrency),
      throughputRatio,
      p99Ratio,
      ok: throughputRatio >= 0.5 && p99Ratio <= 3,
    };
  });
}

function cpuTotal(point: LoadPoint): number {
  const c = point.cpuPerRequest;
  return c.server + c.postgres + c.loadgen;
}

function topWaits(point: LoadPoint, n = 3): string {
  return Object.entries(point.waits)
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([wait, share]) => `${wait} ${pct(share)}`)
    .join(", ");
}

function pass(results: Results, kind: RoundTripPass["kind"]): RoundTripPass {
  return results.roundTrips.passes.find((p) => p.kind === kind)!;
}

/** Goal 2: one statement per replay, two per fresh checkout. */
function statementsMet(p: RoundTripPass, target: number): boolean {
  return Math.abs(p.statementsPerRequest - target) < 0.01;
}

function pgbench(r: Results, statement: PgbenchPoint["statement"], clients: number) {
  return r.dbOnly.points.find((p) => p.statement === statement && p.clients === clients);
}

function stormMet(storm: StormResult): boolean {
  return storm.rounds.every((round) => round.sessionsCreated === 1 && round.consistent);
}

function mixedMet(mx: MixedResult): boolean {
  return mx.sessionsCreated === mx.succeeded && mx.splitOperations === 0 &&
    mx.tiers.every((t) => !t.oversold && t.seatsTaken === t.seatsSold);
}

/** Claim p99 during the cleanup over claim p99 without it (goal ≤ 2). */
function cleanupRatio(c: CleanupResult): number {
  return c.claimsDuring.latency.p99 / c.claimsWithout.latency.p99;
}

function cleanupMet(c: CleanupResult): boolean {
  return cleanupRatio(c) <= 2 && c.liveBefore === c.liveAfter && c.expiredLeft === 0 &&
    c.deleted === c.expiredRows;
}

/** Index entries the cleanup read per row it deleted. */
function entriesPerRow(run: CleanupRun): number {
  return run.indexEntriesRead / Math.max(1, run.deleted);
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/** One section of BENCHMARKS.md: its blocks (headings, paragraphs, tables) in order. */
type Section = (r: Results) => string[];

/** The sections of BENCHMARKS.md, in order. */
const SECTIONS: Section[] = [
  title,
  flashGoals,
  summary,
  commandAndMachine,
  replaySection,
  statementsSection,
  freshSection,
  stormSection,
  mixedSection,
  cleanupSection,
  sizeSection,
  historySection,
  hotTierSection,
  onSaleSection,
  limitsSection,
];

/** The whole report: every section's blocks, a blank line between blocks. */
export function renderReport(r: Results): string {
  return SECTIONS.flatMap((section) => section(r)).map((block) => `${block}\n`).join("\n");
}

function title(r: Results): string[] {
  return [
    "# Benchmarks\n" +
    `Written by \`${r.command}\` (bench/bench.sh → bench/main.ts) on ${r.date.slice(0, 10)} in ` +
    `${int(r.totalSeconds)} s. Every figure below comes from that one run, against a throwaway ` +
    "PostgreSQL 15 with fsync on and the local Stripe-compatible server " +
    "(local/stripe/) answering at once. Rerun the command to reproduce the " +
    "file; the raw results are in `.bench-artifacts/results.json`." +
    (r.quick ? " **Quick scale (BENCH_SCALE=quick): smoke figures, not the reference run.**" : ""),
  ];
}

// ------------------------------------------------------------------------------------ summary

function summary(r: Results): string[] {
  const f = r.fresh;
  const replayPass = pass(r, "replay");
  const freshPass = pass(r, "fresh");
  return [
    "## Summary",
    table(["goal", "result", "verdict"], [
      ...replaySummaryRows(replayVerdicts(r.replay)),
      [
        "2. statements per replay = 1",
        fmt(replayPass.statementsPerRequest, 2),
        met(statementsMet(replayPass, 1)),
      ],
      [
        "2. statements per fresh checkout = 2",
        fmt(freshPass.statementsPerRequest, 2),
        met(statementsMet(freshPass, 2)),
      ],
      [
        "3. fresh checkout vs the Stripe call alone",
        `p50 ${ms(f.freshE2e.p50)} ms vs ${ms(f.stripeAlone.p50)} ms ` +
        `(+${ms(f.freshE2e.p50 - f.stripeAlone.p50)} ms)`,
        "measured (no goal)",
      ],
      [
        `4. storm of ${r.storm.concurrent} → 1 session`,
        `${r.storm.rounds.map((round) => round.sessionsCreated).join(", ")} session(s) in ` +
        `${r.storm.rounds.length} storms; p99 ${ms(r.storm.latency.p99)} ms`,
        met(stormMet(r.storm)),
      ],
      mixedSummaryRow(r.mixed),
      cleanupSummaryRow(r.cleanup),
      [
        "7. bytes per idempotency row, with indexes",
        `${int(r.size.asWritten.bytesPerRow)} B (compact ${int(r.size.compact.bytesPerRow)} B); ` +
        `${gib(r.size.projectedBytes.asWritten)} at ${int(r.size.perDay / 86_400)}/s for 24 h`,
        "measured (no goal)",
      ],
    ]),
    sharedMachineNote(r),
  ];
}

function replaySummaryRows(verdicts: ReplayVerdict[]): string[][] {
  const worstRps = verdicts.reduce((a, b) => (b.throughputRatio < a.throughputRatio ? b : a));
  const worstP99 = verdicts.reduce((a, b) => (b.p99Ratio > a.p99Ratio ? b : a));
  return [
    [
      "1. replay throughput ≥ 0.5× baseline",
      verdicts.map((v) => `c${v.concurrency} ${x(v.throughputRatio)}`).join(", "),
      verdict(
        verdicts.every((v) => v.throughputRatio >= 0.5),
        worstRps.throughputRatio < 0.5 &&
          `worst c${worstRps.concurrency}, ${short(worstRps.throughputRatio, 0.5)}`,
      ),
    ],
    [
      "1. replay p99 ≤ 3× baseline p99",
      verdicts.map((v) => `c${v.concurrency} ${x(v.p99Ratio)}`).join(", "),
      verdict(
        verdicts.every((v) => v.p99Ratio <= 3),
        worstP99.p99Ratio > 3 && `worst c${worstP99.concurrency}, ${over(worstP99.p99Ratio, 3)}`,
      ),
    ],
  ];
}

function mixedSummaryRow(mx: MixedResult): string[] {
  return [
    "5. mixed: sessions = successful operations, nothing oversold",
    `${int(mx.sessionsCreated)} sessions / ${int(mx.succeeded)} succeeded; ` +
    mx.tiers.map((t) => `${t.name} ${int(t.seatsTaken)}/${int(t.capacity)}`).join(", ") +
    `; ${fmt(mx.operationsPerSecond, 0)} operations/s`,
    met(mixedMet(mx)),
  ];
}

function cleanupSummaryRow(c: CleanupResult): string[] {
  const ratio = cleanupRatio(c);
  return [
    "6. claim p99 during cleanup ≤ 2× without; live rows untouched",
    `${x(ratio)}; ${int(c.expiredRows)} rows in ${fmt(c.seconds, 1)} s ` +
    `(${int(c.rowsPerSecond)} rows/s; cron-sized ${int(c.cadence.rowsPerSecond)} rows/s); ` +
    `live ${int(c.liveBefore)} → ${int(c.liveAfter)}`,
    verdict(cleanupMet(c), ratio > 2 && over(ratio, 2)),
  ];
}

function sharedMachineNote(r: Results): string {
  const others = [
    ...r.replay.points.map((p) => p.otherCores),
    ...r.dbOnly.points.map((p) => p.otherCores),
    r.fresh.otherCores,
    r.storm.otherCores,
    r.mixed.otherCores,
    r.cleanup.otherCores.without,
    r.cleanup.otherCores.during,
  ];
  const remeasured = r.replay.points.reduce((n, p) => n + p.retries, 0) +
    r.dbOnly.points.reduce((n, p) => n + p.retries, 0) + r.fresh.retries;
  return `The machine is shared: processes outside the bench used at most ` +
    `${fmt(Math.max(...others), 2)} of its ${r.machine.nproc} cores during any measurement ` +
    `(each section says how much); measurements disturbed beyond ${DISTURBED_CORES} cores were ` +
    `re-run ${remeasured} time(s), keeping the least disturbed run.`;
}

// ------------------------------------------------------------------------ command and machine

function commandAndMachine(r: Results): string[] {
  const m = r.machine;
  return [
    "## Command and machine",
    "```sh\nnpm run bench\n```",
    table(["", ""], [
      ["code measured", m.code.replace(/^(\w+)/, "`$1`")],
      ["CPU", `${m.cpuModel}, nproc ${m.nproc}`],
      ["memory", `${fmt(m.memoryGiB, 1)} GiB`],
      ["kernel", m.kernel],
      ["PostgreSQL", m.postgres.split(" on ")[0] ?? m.postgres],
      ["Deno", m.deno],
      ["Node / autocannon", `${m.node} / ${m.autocannon}`],
      ["Postgres settings", m.postgresSettings.map((v) => `\`${v}\``).join(", ")],
      [
        "disk (cluster's file system)",
        `8 kB overwrite + fdatasync: p50 ${int(m.fsyncMicros.p50)} µs, ` +
        `p99 ${int(m.fsyncMicros.p99)} µs`,
      ],
      ["other processes' CPU just before the run", `${pct(m.busyBeforeStart)} of all cores`],
      [
        "pg_cron jobs paused during the run",
        r.cronJobsPaused.map((j) => `\`${j}\``).join(", ") || "none",
      ],
    ]),
    processesNote(m),
  ];
}

function processesNote(m: Machine): string {
  return "Processes: the guest-checkout function (bench/server.ts `guest`: `checkoutHandlerFromEnv`, " +
    "exactly as its index.ts composes it: pool of 5, prepared statements, one JSON log line per " +
    "request, here to a file), the baseline (bench/server.ts `baseline`), the Stripe-compatible " +
    "server (bench/stripe.ts) and the load generator (autocannon under Node; Deno's fetch in " +
    "bench/main.ts for phases 3–5) each run in a process of their own, but all of them and " +
    `Postgres share ${m.nproc} cores: whatever the load generator burns is taken from the ` +
    "servers it measures. Its CPU per request is in the tables, to show how much.";
}

// ---------------------------------------------------------------------------------- 1. replay

function replaySection(r: Results): string[] {
  const verdicts = replayVerdicts(r.replay);
  return [
    "## 1. Replay path vs baseline",
    replayMethod(r.replay),
    replayPointsTable(r.replay.points),
    replayVerdictsTable(verdicts),
    "### The same statements without HTTP (pgbench)",
    `pgbench, ${r.dbOnly.seconds} s per point, prepared statements: the replay's one statement ` +
    "(`claim_checkout` with the completed operation's arguments) and the baseline's select, " +
    "straight against Postgres.",
    pgbenchTable(r.dbOnly.points),
    "### Where the time goes",
    ...whereTheTimeGoes(r, verdicts),
  ];
}

function replayMethod(replay: ReplayResult): string {
  return `autocannon, ${replay.secondsPerPoint} s per server and concurrency, as two halves in the ` +
    "order baseline, replay, replay, baseline (ABBA, so drift hits both alike), after a " +
    "warm-up. **replay**: `POST /functions/v1/guest-checkout` with one completed operation's " +
    "Idempotency-Key and body every time. **baseline**: a bare `Deno.serve` handler doing one " +
    "primary-key select of that operation's stored response " +
    "(`select response_status, response_body from stripe_idempotency_keys where id = $1`) with " +
    "the same postgres.js client and pool size. **replay-spread** (diagnostic, not a goal): " +
    `replays cycling through ${replay.spreadKeys} completed operations, to separate the cost ` +
    "of one hot row from the cost of a replay. CPU per request comes from /proc. Other " +
    "processes: cores used meanwhile by everything outside the bench (the machine is shared); " +
    `a half during which they used more than ${DISTURBED_CORES} cores is run again (up to ` +
    "3 times, 12 re-runs at most in all) and the least disturbed run is kept. Backend time " +
    "is a 20 Hz sample of pg_stat_activity (share of active backends per wait event; CPU means " +
    "no wait).";
}

function replayPointsTable(points: LoadPoint[]): string {
  return table(
    [
      "c",
      "target",
      "req/s",
      "p50 ms",
      "p99 ms",
      "max ms",
      "non-201",
      "CPU ms/req: server",
      "Postgres",
      "autocannon",
      "other processes (cores)",
      "active backends",
      "backend time",
    ],
    points.map((p) => [
      String(p.concurrency),
      p.target,
      int(p.rps),
      ...lat(p.latency),
      int(p.unexpected + p.errors),
      fmt(p.cpuPerRequest.server, 3),
      fmt(p.cpuPerRequest.postgres, 3),
      fmt(p.cpuPerRequest.loadgen, 3),
      otherCoresCell(p),
      fmt(p.activeBackends, 1),
      topWaits(p),
    ]),
  );
}

function replayVerdictsTable(verdicts: ReplayVerdict[]): string {
  return table(
    [
      "c",
      "throughput replay / baseline (goal ≥ 0.5)",
      "p99 replay / baseline (goal ≤ 3)",
      "verdict",
      "replay-spread / baseline",
    ],
    verdicts.map((v) => [
      String(v.concurrency),
      x(v.throughputRatio),
      x(v.p99Ratio),
      met(v.ok),
      v.spread
        ? `${x(v.spread.rps / v.baseline.rps)} throughput, ` +
          `${x(v.spread.latency.p99 / v.baseline.latency.p99)} p99`
        : "–",
    ]),
  );
}

function pgbenchTable(points: PgbenchPoint[]): string {
  return table(
    [
      "statement",
      "clients",
      "tps",
      "p50 ms",
      "p99 ms",
      "max ms",
      "CPU ms/txn: Postgres",
      "pgbench",
      "other processes (cores)",
    ],
    points.map((p) => [
      p.statement,
      String(p.clients),
      int(p.tps),
      ...lat(p.latency),
      fmt(p.postgresCpuMs, 3),
      fmt(p.pgbenchCpuMs, 3),
      otherCoresCell(p),
    ]),
  );
}

// ------------------------------------------------------------- 1. replay: where the time goes

/** The CPU a replay and a baseline request cost at the highest concurrency, and the budget. */
interface CpuBudget {
  replay: number;
  baseline: number;
  /** 0.5× the baseline's throughput on a saturated machine: twice the baseline's CPU. */
  budget: number;
}

function cpuBudget(v: ReplayVerdict): CpuBudget {
  const baseline = cpuTotal(v.baseline);
  return { replay: cpuTotal(v.replay), baseline, budget: 2 * baseline };
}

/** Does a replay write WAL (and so wait for a flush)? */
function replayWrites(r: Results): boolean {
  return pass(r, "replay").walRecordsPerRequest >= 0.5;
}

function whereTheTimeGoes(r: Results, verdicts: ReplayVerdict[]): string[] {
  const bullets = [
    cpuBullet(r, verdicts),
    postgresBullet(r),
    hotRowBullet(r, verdicts),
    ownCodeBullet(r, verdicts),
    closingBullet(r, verdicts),
  ].filter((bullet) => bullet !== undefined);
  return [replayGoals(verdicts), bullets.join("\n")];
}

function replayGoals(verdicts: ReplayVerdict[]): string {
  const failing = verdicts.filter((v) => !v.ok);
  if (failing.length === 0) return "All replay goals are met at every concurrency.";
  const parts = failing.map((v) => {
    const misses: string[] = [];
    if (v.throughputRatio < 0.5) {
      misses.push(
        `throughput ${x(v.throughputRatio)} the baseline's (${
          short(v.throughputRatio, 0.5)
        } of 0.5×)`,
      );
    }
    if (v.p99Ratio > 3) misses.push(`p99 ${x(v.p99Ratio)} (${over(v.p99Ratio, 3)} 3×)`);
    return `c${v.concurrency}: ${misses.join(", ")}`;
  });
  return `Goals not met: ${parts.join("; ")}.`;
}

function cpuBullet(r: Results, verdicts: ReplayVerdict[]): string {
  const hi = verdicts[verdicts.length - 1]!;
  const cpu = cpuBudget(hi);
  const rc = hi.replay.cpuPerRequest;
  const bc = hi.baseline.cpuPerRequest;
  // On a saturated machine throughput follows CPU per request, so 0.5× the baseline's
  // throughput needs a replay to cost at most about twice the baseline's CPU.
  return `- **CPU.** At c${hi.concurrency} a replay costs ${ms(cpu.replay)} ms of CPU across the ` +
    `processes (function ${ms(rc.server)}, Postgres ${ms(rc.postgres)}, autocannon ` +
    `${ms(rc.loadgen)}) against ${ms(cpu.baseline)} ms for the baseline (${ms(bc.server)}, ` +
    `${ms(bc.postgres)}, ${ms(bc.loadgen)}): ${x(cpu.replay / cpu.baseline)}. On ` +
    `${r.machine.nproc} shared cores throughput follows CPU per request (1 / ` +
    `${fmt(cpu.replay / cpu.baseline, 2)} = ${x(cpu.baseline / cpu.replay)}; measured ` +
    `${x(hi.throughputRatio)}), so 0.5× needs a replay to cost at most about twice the ` +
    `baseline's CPU: ${ms(cpu.budget)} ms instead of ${ms(cpu.replay)} ms.`;
}

function postgresBullet(r: Results): string {
  const parts = [
    pgbenchComparison(r),
    replayWrites(r) ? replayWritesNote(r) : replayReadsNote(r),
    replanNote(r),
  ].filter((part) => part !== undefined);
  return `- **Postgres.** ${parts.join(" ")}`;
}

function pgbenchComparison(r: Results): string | undefined {
  const replay = pgbench(r, "replay claim_checkout", 1);
  const base = pgbench(r, "baseline select", 1);
  if (!replay || !base) return undefined;
  return `Without HTTP, the replay statement runs at ${int(replay.tps)} tps on one connection ` +
    `(p50 ${ms(replay.latency.p50)} ms, ${fmt(replay.postgresCpuMs, 3)} ms of CPU) ` +
    `against ${int(base.tps)} tps for the baseline's select (p50 ` +
    `${ms(base.latency.p50)} ms, ${fmt(base.postgresCpuMs, 3)} ms): ` +
    `${x(replay.latency.p50 / base.latency.p50)} slower.`;
}

/** The statements that ran inside the replay's `claim_checkout`. */
function nestedReplayStatements(r: Results): StatementCount[] {
  return pass(r, "replay").nested.filter((row) => row.callsPerRequest > 0);
}

function rowLocks(r: Results): StatementCount[] {
  return nestedReplayStatements(r).filter((row) => /for update/i.test(row.query));
}

function replayWritesNote(r: Results): string {
  const replayPass = pass(r, "replay");
  const locks = rowLocks(r);
  const insert = nestedReplayStatements(r).find((row) =>
    /^insert into public\.stripe_idempotency_keys/i.test(row.query)
  );
  return "A replay is not a read: `claim_checkout` " +
    (insert ? `first tries the insert (${ms(insert.msPerRequest)} ms), then ` : "") +
    `takes ${locks.length} row lock(s) with \`select … for update\` ` +
    `(${locks.map((l) => code(l.query, 60)).join(", ")}) before it answers. Locks need a ` +
    `transaction id and write WAL (${fmt(replayPass.walRecordsPerRequest, 1)} records, ` +
    `${int(replayPass.walBytesPerRequest)} bytes per replay), so every replay commits with a ` +
    "WAL flush (synchronous_commit = on; this disk's fdatasync: p50 " +
    `${int(r.machine.fsyncMicros.p50)} µs, p99 ${int(r.machine.fsyncMicros.p99)} µs).`;
}

function replayReadsNote(r: Results): string {
  const replayPass = pass(r, "replay");
  const locks = rowLocks(r);
  const inner = nestedReplayStatements(r).reduce(
    (t, row) => t + row.msPerRequest + row.planMsPerRequest,
    0,
  );
  const top = replayPass.statements[0];
  return `The replay is a plain read: it writes no WAL (${
    fmt(replayPass.walRecordsPerRequest, 2)
  } ` +
    `records per replay) and takes ${
      locks.length ? `${locks.length} row lock(s)` : "no row lock"
    }, ` +
    "so it waits for no flush. What it still pays for is PL/pgSQL: " +
    (top ? `the statement runs ${ms(top.msPerRequest)} ms inside Postgres, ` : "") +
    `of which the SQL statements inside it account for ${ms(inner)} ms (a live session's ` +
    "replay is one read of the operation joined to its order, with no nested function); the " +
    "rest is the PL/pgSQL call itself: its twenty arguments, its own `set search_path`, and " +
    "the composite row it returns.";
}

function replanNote(r: Results): string | undefined {
  const replanned = nestedReplayStatements(r).filter((row) =>
    row.plansPerRequest >= 0.9 * row.callsPerRequest
  );
  if (!replanned.length) return undefined;
  return `${replanned.map((row) => code(row.query, 50)).join(", ")} ` +
    `${replanned.length > 1 ? "are" : "is"} planned again on every call (plans = calls), ` +
    `${ms(replanned.reduce((t, row) => t + row.planMsPerRequest, 0))} ms per replay.`;
}

function lockShare(point: LoadPoint): number {
  return Object.entries(point.waits)
    .filter(([wait]) => wait.startsWith("Lock:"))
    .reduce((t, [, share]) => t + share, 0);
}

function hotRowBullet(r: Results, verdicts: ReplayVerdict[]): string | undefined {
  const spreadPoints = verdicts.filter((v) => v.spread);
  if (!spreadPoints.length) return undefined;
  const described = spreadPoints.map((v) =>
    `c${v.concurrency}: ${pct(lockShare(v.replay))} of active-backend samples wait on a ` +
    `lock; spread over ${r.replay.spreadKeys} operations, ${x(v.spread!.rps / v.replay.rps)} ` +
    `the throughput, p99 ${ms(v.spread!.latency.p99)} ms instead of ` +
    `${ms(v.replay.latency.p99)} ms`
  );
  const queued = spreadPoints.some((v) => lockShare(v.replay) > 0.2);
  return (queued
    ? "- **One hot row.** Replays of one key queue on that row's lock, each holding it until " +
      "its commit is flushed, so the single-key test (the goal's) is the worst case: "
    : "- **One hot row.** Replays of one key do not queue on each other: ") +
    `${described.join("; ")}.`;
}

function ownCodeBullet(r: Results, verdicts: ReplayVerdict[]): string {
  const f = r.fresh;
  const lo = verdicts[0]!;
  const hi = verdicts[verdicts.length - 1]!;
  return `- **The function's own code.** Replaying one request at a time, the function spends ` +
    `${ms(f.replayHandlerMs.p50)} ms (p50, its log line), ${ms(f.replayHandlerDbMs.p50)} ms of ` +
    `it waiting for the database; its process burns ${ms(lo.replay.cpuPerRequest.server)} ms of ` +
    `CPU per replay at c${lo.concurrency} and ${ms(hi.replay.cpuPerRequest.server)} ms at ` +
    `c${hi.concurrency}, against the bare baseline's ${ms(lo.baseline.cpuPerRequest.server)} ` +
    `and ${ms(hi.baseline.cpuPerRequest.server)} ms (validation with zod, the request ` +
    "fingerprint, a statement with many parameters and a wide row to decode, the canonical " +
    "JSON answer, the CORS headers and the JSON log line).";
}

function closingBullet(r: Results, verdicts: ReplayVerdict[]): string | undefined {
  if (verdicts.every((v) => v.ok)) return undefined;
  if (replayWrites(r)) {
    return "- **What would close most of the gap** (for the owners of `claim_checkout`; not " +
      "measured here): answer a replay of a completed operation from a plain indexed read, " +
      "without the insert attempt and without row locks, and fall through to the locking " +
      "claim only when that read finds no completed row. Such a replay writes no WAL, waits " +
      "for no flush and queues on no lock; the function's own CPU would then dominate.";
  }
  const hi = verdicts[verdicts.length - 1]!;
  const cpu = cpuBudget(hi);
  const rc = hi.replay.cpuPerRequest;
  const bc = hi.baseline.cpuPerRequest;
  return `- **What is left.** The replay already avoids locks and WAL. Meeting 0.5× on this ` +
    `machine would take the whole replay down to about ${ms(cpu.budget)} ms of CPU, from ` +
    `${ms(cpu.replay)} ms now. The function's handler (${ms(rc.server)} ms, ` +
    `${x(rc.server / Math.max(1e-6, bc.server))} the bare handler's) and the PL/pgSQL ` +
    `call (${ms(rc.postgres)} ms of Postgres CPU, ` +
    `${x(rc.postgres / Math.max(1e-6, bc.postgres))} the select's) both weigh; a replay is ` +
    "validated, fingerprinted and logged like any request, by design. The p99 follows: with " +
    "the CPU saturated, requests queue for it.";
}

// ------------------------------------------------------------------------------ 2. statements

function statementsSection(r: Results): string[] {
  const replayPass = pass(r, "replay");
  const freshPass = pass(r, "fresh");
  const bothMet = statementsMet(replayPass, 1) && statementsMet(freshPass, 2);
  return [
    "## 2. Database statements per request",
    "Counted with pg_stat_statements: reset, then " +
    `${replayPass.requests} sequential requests of each kind against warm servers. The ` +
    "functions connect as `postgres`; the bench's own bookkeeping connects as another role " +
    "and is excluded by user. WAL is what those statements wrote (pg_stat_statements' " +
    "wal_records/wal_bytes; the commit record is not included). A foreign key's own check " +
    "(`SELECT 1 FROM ONLY …`, run by Postgres at commit for the deferred " +
    "`stripe_idempotency_keys.order_id`) is listed but is not a round trip, so it is not counted.",
    table(
      ["request", "statements/req (target)", "WAL records/req", "WAL bytes/req", "statements"],
      [replayPass, freshPass, pass(r, "baseline")].map((p) => [
        p.kind,
        `**${fmt(p.statementsPerRequest, 2)}** (${p.kind === "fresh" ? 2 : 1})`,
        fmt(p.walRecordsPerRequest, 1),
        int(p.walBytesPerRequest),
        p.statements.map((st) => `${fmt(st.callsPerRequest, 2)} × ${code(st.query, 70)}`)
          .join("<br>"),
      ]),
    ),
    `Both targets are ${met(bothMet)}: one round trip per replay, two per fresh checkout ` +
    "(claim with order creation, then record). What runs inside them, from a second pass with " +
    "`pg_stat_statements.track = all` and `track_planning = on` (top 10 by time):",
    "Replay (`claim_checkout`):",
    nestedTable(replayPass.nested),
    "Fresh checkout (`claim_checkout` + `record_checkout`):",
    nestedTable(freshPass.nested),
  ];
}

function nestedTable(rows: StatementCount[]): string {
  const shown = [...rows]
    .sort((a, b) => b.msPerRequest + b.planMsPerRequest - a.msPerRequest - a.planMsPerRequest)
    .slice(0, 10);
  return table(
    [
      "statement inside the function",
      "calls/req",
      "plans/req",
      "plan ms/req",
      "exec ms/req",
      "WAL records/req",
    ],
    shown.map((row) => [
      code(row.query),
      fmt(row.callsPerRequest, 2),
      fmt(row.plansPerRequest, 2),
      fmt(row.planMsPerRequest, 3),
      fmt(row.msPerRequest, 3),
      fmt(row.walRecordsPerRequest, 2),
    ]),
  );
}

// ----------------------------------------------------------------------------------- 3. fresh

function freshSection(r: Results): string[] {
  const f = r.fresh;
  return [
    "## 3. Fresh path vs the Stripe call alone",
    `${int(f.requests)} new checkouts (distinct keys), one at a time from a Deno client after a ` +
    "warm-up; then as many `stripe.checkout.sessions.create` calls made directly with the " +
    "client the function uses (`createStripeClient`, same options, parameters from " +
    "`checkoutSessionParams`, distinct idempotency keys). The Stripe here is the local server " +
    "answering at once, so the Stripe figure is the SDK plus loopback HTTP, not Stripe's real " +
    "latency (hundreds of ms, which would dwarf everything else).",
    table(["", "p50 ms", "p99 ms", "max ms"], [
      ["fresh checkout, end to end (client)", ...lat(f.freshE2e)],
      ["— the function's own total (its log line's `ms`)", ...lat(f.handlerMs)],
      ["— of which the Stripe call (`stripe_ms`)", ...lat(f.handlerStripeMs)],
      ["— of which the database: claim + record (`db_ms`)", ...lat(f.handlerDbMs)],
      ["**Stripe call alone** (same client, direct)", ...lat(f.stripeAlone)],
      ["replay, end to end, same client", ...lat(f.replayE2e)],
      ["— the function's own total (`ms`)", ...lat(f.replayHandlerMs)],
      ["— of which the database (`db_ms`)", ...lat(f.replayHandlerDbMs)],
    ]),
    otherNote(f.otherCores, f.retries),
    freshOverheadNote(f),
  ];
}

function freshOverheadNote(f: FreshResult): string {
  const overhead = f.freshE2e.p50 - f.stripeAlone.p50;
  const rest = Math.max(0, f.handlerMs.p50 - f.handlerDbMs.p50 - f.handlerStripeMs.p50);
  return `A new checkout costs ${ms(f.freshE2e.p50)} ms at the median against ` +
    `${ms(f.stripeAlone.p50)} ms for the Stripe call alone: the function adds ` +
    `${ms(overhead)} ms (${x(f.freshE2e.p50 / f.stripeAlone.p50)}). Inside it, the two ` +
    `database statements take ${ms(f.handlerDbMs.p50)} ms (two commits, each with a WAL ` +
    `flush), the Stripe call ${ms(f.handlerStripeMs.p50)} ms, and everything else ` +
    `(validation, fingerprint, JSON, logging) about ${ms(rest)} ms. Against Stripe's real ` +
    `latency the overhead is the ${ms(f.handlerDbMs.p50 + rest)} ms of database and code.`;
}

// ----------------------------------------------------------------------------------- 4. storm

function stormSection(r: Results): string[] {
  const storm = r.storm;
  return [
    "## 4. Storm",
    `${storm.concurrent} identical requests (same key, same body) sent at once from a Deno ` +
    `client, ${storm.rounds.length} times with a new key each; then one more request, which ` +
    "must replay the same bytes. 409 is `idempotency_key_in_use` (the first request still " +
    "holds the lease).",
    table(
      [
        "storm",
        "sessions created",
        "201 created",
        "201 replayed",
        "409 in use",
        "other",
        "same bytes",
        "p50 ms",
        "p99 ms",
        "max ms",
      ],
      storm.rounds.map((round, i) => [
        String(i + 1),
        `**${round.sessionsCreated}**`,
        String(round.created),
        String(round.replayed),
        String(round.inUse),
        counts(round.other, String) || "0",
        round.consistent ? "yes" : "**no**",
        ...lat(round.latency),
      ]),
    ),
    `All ${int(storm.latency.n)} answers: p50 ${ms(storm.latency.p50)} ms, p99 ` +
    `${ms(storm.latency.p99)} ms. One session per storm: ${met(stormMet(storm))}. A 409 is a ` +
    "claim that reached the database while the first request still held the lease: the " +
    "function's 5 pooled connections take the 200 claims in turn, and the first request's " +
    "record statement, issued after its Stripe call, waits in the same queue; claims that run " +
    "after the record replay. The latencies are that queue.",
    otherNote(storm.otherCores),
  ];
}

// ----------------------------------------------------------------------------------- 5. mixed

function mixedSection(r: Results): string[] {
  const mx = r.mixed;
  return [
    "## 5. Mixed load",
    `${int(mx.operations)} distinct guest checkouts (fixed seed) from ${mx.workers} concurrent ` +
    `clients: ${pct(mx.retriedShare, 1)} retried after their answer (a lost response), ` +
    `${pct(mx.doubleShare, 1)} sent twice at once (a double click); a 409 ` +
    "`idempotency_key_in_use` is retried with the same key after 100 ms (Retry-After says 1 s; " +
    "shortened to keep the run bounded). Orders draw from two capacity-limited tiers, Floor and " +
    "Balcony, drawn so that demand exceeds their capacity over the full run, and an unlimited " +
    "one; some orders take both limited tiers. Each client has its own email and " +
    "X-Forwarded-For address, so the hold-flooding limits (at their defaults) do not interfere.",
    mixedTable(mx),
    otherNote(mx.otherCores),
  ];
}

function mixedTable(mx: MixedResult): string {
  return table(["", ""], [
    ["HTTP requests", int(mx.httpRequests)],
    ["duration", `${fmt(mx.seconds, 1)} s`],
    [
      "throughput",
      `**${fmt(mx.operationsPerSecond, 1)} operations/s**, ` +
      `${fmt(mx.requestsPerSecond, 1)} requests/s`,
    ],
    [
      "latency, all requests",
      `p50 ${ms(mx.latency.p50)} ms, p99 ${ms(mx.latency.p99)} ms, max ${ms(mx.latency.max)} ms`,
    ],
    ["final answer per operation", counts(mx.finals)],
    ["all answers", counts(mx.answers)],
    ["operations that succeeded (got a 201)", int(mx.succeeded)],
    ["Stripe sessions created", `**${int(mx.sessionsCreated)}** (must equal the line above)`],
    ["orders holding a session", int(mx.ordersWithSession)],
    ["operations answered with two different sessions", `${int(mx.splitOperations)} (must be 0)`],
    ...mx.tiers.map((t) => [
      `tier ${t.name}: seats taken (tier_seats_taken) / sold to 201s / capacity`,
      `${int(t.seatsTaken)} / ${int(t.seatsSold)} / ${int(t.capacity)}` +
      (t.oversold ? " **OVERSOLD**" : ""),
    ]),
    ["verdict", met(mixedMet(mx))],
  ]);
}

// --------------------------------------------------------------------------------- 6. cleanup

function cleanupSection(r: Results): string[] {
  const c = r.cleanup;
  return [
    "## 6. Cleanup",
    cleanupMethod(c),
    cleanupRunsTable(c),
    table(["claims", "count", "claims/s", "p50 ms", "p99 ms", "max ms"], [
      claimRow("without cleanup", c.claimsWithout),
      claimRow("during cleanup", c.claimsDuring),
    ]),
    cleanupVerdict(c),
    otherNote(
      Math.max(c.otherCores.without, c.otherCores.during),
      0,
      `during the claims (${fmt(c.otherCores.without, 2)} without, ` +
        `${fmt(c.otherCores.during, 2)} during the cleanup)`,
    ),
    cleanupBacklogNote(c),
  ];
}

function cleanupMethod(c: CleanupResult): string {
  return `First a cron-sized run on its own: ${int(c.cadence.rows)} expired rows (the 15-minute ` +
    "job's share at 100 checkouts/s is 90,000), bulk-inserted, vacuumed, then " +
    "`select public.cleanup_expired_idempotency_keys()`. " +
    `Then ${int(c.expiredRows)} expired and ${int(c.liveRows)} live completed rows ` +
    `bulk-inserted with generate_series (${fmt(c.fillSeconds, 1)} s; keys ` +
    "`checkout:create:<id>:<uuid>`, 64-hex fingerprints, a 201 body and metadata as the function " +
    "stores them), then `vacuum analyze` and a checkpoint: table " +
    `${mib(c.tableBytesBefore)} with its indexes. ${c.claimWorkers} connections claim fresh ` +
    "operations (`claim_stripe_idempotency` through `claimOperation`) for " +
    `${fmt(c.claimsWithout.seconds, 0)} s alone, and again while ` +
    "`select public.cleanup_expired_idempotency_keys()` (default batch 10,000) runs to completion.";
}

function cleanupRunsTable(c: CleanupResult): string {
  const cad = c.cadence;
  return table(["", "cron-sized run, alone", `${int(c.expiredRows)}-row run, with claims`], [
    [
      "rows deleted",
      `${int(cad.deleted)} (expected ${int(cad.rows)})`,
      `${int(c.deleted)} (expected ${int(c.expiredRows)}; expired rows left: ` +
      `${int(c.expiredLeft)})`,
    ],
    ["time", `**${fmt(cad.seconds, 2)} s**`, `**${fmt(c.seconds, 2)} s**`],
    ["rate", `**${int(cad.rowsPerSecond)} rows/s**`, `**${int(c.rowsPerSecond)} rows/s**`],
    ["WAL written", mib(cad.walBytes), mib(c.walBytes)],
    [
      "expires_at index entries read (idx_tup_read) per deleted row",
      fmt(entriesPerRow(cad), 1),
      fmt(entriesPerRow(c), 1),
    ],
    ["live rows before → after", "–", `${int(c.liveBefore)} → ${int(c.liveAfter)}`],
  ]);
}

function claimRow(label: string, load: ClaimLoad): string[] {
  return [label, int(load.claims), int(load.claimsPerSecond), ...lat(load.latency)];
}

function cleanupVerdict(c: CleanupResult): string {
  const ratio = cleanupRatio(c);
  return `Claim p99 during cleanup is ${x(ratio)} the p99 without (goal ≤ 2×): ` +
    `${met(ratio <= 2)}` + (ratio > 2 ? `, ${over(ratio, 2)}` : "") +
    `; claim throughput went from ${int(c.claimsWithout.claimsPerSecond)}/s to ` +
    `${int(c.claimsDuring.claimsPerSecond)}/s while the cleanup ran, and the live rows were ` +
    `${c.liveBefore === c.liveAfter ? "untouched" : "**changed**"}.`;
}

function cleanupBacklogNote(c: CleanupResult): string {
  const cad = c.cadence;
  const perRow = entriesPerRow(c);
  const cadPerRow = entriesPerRow(cad);
  const growing = perRow > 2 * Math.max(1, cadPerRow) || perRow > 5;
  const falls = c.rowsPerSecond < 0.67 * cad.rowsPerSecond;
  return `The rate ${falls ? "falls" : "holds"} with the backlog: ${int(cad.rowsPerSecond)} ` +
    `rows/s for a cron-sized run, ${int(c.rowsPerSecond)} rows/s for ${int(c.expiredRows)} ` +
    "rows. The function is one statement, so all its batches run in one transaction: nothing " +
    "is committed until the last batch (a failure anywhere undoes all of it), and the rows an " +
    "earlier batch deleted stay in the `expires_at` index until that transaction ends. Each " +
    "batch starts at the last `expires_at` the previous one deleted, so the index returned " +
    `${fmt(perRow, 1)} entries per deleted row in the ${int(c.expiredRows)}-row run against ` +
    `${fmt(cadPerRow, 1)} in the cron-sized one` +
    (growing
      ? ": **the work per deleted row grows with the backlog**, which it should not."
      : ": the work per deleted row does not grow with the backlog.") +
    ` The 15-minute job at 100 checkouts/s deletes about 90,000 rows per run; the ` +
    `${int(cad.rows)}-row run took ${fmt(cad.seconds, 2)} s here.`;
}

// ------------------------------------------------------------------------------------ 7. size

function sizeSection(r: Results): string[] {
  const s = r.size;
  return [
    "## 7. Size",
    `${int(s.checkouts)} completed guest checkouts made through the real SQL path ` +
    "(`claim_checkout`, then `record_checkout`, as the function calls them, in " +
    `${fmt(s.fillSeconds, 1)} s) into emptied tables, then \`vacuum analyze\`. Values are ` +
    "production-shaped: storefront key `sf-<uuid>` (Stripe key " +
    `${fmt(s.averageRowText.key, 0)} characters), 64-hex fingerprint, \`cs_live_\` + ` +
    "58-character session id, and a hosted-Checkout URL with a 120-character fragment (stored " +
    `response body ${fmt(s.averageRowText.responseBody, 0)} characters). "As written" is the ` +
    "table the checkouts left (each row inserted by the claim, then rewritten by the record: " +
    'the old version\'s space is free for later rows but still counted); "compact" is the ' +
    "same rows copied into a fresh table.",
    table(["table", "rows", "heap", "TOAST", "indexes", "total", "bytes/row"], [
      sizeRow("as written", s.asWritten, `**${int(s.asWritten.bytesPerRow)}**`),
      sizeRow("compact copy", s.compact, int(s.compact.bytesPerRow)),
    ]),
    `At ${int(s.perDay / 86_400)} checkouts/s kept 24 hours (${fmt(s.perDay / 1e6, 2)}M rows) ` +
    `the table holds **${gib(s.projectedBytes.asWritten)}** as written ` +
    `(${gib(s.projectedBytes.compact)} compact); steady state with autovacuum lies between ` +
    "the two. The as-written figure depends on when page pruning and autovacuum reclaimed the " +
    "old row versions during the fill, so it varies from run to run; the compact one does not. " +
    "Rows live at least 24 hours and the cleanup job runs every 15 minutes, so the " +
    "table peaks about 1% above that. Orders and order items add a further " +
    `${int(s.ordersBytesPerCheckout)} bytes per checkout (kept, not cleaned up).`,
  ];
}

function sizeRow(label: string, size: RelationSize, bytesPerRow: string): string[] {
  return [
    label,
    int(size.rows),
    ...[size.heapBytes, size.toastBytes, size.indexBytes, size.totalBytes].map(mib),
    bytesPerRow,
  ];
}

// ---------------------------------------------------------------------------------- limits

function limitsSection(r: Results): string[] {
  return [
    "## What this run cannot tell",
    [
      "- Stripe's real latency and rate limits: the local server answers in about a millisecond.",
      "- Supabase's edge runtime and its gateway (JWT check, routing), and the network between " +
      "function and database: here everything is on loopback. Supabase's pooler (Supavisor) is " +
      "stood in for by PgBouncer 1.18 in transaction mode (section 10 only).",
      `- Scaling beyond ${r.machine.nproc} cores: servers, Postgres and load generator share ` +
      "them, so throughput figures are ceilings of this machine, and the ratios compare servers " +
      "that pay the same load-generator tax.",
      "- The disk: its fdatasync latency (above) sets the price of every commit; a production " +
      "volume may be faster or slower.",
    ].join("\n"),
  ];
}

// ---------------------------------------------------------------------- flash-sale goals (10)

/** A figure compared with the empty database's: how many times it. */
interface Against {
  label: string;
  ratio: number;
  /** true when higher is better (throughput). */
  higherIsBetter: boolean;
}

const HISTORY_LIMIT = 1.2;

function claimsAt(level: HistoryLevel, clients: number): PgbenchRun | undefined {
  return level.claims.find((run) => run.clients === clients);
}

/** Every comparison of goal 1: claims (fresh tier, sold tier) and late payments, per level. */
function historyComparisons(h: HistoryResult): Against[] {
  const empty = h.levels[0]!;
  const out: Against[] = [];
  for (const level of h.levels.slice(1)) {
    const tiers: [string, PgbenchRun[]][] = [[`${int(level.orders)} orders`, level.claims]];
    if (level.soldTier) tiers.push([`tier with ${int(h.soldSeats)} sold`, level.soldTier]);
    for (const [name, runs] of tiers) {
      for (const run of runs) {
        const base = claimsAt(empty, run.clients);
        if (!base) continue;
        out.push(
          {
            label: `${name}, c${run.clients} claims/s`,
            ratio: run.tps / base.tps,
            higherIsBetter: true,
          },
          {
            label: `${name}, c${run.clients} p50`,
            ratio: run.latency.p50 / base.latency.p50,
            higherIsBetter: false,
          },
          {
            label: `${name}, c${run.clients} p99`,
            ratio: run.latency.p99 / base.latency.p99,
            higherIsBetter: false,
          },
        );
      }
    }
    out.push(
      {
        label: `${int(level.orders)} orders, late payment p50`,
        ratio: level.latePayment.p50 / empty.latePayment.p50,
        higherIsBetter: false,
      },
      {
        label: `${int(level.orders)} orders, late payment p99`,
        ratio: level.latePayment.p99 / empty.latePayment.p99,
        higherIsBetter: false,
      },
    );
  }
  return out;
}

/** Within 1.2× of the empty database (throughput at least 1/1.2 of it). */
function withinHistoryLimit(a: Against): boolean {
  return a.higherIsBetter ? a.ratio >= 1 / HISTORY_LIMIT : a.ratio <= HISTORY_LIMIT;
}

/** How many times worse than the empty database (1 = as good or better). */
function worseness(a: Against): number {
  return a.higherIsBetter ? 1 / a.ratio : a.ratio;
}

function hotPoint(h: HotTierResult, statement: HotTierPoint["statement"], clients: number) {
  return h.points.find((p) => p.statement === statement && p.run.clients === clients)?.run;
}

function hotRatios(h: HotTierResult): { clients: number; ratio: number; vsSpread: number }[] {
  const clients = [...new Set(h.points.map((p) => p.run.clients))];
  return clients.map((c) => {
    const row = hotPoint(h, "single-row update", c);
    const hot = hotPoint(h, "claim, one tier", c);
    const spread = hotPoint(h, "claim, 64 tiers", c);
    return {
      clients: c,
      ratio: (hot?.tps ?? Number.NaN) / (row?.tps ?? Number.NaN),
      vsSpread: (hot?.tps ?? Number.NaN) / (spread?.tps ?? Number.NaN),
    };
  });
}

/** Exactly the seats sold, every loser 409 sold_out, no 5xx, one session per sale. */
function onSaleExact(run: OnSaleRun): boolean {
  return run.sold === run.seats && run.soldOut === run.buyers - run.seats &&
    run.fiveHundreds === 0 && run.sessionsCreated === run.sold && run.seatsTaken === run.seats &&
    run.seatsRecounted === run.seats && run.disagreeingTiers === 0;
}

function onSaleRun(r: Results, label: OnSaleRun["label"]): OnSaleRun | undefined {
  return r.onSale.runs.find((run) => run.label === label);
}

function onSaleCell(run: OnSaleRun): string {
  return `${int(run.sold)} of ${int(run.seats)} seats sold to ${int(run.buyers)} buyers ` +
    `(c${run.concurrency}), ${int(run.soldOut)} sold_out, ${int(run.fiveHundreds)} 5xx, ` +
    `${int(run.sessionsCreated)} sessions; ${fmt(run.checkoutsPerSecond, 0)} checkouts/s`;
}

function flashGoals(r: Results): string[] {
  const comparisons = historyComparisons(r.history);
  // The claims' row names the worst claim figure; late payments have a row of their own.
  const claimComparisons = comparisons.filter((c) => !c.label.includes("late"));
  const worst = claimComparisons.reduce(
    (a, b) => (worseness(b) > worseness(a) ? b : a),
    claimComparisons[0]!,
  );
  const claimsOk = claimComparisons.every(withinHistoryLimit);
  const lateOk = comparisons.filter((c) => c.label.includes("late")).every(withinHistoryLimit);
  const top = r.history.levels.at(-1)!;
  const empty = r.history.levels[0]!;
  const hot = hotRatios(r.hotTier);
  const worstHot = hot.reduce((a, b) => (b.ratio < a.ratio ? b : a), hot[0]!);
  const direct = onSaleRun(r, "hot tier");
  const spread = onSaleRun(r, "64 tiers");
  const pooled = onSaleRun(r, "hot tier through PgBouncer, 4 instances");
  const httpRatio = direct && spread ? direct.checkoutsPerSecond / spread.checkoutsPerSecond : NaN;
  const replay = replayVerdicts(r.replay);
  const worstReplay = replay.reduce((a, b) => (b.throughputRatio < a.throughputRatio ? b : a));
  const cleanup = cleanupRatio(r.cleanup);
  const rows: string[][] = [
    [
      "1. history: claims ≤ 1.2× the empty database's (p50, p99, claims/s)",
      `worst: ${worst.label} ${x(worseness(worst))} worse; c1 p50 ` +
      `${ms(claimsAt(empty, 1)?.latency.p50 ?? NaN)} → ${
        ms(claimsAt(top, 1)?.latency.p50 ?? NaN)
      } ms ` +
      `at ${int(top.orders)} orders; buffers per claim ${int(empty.buffersPerClaim)} → ` +
      `${int(top.buffersPerClaim)}; WAL per claim ${int(empty.walBytesPerClaim)} → ` +
      `${int(top.walBytesPerClaim)} B`,
      verdict(claimsOk, !claimsOk && `${x(worseness(worst))} against 1.2×`),
    ],
    [
      "1. history: late payment ≤ 1.2× the empty database's",
      `p50 ${ms(empty.latePayment.p50)} → ${ms(top.latePayment.p50)} ms, p99 ` +
      `${ms(empty.latePayment.p99)} → ${ms(top.latePayment.p99)} ms; WAL per payment ` +
      `${int(empty.latePayment.walBytes)} → ${int(top.latePayment.walBytes)} B`,
      met(lateOk),
    ],
    [
      "2. hot tier (SQL): claim_checkout on one tier ≥ 0.5× the single-row limit",
      hot.map((h) => `c${h.clients} ${x(h.ratio)} (one tier / 64 tiers ${x(h.vsSpread)})`)
        .join(", "),
      verdict(
        hot.every((h) => h.ratio >= 0.5),
        worstHot.ratio < 0.5 && `worst c${worstHot.clients}, ${short(worstHot.ratio, 0.5)}`,
      ),
    ],
  ];
  if (direct && spread) {
    rows.push(
      [
        "2. on-sale over HTTP: exact, losers 409 sold_out, no 5xx",
        onSaleCell(direct),
        met(onSaleExact(direct)),
      ],
      [
        "2. on-sale: checkouts/s ≥ 0.9× the same load over 64 tiers",
        `${fmt(direct.checkoutsPerSecond, 0)} vs ${fmt(spread.checkoutsPerSecond, 0)}/s: ` +
        x(httpRatio),
        verdict(httpRatio >= 0.9, httpRatio < 0.9 && short(httpRatio, 0.9)),
      ],
    );
  }
  if (pooled) {
    rows.push([
      "2. on-sale through PgBouncer (transaction mode), 4 function processes: exact, no 5xx",
      onSaleCell(pooled),
      met(onSaleExact(pooled)),
    ]);
  }
  rows.push(
    [
      "3. replay ≥ 0.5× the one-select baseline (c1/16/64)",
      replay.map((v) => `c${v.concurrency} ${x(v.throughputRatio)}`).join(", "),
      verdict(
        replay.every((v) => v.throughputRatio >= 0.5),
        worstReplay.throughputRatio < 0.5 &&
          `worst c${worstReplay.concurrency}, ${short(worstReplay.throughputRatio, 0.5)}; ` +
            "see section 1, Where the time goes",
      ),
    ],
    [
      "4. claim p99 during a cleanup ≤ 2× without",
      `${x(cleanup)} (${int(r.cleanup.expiredRows)} rows)`,
      verdict(cleanupMet(r.cleanup), cleanup > 2 && over(cleanup, 2)),
    ],
  );
  return [
    "## Flash-sale goals",
    "Goals 1–4 of the flash-sale issue, measured side by side in this run of `npm run bench` " +
    "(sections 8–10 below, and sections 1 and 6 for goals 3 and 4).",
    table(["goal", "result", "verdict"], rows),
  ];
}

function historySection(r: Results): string[] {
  const h = r.history;
  const empty = h.levels[0]!;
  const rows: string[][] = [];
  for (const level of h.levels) {
    const tiers: [string, PgbenchRun[]][] = [["fresh tier", level.claims]];
    if (level.soldTier) tiers.push([`tier with ${int(h.soldSeats)} sold seats`, level.soldTier]);
    for (const [name, runs] of tiers) {
      for (const run of runs) {
        const base = claimsAt(empty, run.clients);
        rows.push([
          int(level.orders),
          name,
          String(run.clients),
          int(run.tps),
          ms(run.latency.p50),
          ms(run.latency.p99),
          base && level !== empty
            ? `${x(run.tps / base.tps)} / ${x(run.latency.p50 / base.latency.p50)} / ` +
              x(run.latency.p99 / base.latency.p99)
            : "–",
          int(level.buffersPerClaim),
          int(level.walBytesPerClaim),
          fmt(run.otherCores, 2),
        ]);
      }
    }
  }
  const late = h.levels.map((level) => [
    int(level.orders),
    ms(level.latePayment.p50),
    ms(level.latePayment.p99),
    fmt(level.latePayment.perSecond, 0),
    level === empty ? "–" : `${x(level.latePayment.p50 / empty.latePayment.p50)} / ` +
      x(level.latePayment.p99 / empty.latePayment.p99),
    int(level.latePayment.walBytes),
    `${fmt(level.latePayment.blocksRead, 2)} / ${fmt(level.latePayment.readMs, 3)}`,
    int(level.disagreeingTiers),
    fmt(level.latePayment.otherCores, 2),
  ]);
  return [
    "## 8. History does not matter",
    `Historical orders are added to the database in steps (${
      h.levels.map((l) => int(l.orders)).join(" → ")
    }), spread over ${int(h.events)} events × ${h.tiersPerEvent} tiers, paid, expired and ` +
    `cancelled in turn; at the last step ${int(h.soldSeats)} of them are paid seats of one tier ` +
    `(inserted in 50,000-row statements through the counters' triggers: ` +
    `${fmt(h.fillSeconds, 1)} s for the last step). They are shaped like production's: each ` +
    "has a random Checkout Session id and a random client key as its operation id, a paid one " +
    "its PaymentIntent, so that new ids land among old ones in their indexes. After each step " +
    "(vacuum analyze, checkpoint), pgbench calls `claim_checkout` for one seat of a tier made " +
    `for that step (${h.seconds} s per client count, simple protocol), then of the sold tier; ` +
    "`EXPLAIN (ANALYZE, BUFFERS)` counts the shared buffers of one claim (fewest of 5) and 200 " +
    `claims from a checkpoint on their WAL; then ${int(h.latePayments)} payments that land ` +
    "after their hold ran out (random operation ids, each naming its PaymentIntent) go " +
    "through `process_stripe_webhook_event` one at a time from a checkpoint on (the " +
    "late-payment path checks the tier's room), each run after a vacuum of the tables the " +
    "claims churn (seat_holds, tier_capacity, stripe_idempotency_keys, stripe_webhook_events), " +
    "so that autovacuum does not start inside some runs and not others. Claims " +
    `and late payments are measured ${h.rounds} times (claims interleaving tiers and client ` +
    "counts); " +
    "each row is the median run, by throughput for claims and by p50 for late payments, with " +
    "its p99 taken over the claims or payments of all runs together (before each run of late " +
    "payments the indexes of orders and order_items are read into the OS page cache, not into " +
    "shared buffers). " +
    "tests/capacity-history.test.ts asserts the buffer figure in `npm test`.",
    table(
      [
        "orders",
        "tier",
        "clients",
        "claims/s",
        "p50 ms",
        "p99 ms",
        "vs empty: claims/s / p50 / p99",
        "buffers per claim",
        "WAL bytes per claim",
        "other processes (cores)",
      ],
      rows,
    ),
    historyNote(h),
    table([
      "orders",
      "late payment p50 ms",
      "p99 ms",
      "per second",
      "vs empty: p50 / p99",
      "WAL bytes per payment",
      "reads outside shared buffers per payment: blocks / ms",
      "tiers whose counter disagrees",
      "other processes (cores)",
    ], late),
  ];
}

function historyNote(h: HistoryResult): string {
  const empty = h.levels[0]!;
  const top = h.levels.at(-1)!;
  const c1 = (level: HistoryLevel) => claimsAt(level, 1);
  return `Nothing in a claim scans past orders: its shared buffers go from ` +
    `${int(empty.buffersPerClaim)} to ${int(top.buffersPerClaim)} at ${int(top.orders)} orders ` +
    "(B-tree indexes one level deeper), where counting from the rows would read every page of " +
    "them. What a commit waits for is its WAL: " +
    `${int(empty.walBytesPerClaim)} → ${int(top.walBytesPerClaim)} bytes per ` +
    "claim right after a checkpoint (200 claims, full-page images included). Order ids are " +
    "time-ordered (UUIDv7, `private.uuid_v7`), so a new order's entries in `orders`, " +
    "`order_items` and `seat_holds` land on the rightmost pages instead of dirtying a random " +
    "leaf of a large index, whose whole image the WAL would carry again after every checkpoint " +
    "(15 KB per claim at 1,000,000 orders with random ids, against 3.6 KB on an empty database, " +
    "measured when the change was made); and a pending order adds no entry to the index of " +
    "operation ids (`orders_paid_operation_idx` holds paid orders only), whose random client " +
    "keys cost a claim one such page image at 1,000,000 orders. A payment still puts its random " +
    "PaymentIntent and operation ids into indexes as large as the history (WAL per payment " +
    `above: ${int(empty.latePayment.walBytes)} → ${int(top.latePayment.walBytes)} bytes). ` +
    "At one client the claim's p50 goes from " +
    `${ms(c1(empty)?.latency.p50 ?? NaN)} to ${ms(c1(top)?.latency.p50 ?? NaN)} ms, and its ` +
    `Postgres CPU from ${fmt(c1(empty)?.postgresCpuMs ?? NaN, 2)} to ` +
    `${fmt(c1(top)?.postgresCpuMs ?? NaN, 2)} ms.`;
}

function hotTierSection(r: Results): string[] {
  const h = r.hotTier;
  const ratios = hotRatios(h);
  const rows = h.points.map((p) => {
    const row = hotPoint(h, "single-row update", p.run.clients);
    return [
      String(p.run.clients),
      p.statement,
      int(p.run.tps),
      (p.roundsTps ?? [p.run.tps]).map(int).join(", "),
      ms(p.run.latency.p50),
      ms(p.run.latency.p99),
      int(p.run.failed),
      p.statement === "single-row update" ? "–" : x(p.run.tps / (row?.tps ?? NaN)),
      fmt(p.run.postgresCpuMs, 3),
      fmt(p.run.otherCores, 2),
    ];
  });
  return [
    "## 9. Hot tier",
    `pgbench, ${h.seconds} s per point and round, ${h.rounds ?? 1} round(s) interleaving ` +
    "the statements and client counts, each point's median round shown (tps of every round " +
    "beside it), simple protocol: the single-row limit " +
    "(`update … set n = n + 1` of one row, fsync on: the ceiling of any design that " +
    "serializes a tier on one row lock), `claim_checkout` for one seat of one tier, and the same " +
    `claims spread over ${h.tiers} tiers of one event (each transaction draws its tier).`,
    table(
      [
        "clients",
        "statement",
        "tps",
        "tps of each round",
        "p50 ms",
        "p99 ms",
        "failed",
        "vs single-row",
        "Postgres CPU ms/txn",
        "other processes (cores)",
      ],
      rows,
    ),
    hotTierNote(h, ratios),
  ];
}

function hotTierNote(h: HotTierResult, ratios: ReturnType<typeof hotRatios>): string {
  const parts = ratios.map((ratio) => {
    const row = hotPoint(h, "single-row update", ratio.clients);
    const one = hotPoint(h, "claim, one tier", ratio.clients);
    const spread = hotPoint(h, "claim, 64 tiers", ratio.clients);
    return `At c${ratio.clients} one tier runs ${int(one?.tps ?? NaN)} claims/s against ` +
      `${int(spread?.tps ?? NaN)} over ${h.tiers} tiers (${x(ratio.vsSpread)}): one claim every ${
        ms(1000 / (one?.tps ?? NaN))
      } ms (1 / throughput) against ` +
      `${ms(1000 / (row?.tps ?? NaN))} ms per single-row update`;
  });
  return "The hot tier (100,000,000 seats) counts on 64 shard rows (`private.tier_capacity`; " +
    "tiers of 8,192 seats or more and unlimited ones, 8 from 256 seats), each with its share " +
    "of the capacity; a claim locks only its order's shard, checks it against that share and " +
    "holds it through the commit's WAL flush (a claim whose shard is full takes all of them to " +
    "move seats between them), and its order item references that shard's row, not the tier's. " +
    `${parts.join(". ")}. ${hotTierBound(h, ratios)}`;
}

/** What bounds the hot tier, judged from this run's one-tier / spread ratios. */
function hotTierBound(h: HotTierResult, ratios: ReturnType<typeof hotRatios>): string {
  const worst = Math.min(...ratios.map((ratio) => ratio.vsSpread));
  const cpu = "the CPU one claim costs (Postgres CPU per transaction above, against the " +
    "update's) on cores shared with pgbench";
  return worst >= 0.9
    ? `One tier runs at ${x(worst)} or more of ${h.tiers} tiers, which share no counter row, so ` +
      `the hot tier's locks are not what limits it: claims are bounded by ${cpu}.`
    : `One tier runs at only ${x(worst)} of ${h.tiers} tiers at worst: its shards' locks, ` +
      `held through the commit, cost it that much beyond ${cpu}.`;
}

function onSaleSection(r: Results): string[] {
  const rows = r.onSale.runs.map((run) => [
    run.label,
    int(run.buyers),
    `${int(run.seats)} (${run.tiers} tier${run.tiers > 1 ? "s" : ""})`,
    fmt(run.checkoutsPerSecond, 0),
    ms(run.latency.p50),
    ms(run.latency.p99),
    int(run.sold),
    int(run.soldOut),
    int(run.fiveHundreds),
    int(run.sessionsCreated),
    `${int(run.seatsTaken)} / ${int(run.seatsRecounted)}`,
    counts(run.answers),
    met(onSaleExact(run)),
  ]);
  const first = r.onSale.runs[0];
  return [
    "## 10. On-sale over HTTP",
    `${first ? int(first.buyers) : "?"} distinct guests (each its own email and address), ` +
    `${first?.concurrency ?? "?"} at a time, one seat each: for one tier of ` +
    `${first ? int(first.seats) : "?"} seats through the guest-checkout process (pool of 5), ` +
    "then the same load over 64 tiers of one event (buyer i takes tier i mod 64), then the one " +
    "tier again through PgBouncer in transaction mode with four separate function processes " +
    "(scripts/functions-host.ts, `DB_POOL_MAX=3`, prepared statements off) behind a round-robin " +
    "front (scripts/lib/instances.ts). A 409 `idempotency_key_in_use` or a 503 would be retried " +
    "with the same key and counted. Latency is per buyer, retries included.",
    table(
      [
        "run",
        "buyers",
        "seats",
        "checkouts/s",
        "p50 ms",
        "p99 ms",
        "sold",
        "sold_out",
        "5xx",
        "sessions",
        "seats taken: counter / rows",
        "all answers",
        "exact",
      ],
      rows,
    ),
    otherNote(Math.max(...r.onSale.runs.map((run) => run.otherCores))),
  ];
}
