/**
 * `npm run bench` (through bench/bench.sh, which provides the throwaway database): runs every
 * benchmark in one run and writes BENCHMARKS.md and .bench-artifacts/results.json.
 *
 * Environment: DATABASE_URL (role postgres, migrated and seeded), POOLER_DATABASE_URL (PgBouncer
 * in transaction mode in front of it; the on-sale through the pooler is skipped without it),
 * BENCH_DIR (the cluster's folder), BENCH_ARTIFACTS. BENCH_SCALE=quick shrinks every phase for a smoke run (its report
 * goes to .bench-artifacts/BENCHMARKS.quick.md, never over BENCHMARKS.md).
 */
import postgres from "postgres";
import { type BenchEvent, openAdmin, type Services } from "./context.ts";
import { cleanupBenchmark, dbOnlyBenchmark, sizeBenchmark } from "./db-phases.ts";
import { historyBenchmark, hotTierBenchmark, onSaleBenchmark } from "./flash-phases.ts";
import {
  freshBenchmark,
  mixedBenchmark,
  prepareReplayTarget,
  replayBenchmark,
  roundTripBenchmark,
  stopServices,
  stormBenchmark,
} from "./http-phases.ts";
import {
  BENCH_PUBLISHABLE_KEY,
  type Child,
  progress,
  runCommand,
  spawnChild,
  summarize,
  waitForQuiet,
} from "./lib.ts";
import { type Machine, renderReport, type Results } from "./report.ts";

const QUICK = Deno.env.get("BENCH_SCALE") === "quick";

/** A phase size: `full` for the reference run, `quick` for BENCH_SCALE=quick. */
function scale<T>(full: T, quick: T): T {
  return QUICK ? quick : full;
}

/** Sizes of every phase; the full run targets ~10 minutes on 2 cores. */
const PLAN = {
  replay: {
    concurrencies: [1, 16, 64],
    secondsPerPoint: scale(10, 2),
    warmupSeconds: scale(3, 1),
    spreadKeys: scale(200, 50),
    spreadFrom: 16,
  },
  dbOnly: { clients: [1, 16], seconds: scale(5, 2) },
  roundTrips: { requests: scale(200, 50) },
  fresh: { requests: scale(500, 100), warmup: scale(50, 20) },
  storm: { concurrent: 200, rounds: scale(5, 2) },
  mixed: { operations: scale(2_000, 300), workers: 32, seed: 6 },
  cleanup: {
    cadence: scale(90_000, 9_000),
    expired: scale(1_000_000, 100_000),
    live: scale(100_000, 10_000),
    workers: 8,
    baselineSeconds: scale(10, 3),
  },
  size: { checkouts: scale(20_000, 2_000), perSecond: 100 },
  onSale: {
    buyers: scale(5_000, 500),
    seats: scale(1_000, 100),
    concurrency: 64,
    tiers: 64,
    instances: 4,
  },
  hotTier: { clients: [16, 64], seconds: scale(5, 2), tiers: 64, rounds: scale(3, 1) },
  history: {
    levels: scale([0, 100_000, 1_000_000], [0, 10_000, 50_000]),
    events: scale(200, 50),
    tiersPerEvent: 5,
    soldSeats: scale(100_000, 10_000),
    clients: [1, 8],
    seconds: scale(4, 2),
    latePayments: scale(300, 50),
    rounds: scale(3, 1),
  },
};

function env(name: string): string {
  const value = Deno.env.get(name);
  if (!value) {
    throw new Error(`Cannot run the bench: ${name} is not set (run it with npm run bench)`);
  }
  return value;
}

async function machine(
  sql: postgres.Sql,
  root: string,
  clusterDir: string,
  busyBeforeStart: number,
): Promise<Machine> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const meminfo = await Deno.readTextFile("/proc/meminfo");
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  const [version] = await sql<{ v: string }[]>`select version() as v`;
  const settings = await sql<{ name: string; setting: string; unit: string | null }[]>`
    select name, setting, unit from pg_settings
    where name in ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method',
                   'shared_buffers', 'max_wal_size', 'autovacuum', 'shared_preload_libraries',
                   'max_connections')
    order by name`;
  const autocannon = JSON.parse(
    await Deno.readTextFile(`${root}/node_modules/autocannon/package.json`),
  ) as { version: string };
  return {
    nproc: navigator.hardwareConcurrency,
    memoryGiB: Math.round((memKb / 1024 / 1024) * 10) / 10,
    cpuModel: /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1]?.trim() ?? "unknown",
    kernel: Deno.osRelease(),
    postgres: version!.v,
    deno: Deno.version.deno,
    node: (await runCommand("node", ["--version"])).trim(),
    autocannon: autocannon.version,
    postgresSettings: settings.map((s) => `${s.name}=${s.setting}${s.unit ? ` ${s.unit}` : ""}`),
    fsyncMicros: await fsyncProbe(clusterDir),
    busyBeforeStart,
    code: await codeVersion(root),
  };
}

