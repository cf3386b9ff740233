/**
 * Injected faults: one-shot failures a test pushes onto `server.faults`, each taken by the next
 * API request it matches (latency, an answered status, a dropped connection, a late answer).
 *
 * Connection faults need a real dropped TCP connection: a response whose body stream errors would
 * still send a status line first, which changes the SDK's retry decision. So clients connect to a
 * small TCP relay that forwards to the HTTP server and can cut a client's connection mid-request.
 */
import type { FormObject } from "./form.ts";
import { HOST } from "./helpers.ts";
import type { Outcome } from "./outcome.ts";

/** What a fault filter sees of an API request. */
export interface FaultTarget {
  method: string;
  path: string;
  idempotencyKey: string | null;
  params: FormObject;
}

/** Restricts a fault to some requests; all given conditions must hold. */
export interface FaultFilter {
  method?: string;
  path?: string | RegExp;
  match?: (target: FaultTarget) => boolean;
}

/** A one-shot fault, applied to the next API request it matches. */
export type Fault =
  & FaultFilter
  & (
    /** Delay the endpoint's execution (the idempotency key is held meanwhile). */
    | { kind: "latency"; ms: number }
    /**
     * Answer with this status instead of executing. With `storeUnderKey` the answer is saved
     * under the request's idempotency key, like a 500 raised after execution began.
     */
    | {
      kind: "status";
      status: number;
      body?: unknown;
      headers?: Record<string, string>;
      storeUnderKey?: boolean;
    }
    /** Drop the connection before the request is handled. */
    | { kind: "reset_before" }
    /** Handle the request (saving its idempotent result), then drop the connection. */
    | { kind: "reset_after" }
    /** Handle the request (saving its idempotent result), then wait `ms` before answering. */
    | { kind: "timeout"; ms: number }
  );

/** Removes and returns the first pending fault that matches `target`, or null. */
export function takeFault(faults: Fault[], target: FaultTarget): Fault | null {
  const index = faults.findIndex((fault) => faultMatches(fault, target));
  if (index === -1) return null;
  const [fault] = faults.splice(index, 1);
  return fault ?? null;
}

function faultMatches(fault: FaultFilter, target: FaultTarget): boolean {
  if (fault.method && fault.method.toUpperCase() !== target.method) return false;
  if (typeof fault.path === "string" && fault.path !== target.path) return false;
  if (fault.path instanceof RegExp && !fault.path.test(target.path)) return false;
  return fault.match ? fault.match(target) : true;
}

/** The answer a status fault stands for (Stripe's body for a 429, an api_error otherwise). */
export function faultOutcome(
  fault: Extract<Fault, { kind: "status" }>,
  storable: boolean,
): Outcome {
  return {
    status: fault.status,
    body: fault.body ?? defaultFaultBody(fault.status),
    storable,
    headers: fault.headers,
  };
}

function defaultFaultBody(status: number): unknown {
  if (status === 429) {
    return {
      error: {
        type: "invalid_request_error",
        code: "rate_limit",
        message: "Too many requests hit the API too quickly.",
      },
    };
  }
  return { error: { type: "api_error", message: "An unknown error occurred (injected fault)." } };
}

// ---------------------------------------------------------------------------------------------
// TCP relay (so faults can drop a client's connection)
// ---------------------------------------------------------------------------------------------

/** The relayed client connections, by the local port of their upstream socket. */
export interface Relays {
  byPort: Map<number, Relay>;
  tasks: Set<Promise<void>>;
  /** Aborted when the server closes: a connection accepted after that is closed at once. */
  closed: AbortSignal;
}

/** No relayed connections yet. */
export function createRelays(closed: AbortSignal): Relays {
  return { byPort: new Map(), tasks: new Set(), closed };
}

interface Relay {
  client: Deno.Conn;
  upstream: Deno.Conn;
  /** Aborted when the relay closes (the client hung up, or a fault dropped it). */
  gone: AbortController;
}

/** Relays each client of `listener` to the HTTP server on `upstreamPort`, until it closes. */
export async function acceptClients(
  relays: Relays,
  { listener, upstreamPort }: { listener: Deno.Listener; upstreamPort: number },
): Promise<void> {
  const { tasks } = relays;
  try {
    for await (const client of listener) {
      const task = relayConnection(relays, client, upstreamPort);
      tasks.add(task);
      task.finally(() => tasks.delete(task));
    }
  } catch {
    // The listener was closed: the server is shutting down.
  }
}

async function relayConnection(
  relays: Relays,
  client: Deno.Conn,
  upstreamPort: number,
): Promise<void> {
  let upstream: Deno.Conn;
  try {
    upstream = await Deno.connect({ hostname: HOST, port: upstreamPort });
  } catch {
    client.close();
    return;
  }
  const relay: Relay = { client, upstream, gone: new AbortController() };
  if (relays.closed.aborted) return closeRelay(relay);
  // The HTTP server sees the relay's upstream socket, so its local port names the connection.
  const port = (upstream.localAddr as Deno.NetAddr).port;
  relays.byPort.set(port, relay);
  await Promise.all([pump(relay, client, upstream), pump(relay, upstream, client)]);
  relays.byPort.delete(port);
}

async function pump(relay: Relay, from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const read = await from.read(buffer);
      if (read === null) break;
      let written = 0;
      while (written < read) written += await to.write(buffer.subarray(written, read));
    }
  } catch {
    // A closed or reset socket ends the relay, like the network would.
  }
  closeRelay(relay);
}

function closeRelay(relay: Relay): void {
  if (relay.gone.signal.aborted) return;
  relay.gone.abort();
  for (const conn of [relay.client, relay.upstream]) {
    try {
      conn.close();
    } catch {
      // Already closed.
    }
  }
}

function relayOf(relays: Relays, info: Deno.ServeHandlerInfo): Relay | undefined {
  const address = info.remoteAddr;
  return address.transport === "tcp" ? relays.byPort.get(address.port) : undefined;
}

/** Aborted once the client of this request has gone (undefined if it did not come relayed). */
export function clientGone(relays: Relays, info: Deno.ServeHandlerInfo): AbortSignal | undefined {
  return relayOf(relays, info)?.gone.signal;
}

/** Closes every relayed connection and waits for the relays to end. */
export async function closeRelays(relays: Relays): Promise<void> {
  for (const relay of relays.byPort.values()) closeRelay(relay);
  await Promise.all([...relays.tasks]);
}

/**
 * Drops the client's connection. Both sides are closed before any response byte is written, so
 * the client sees the connection closed.
 */
export function dropConnection(relays: Relays, info: Deno.ServeHandlerInfo): Response {
  const relay = relayOf(relays, info);
  if (relay) closeRelay(relay);
  // Nobody reads this; the socket is gone.
  return new Response(null, { status: 503 });
}
