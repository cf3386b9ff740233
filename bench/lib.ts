/**
 * Helpers for bench/main.ts: latency statistics, a seeded random source, child processes,
 * CPU accounting from /proc, and the HTTP client the Deno-side load uses.
 */
import { terminate } from "../scripts/lib/process.ts";

/** Percentiles of a latency sample, in milliseconds. */
export interface LatencySummary {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}

/** Summarises latencies (ms). */
export function summarize(samples: ArrayLike<number>): LatencySummary {
  const sorted = Float64Array.from(samples).sort();
  let sum = 0;
  for (const value of sorted) sum += value;
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1]! : Number.NaN,
    mean: sorted.length ? sum / sorted.length : Number.NaN,
  };
}

/** A deterministic PRNG (mulberry32) so that runs draw the same workload. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Rounds to `digits` decimals. */
export function round(value: number, digits = 2): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

/** Formats a number for the report: fixed decimals, thousands separated. */
export function fmt(value: number, digits = 2): string {
  if (!Number.isFinite(value)) return "n/a";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

const started = performance.now();

/** A progress line with the time since the bench started. */
export function progress(message: string): void {
  const seconds = ((performance.now() - started) / 1000).toFixed(1).padStart(6);
  console.log(`[${seconds}s] ${message}`);
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// Processes and CPU time
// ---------------------------------------------------------------------------------------------

let clockTicks: number | null = null;

/** Kernel clock ticks per second (USER_HZ), for /proc CPU times. */
export async function clockTicksPerSecond(): Promise<number> {
  if (clockTicks !== null) return clockTicks;
  const out = await new Deno.Command("getconf", { args: ["CLK_TCK"], stdout: "piped" }).output();
  clockTicks = Number(new TextDecoder().decode(out.stdout).trim()) || 100;
  return clockTicks;
}

interface ProcStat {
  ppid: number;
  /** utime + stime, in ticks */
  own: number;
  /** cutime + cstime: children that exited and were waited for, in ticks */
  children: number;
}

function readStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const field = (n: number) => Number(fields[n - 3] ?? 0);
  return { ppid: field(4), own: field(14) + field(15), children: field(16) + field(17) };
}

/** CPU time (ms) used so far by one process. */
export async function processCpuMs(pid: number): Promise<number> {
  const stat = readStat(pid);
  return stat ? (stat.own * 1000) / await clockTicksPerSecond() : 0;
}

/**
 * CPU time (ms) used so far by a Postgres cluster: the postmaster, its live children, and the
 * children that already exited (which the postmaster waited for).
 */
export async function clusterCpuMs(postmasterPid: number): Promise<number> {
  const root = readStat(postmasterPid);
  if (!root) return 0;
  let ticks = root.own + root.children;
  for (const entry of Deno.readDirSync("/proc")) {
    const pid = Number(entry.name);
    if (!Number.isInteger(pid)) continue;
    const stat = readStat(pid);
    if (stat && stat.ppid === postmasterPid) ticks += stat.own;
  }
  return (ticks * 1000) / await clockTicksPerSecond();
}

/** A child process whose stderr is drained (the last lines kept for errors). */
export interface Child {
  pid: number;
  name: string;
  stderrTail: string[];
  stop(): Promise<void>;
}

/**
 * Spawns a process and waits until its stderr (or stdout, for `readyOn: "stdout"`) prints a line
 * matching `ready`; returns the match. stdout goes to `stdoutFile` when given.
 */
export async function spawnChild(
  name: string,
  options: {
    command: string;
    args: string[];
    env?: Record<string, string>;
    cwd?: string;
    ready: RegExp;
    readyOn?: "stderr" | "stdout";
    stdoutFile?: string;
  },
): Promise<{ child: Child; match: RegExpMatchArray }> {
  // `exec` keeps the pid ours while letting the shell send stdout to a file.
  const script = options.stdoutFile ? 'f="$1"; shift; exec "$@" >"$f"' : 'exec "$@"';
  const shellArgs = ["-c", script, "sh"];
  if (options.stdoutFile) shellArgs.push(options.stdoutFile);
  const process = new Deno.Command("sh", {
    args: [...shellArgs, options.command, ...options.args],
    env: options.env,
    cwd: options.cwd,
    stdin: "null",
    stdout: options.readyOn === "stdout" ? "piped" : options.stdoutFile ? "inherit" : "null",
    stderr: "piped",
  }).spawn();
  const stderrTail: string[] = [];
  let resolveReady: (match: RegExpMatchArray) => void;
  let rejectReady: (error: Error) => void;
  const readyPromise = new Promise<RegExpMatchArray>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  const watch = async (stream: ReadableStream<Uint8Array<ArrayBuffer>>, keep: boolean) => {
    let buffer = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      let newline;
      while ((newline = buffer.indexOf("\n")) !== -1) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        const match = line.match(options.ready);
        if (match) resolveReady(match);
        if (keep) {
          stderrTail.push(line);
          if (stderrTail.length > 40) stderrTail.shift();
        }
      }
    }
  };
  const drained = Promise.all([
    watch(process.stderr, true),
    options.readyOn === "stdout" ? watch(process.stdout, false) : Promise.resolve(),
  ]);
  const exited = process.status.then((status) => {
    rejectReady(
      new Error(`${name} exited (${status.code}) before it was ready:\n${stderrTail.join("\n")}`),
    );
    return status;
  });
  const timeout = setTimeout(() => rejectReady(new Error(`${name} not ready after 60 s`)), 60_000);
  let match: RegExpMatchArray;
  try {
    match = await readyPromise;
  } finally {
    clearTimeout(timeout);
  }
  let stopping: Promise<void> | undefined;
  const child: Child = {
    pid: process.pid,
    name,
    stderrTail,
    stop() {
      stopping ??= (async () => {
        await terminate(process);
        await exited;
        await drained.catch(() => {});
      })();
      return stopping;
    },
  };
  return { child, match };
}