/** The commit measured, and which files under test differ from it. */
async function codeVersion(root: string): Promise<string> {
  try {
    const commit = (await runCommand("git", ["rev-parse", "--short", "HEAD"], { cwd: root }))
      .trim();
    const dirty = (await runCommand("git", [
      "status",
      "--porcelain",
      "--",
      "supabase",
      "tests/support",
      "local",
    ], { cwd: root })).split("\n").map((line) => line.slice(3).trim()).filter(Boolean);
    return dirty.length ? `${commit} + uncommitted changes in ${dirty.join(", ")}` : commit;
  } catch {
    return "unknown (not a git checkout)";
  }
}

/**
 * Time of one 8 kB write + fdatasync on the cluster's file system (µs), overwriting a
 * preallocated file as Postgres does with its WAL segments.
 */
async function fsyncProbe(dir: string): Promise<{ p50: number; p99: number }> {
  const path = `${dir}/fsync-probe`;
  const file = await Deno.open(path, { create: true, write: true, truncate: true });
  const block = new Uint8Array(8192).fill(7);
  const samples: number[] = [];
  const count = 300;
  try {
    for (let i = 0; i < count; i++) await file.write(block);
    await file.sync();
    await file.seek(0, Deno.SeekMode.Start);
    for (let i = 0; i < count; i++) {
      const started = performance.now();
      await file.write(block);
      await file.syncData();
      samples.push((performance.now() - started) * 1000);
    }
  } finally {
    file.close();
    await Deno.remove(path);
  }
  const summary = summarize(samples.slice(50));
  return { p50: Math.round(summary.p50), p99: Math.round(summary.p99) };
}

async function setupDatabase(sql: postgres.Sql): Promise<{ event: BenchEvent; cron: string[] }> {
  await sql`create extension if not exists pg_stat_statements with schema extensions`;
  await sql`create extension if not exists pg_prewarm with schema extensions`;
  // pg_cron would run the cleanup on its own every 15 minutes, in the middle of a measurement.
  const cron = await sql<{ jobname: string }[]>`
    update cron.job set active = false where active returning jobname`;
  await sql.unsafe(`
    do $$ begin
      if not exists (select from pg_roles where rolname = 'bench') then
        create role bench login superuser;
      end if;
    end $$`);
  const [event] = await sql<{ id: string }[]>`
    insert into events.events (title, currency, status)
    values ('Bench Night', 'usd', 'published') returning id`;
  const tiers = await sql<{ id: string; name: string }[]>`
    insert into events.ticket_tiers (event_id, name, unit_amount, capacity, max_per_order)
    values (${event!.id}, 'Open', 2500, null, 10), (${event!.id}, 'Floor', 4500, 1500, 4),
           (${event!.id}, 'Balcony', 9900, 500, 2), (${event!.id}, 'Stream', 500, null, 1)
    returning id, name`;
  const id = (name: string) => tiers.find((t) => t.name === name)!.id;
  return {
    event: {
      id: event!.id,
      open: id("Open"),
      floor: { id: id("Floor"), capacity: 1500, maxPerOrder: 4 },
      balcony: { id: id("Balcony"), capacity: 500, maxPerOrder: 2 },
      stream: id("Stream"),
    },
    cron: cron.map((c) => c.jobname),
  };
}

async function startServices(
  root: string,
  databaseUrl: string,
  logFile: string,
): Promise<Services> {
  const deno = Deno.execPath();
  const baseEnv = { RUST_BACKTRACE: "0", NO_COLOR: "1", PATH: Deno.env.get("PATH") ?? "" };
  const started: Child[] = [];
  try {
    const stripe = await spawnChild("stripe server", {
      command: deno,
      args: ["run", "--allow-all", `${root}/bench/stripe.ts`],
      env: baseEnv,
      cwd: root,
      ready: /^(\{.*\})$/,
      readyOn: "stdout",
    });
    started.push(stripe.child);
    const urls = JSON.parse(stripe.match[1]!) as { url: string; control: string };
    const functionEnv = {
      ...baseEnv,
      SUPABASE_DB_URL: databaseUrl,
      STRIPE_SECRET_KEY: "sk_test_bench",
      STRIPE_API_BASE: urls.url,
      SITE_URL: "https://shop.example",
      SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: BENCH_PUBLISHABLE_KEY }),
      // The baseline's pool size, so that the replay comparison stays like for like.
      DB_POOL_MAX: "5",
    };
    // bench/server.ts in its two modes; it prints `listening <port>` once it serves.
    const server = (name: string, mode: "guest" | "baseline", stdoutFile?: string) =>
      spawnChild(name, {
        command: deno,
        args: ["run", "--allow-all", `${root}/bench/server.ts`, mode],
        env: functionEnv,
        cwd: root,
        ready: /^listening (\d+)$/,
        stdoutFile,
      });
    const guest = await server("guest-checkout", "guest", logFile);
    started.push(guest.child);
    const baseline = await server("baseline", "baseline");
    started.push(baseline.child);
    return {
      stripeUrl: urls.url,
      stripeControl: urls.control,
      stripe: stripe.child,
      guestUrl: `http://127.0.0.1:${guest.match[1]}/functions/v1/guest-checkout`,
      guest: guest.child,
      guestLog: logFile,
      baselineUrl: `http://127.0.0.1:${baseline.match[1]}/`,
      baseline: baseline.child,
    };
  } catch (error) {
    await Promise.all(started.map((child) => child.stop()));
    throw error;
  }
}

