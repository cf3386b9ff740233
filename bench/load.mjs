// bench/load.mjs — one closed-loop load point with autocannon (run by Node, in its own process).
//
// Usage: node bench/load.mjs '<json options>'
//   { url, connections, seconds, method, headers, body, variants? }
// With `variants` ([{ headers, body }]), requests cycle through them (a shared round robin).
// Prints one JSON line: requests, seconds, statuses, errors, latency percentiles (ms) and the
// load generator's own CPU time. Latencies are taken from every response (autocannon's own
// histogram keeps whole milliseconds, too coarse for sub-millisecond servers).
import autocannon from "autocannon";

const options = JSON.parse(process.argv[2] ?? "{}");
const latencies = [];
const statuses = {};
const cpuBefore = process.cpuUsage();
const started = process.hrtime.bigint();

let next = 0;
const variants = options.variants ?? [];
const requests = variants.length === 0 ? undefined : [{
  setupRequest: (request) => {
    const variant = variants[next++ % variants.length];
    return { ...request, headers: { ...request.headers, ...variant.headers }, body: variant.body };
  },
}];

const instance = autocannon({
  url: options.url,
  connections: options.connections,
  duration: options.seconds,
  method: options.method ?? "POST",
  headers: options.headers ?? {},
  body: options.body,
  ...(requests ? { requests } : {}),
  pipelining: 1,
  timeout: 30,
}, (error, result) => {
  if (error) {
    console.error(error);
    process.exit(1);
  }
  const wallNs = Number(process.hrtime.bigint() - started);
  const cpu = process.cpuUsage(cpuBefore);
  process.stdout.write(
    JSON.stringify({
      requests: latencies.length,
      seconds: result.duration,
      wallSeconds: wallNs / 1e9,
      statuses,
      errors: result.errors,
      timeouts: result.timeouts,
      latenciesMs: latencies.map((ms) => Math.round(ms * 1000) / 1000),
      cpuMs: (cpu.user + cpu.system) / 1000,
      // Since the process started: start-up and module loading included.
      cpuTotalMs: (process.cpuUsage().user + process.cpuUsage().system) / 1000,
    }) + "\n",
  );
});

instance.on("response", (_client, statusCode, _bytes, responseTime) => {
  latencies.push(responseTime);
  statuses[statusCode] = (statuses[statusCode] ?? 0) + 1;
});
