/**
 * Several function instances in separate processes (scripts/functions-host.ts, each index.ts
 * loaded unchanged) behind one round-robin front, as a platform runs many isolates of one
 * function: the pooler test and the bench's on-sale through PgBouncer use it.
 */
import { type FunctionsEnvironment, type HostProcess, spawnFunctionsHost } from "./local-stack.ts";

/** Running instances and their front. */
export interface Instances {
  /** The front, e.g. http://127.0.0.1:PORT (functions under /functions/v1/<name>). */
  url: string;
  /** Requests each instance logged (one JSON line per request). */
  served: number[];
  /** The instances' processes. */
  pids: number[];
  close(): Promise<void>;
}

/**
 * Starts `count` functions hosts with `env` (PORT is set to 0 for each) and a front on a free
 * port of 127.0.0.1 that hands each request to the next instance in turn.
 */
export async function startInstances(
  count: number,
  env: FunctionsEnvironment,
): Promise<Instances> {
  const hosts: HostProcess[] = [];
  const served = Array.from({ length: count }, () => 0);
  let front: Deno.HttpServer | null = null;
  const close = async () => {
    await front?.shutdown();
    await Promise.all(hosts.map((host) => host.stop()));
  };
  try {
    for (let i = 0; i < count; i++) {
      const host = await spawnFunctionsHost({ ...env, PORT: "0" }, (line) => {
        if (line.startsWith("{")) served[i]! += 1;
      });
      hosts.push(host);
      if (host.failed.length) throw new Error(`instance ${i}: ${host.failed.join("; ")}`);
    }
    let next = 0;
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      async (request) => {
        const host = hosts[next++ % hosts.length]!;
        const url = new URL(request.url);
        const headers = new Headers(request.headers);
        headers.delete("host");
        const answer = await fetch(`${host.url}${url.pathname}${url.search}`, {
          method: request.method,
          headers,
          body: request.method === "GET" || request.method === "HEAD"
            ? undefined
            : await request.arrayBuffer(),
        });
        return new Response(answer.body, { status: answer.status, headers: answer.headers });
      },
    );
    front = server;
    return {
      url: `http://127.0.0.1:${server.addr.port}`,
      served,
      pids: hosts.map((host) => host.pid),
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