async function main(): Promise<void> {
  const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const databaseUrl = env("DATABASE_URL");
  const clusterDir = env("BENCH_DIR");
  const artifacts = env("BENCH_ARTIFACTS");
  const runStarted = performance.now();
  const runTag = Date.now().toString(36);

  // Figures from a machine that someone else is loading are not worth much: wait a little.
  const busy = await waitForQuiet(0.15, 120);
  const owner = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  const { event, cron } = await setupDatabase(owner);
  const info = await machine(owner, root, clusterDir, busy);
  await owner.end({ timeout: 5 });
  progress(`machine: ${info.nproc} cores, ${info.cpuModel}, ${info.memoryGiB} GiB`);
  progress(`fsync probe: 8 kB write + fdatasync p50 ${info.fsyncMicros.p50} µs`);

  const admin = openAdmin(databaseUrl, "bench");
  const postmasterPid = Number(
    (await Deno.readTextFile(`${clusterDir}/data/postmaster.pid`)).split("\n")[0],
  );
  const services = await startServices(root, databaseUrl, `${clusterDir}/guest-checkout.log`);
  progress(`services: guest ${services.guestUrl}, baseline ${services.baselineUrl}`);
  const bench = {
    root,
    artifacts,
    clusterDir,
    databaseUrl,
    admin,
    postmasterPid,
    event,
    services,
    runTag,
  };
  let stopped = false;
  try {
    const target = await prepareReplayTarget(bench);
    await admin`checkpoint`;
    progress("1. replay path vs baseline");
    const replay = await replayBenchmark(bench, target, PLAN.replay);
    progress("1b. the replay statement and the baseline select alone (pgbench)");
    const dbOnly = await dbOnlyBenchmark(bench, target, PLAN.dbOnly);
    progress("2. statements per request");
    const roundTrips = await roundTripBenchmark(bench, target, PLAN.roundTrips);
    await admin`checkpoint`;
    progress("3. fresh path vs the Stripe call alone");
    const fresh = await freshBenchmark(bench, target, PLAN.fresh);
    progress("4. storm");
    const storm = await stormBenchmark(bench, PLAN.storm);
    await admin`checkpoint`;
    progress("5. mixed load");
    const mixed = await mixedBenchmark(bench, PLAN.mixed);
    await admin`checkpoint`;
    progress("10. on-sale over HTTP (one tier, 64 tiers, through PgBouncer)");
    const onSale = await onSaleBenchmark(bench, {
      ...PLAN.onSale,
      poolerUrl: Deno.env.get("POOLER_DATABASE_URL") || null,
    });
    await stopServices(services);
    stopped = true;
    await admin`checkpoint`;
    progress("9. hot tier (pgbench)");
    const hotTier = await hotTierBenchmark(bench, PLAN.hotTier);
    progress("8. history");
    const history = await historyBenchmark(bench, PLAN.history);
    await admin`checkpoint`;
    progress("6. cleanup");
    const cleanup = await cleanupBenchmark(bench, PLAN.cleanup);
    await admin`checkpoint`;
    progress("7. size");
    const size = await sizeBenchmark(bench, PLAN.size);

    const results: Results = {
      command: "npm run bench",
      quick: QUICK,
      date: new Date().toISOString(),
      totalSeconds: Math.round((performance.now() - runStarted) / 1000),
      machine: info,
      cronJobsPaused: cron,
      replay,
      dbOnly,
      roundTrips,
      fresh,
      storm,
      mixed,
      cleanup,
      size,
      history,
      hotTier,
      onSale,
    };
    await Deno.writeTextFile(`${artifacts}/results.json`, JSON.stringify(results, null, 2) + "\n");
    const reportPath = QUICK ? `${artifacts}/BENCHMARKS.quick.md` : `${root}/BENCHMARKS.md`;
    await Deno.writeTextFile(reportPath, renderReport(results));
    await runCommand(Deno.execPath(), ["fmt", "--quiet", reportPath], { cwd: root });
    progress(`wrote ${reportPath.replace(`${root}/`, "")} and .bench-artifacts/results.json`);
  } finally {
    if (!stopped) await stopServices(services).catch(() => {});
    await admin.end({ timeout: 5 });
  }
}

await main();