/** Runs a command to completion and returns its stdout (throws on failure). */
export async function runCommand(
  command: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<string> {
  const out = await new Deno.Command(command, {
    args,
    cwd: options.cwd,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  if (!out.success) {
    throw new Error(
      `${command} ${args.slice(0, 2).join(" ")} failed (${out.code}): ${
        decoder.decode(out.stderr).slice(-2000)
      }`,
    );
  }
  return decoder.decode(out.stdout);
}

// ---------------------------------------------------------------------------------------------
// HTTP client for the Deno-side load (fresh path, storm, mixed load)
// ---------------------------------------------------------------------------------------------

/** One answered checkout request. */
export interface Answer {
  status: number;
  replayed: boolean;
  code: string | null;
  sessionId: string | null;
  body: string;
  ms: number;
  retryAfter: number | null;
}

/** POSTs a guest checkout and reads the whole answer. */
/**
 * The bench project's publishable key: guest-checkout's caller check (the `apikey` header every
 * bench request carries, as a storefront's supabase-js sends it).
 */
export const BENCH_PUBLISHABLE_KEY = "sb_publishable_bench_local_only_0000";

export async function postCheckout(
  url: string,
  options: { key: string; body: string; forwardedFor?: string; authorization?: string },
): Promise<Answer> {
  const headers: Record<string, string> = {
    "content-type": "application/json",
    apikey: BENCH_PUBLISHABLE_KEY,
    "idempotency-key": options.key,
  };
  if (options.forwardedFor) headers["x-forwarded-for"] = options.forwardedFor;
  if (options.authorization) headers.authorization = options.authorization;
  const started = performance.now();
  const response = await fetch(url, { method: "POST", headers, body: options.body });
  const body = await response.text();
  const ms = performance.now() - started;
  let parsed: { sessionId?: string; error?: { code?: string } } = {};
  try {
    parsed = JSON.parse(body);
  } catch {
    // not JSON: keep the raw body
  }
  const retryAfter = response.headers.get("retry-after");
  return {
    status: response.status,
    replayed: response.headers.get("idempotent-replayed") === "true",
    code: parsed.error?.code ?? null,
    sessionId: parsed.sessionId ?? null,
    body,
    ms,
    retryAfter: retryAfter === null ? null : Number(retryAfter),
  };
}

/** Busy CPU time (ms) of the whole machine so far, all cores (from /proc/stat). */
export async function machineBusyMs(): Promise<number> {
  const line = (await Deno.readTextFile("/proc/stat")).split("\n")[0] ?? "";
  const [, user, nice, system, _idle, _iowait, irq, softirq, steal] = line.trim().split(/\s+/)
    .map(Number);
  const busy = (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) +
    (steal ?? 0);
  return (busy * 1000) / await clockTicksPerSecond();
}

/**
 * Waits (up to `maxSeconds`) until the machine is quiet: less than `threshold` of all cores busy
 * over one second. Returns the busy share last seen.
 */
export async function waitForQuiet(threshold: number, maxSeconds: number): Promise<number> {
  const cores = navigator.hardwareConcurrency;
  const deadline = performance.now() + maxSeconds * 1000;
  let share = 1;
  while (true) {
    const before = await machineBusyMs();
    await sleep(1000);
    share = ((await machineBusyMs()) - before) / (1000 * cores);
    if (share < threshold || performance.now() > deadline) return share;
    progress(`machine busy (${Math.round(share * 100)}% of ${cores} cores): waiting for quiet`);
  }
}

/** CPU used by processes outside the bench while a meter ran, in cores (1 = one full core). */
export interface Disturbance {
  otherCores: number;
  seconds: number;
}

/**
 * Measures how much CPU the rest of the machine used meanwhile: all busy time minus that of
 * `pids` (the bench's processes), this process, the Postgres cluster and `extraMs()` (e.g. a
 * load generator that reports its own CPU).
 */
export async function startMeter(
  pids: number[],
  postmasterPid: number,
): Promise<{ stop(extraMs?: number): Promise<Disturbance> }> {
  const own = async () => {
    let total = await clusterCpuMs(postmasterPid) + await processCpuMs(Deno.pid);
    for (const pid of pids) total += await processCpuMs(pid);
    return total;
  };
  const ownBefore = await own();
  const machineBefore = await machineBusyMs();
  const started = performance.now();
  return {
    async stop(extraMs = 0) {
      const machine = (await machineBusyMs()) - machineBefore;
      const ours = (await own()) - ownBefore + extraMs;
      const wall = performance.now() - started;
      return { otherCores: Math.max(0, (machine - ours) / wall), seconds: wall / 1000 };
    },
  };
}

/** Above this share of a core used by other processes, a measurement is taken again. */
export const DISTURBED_CORES = 0.2;
