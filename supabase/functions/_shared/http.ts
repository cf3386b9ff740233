import { canonicalJson } from "./checkout-utils.ts";
import { apiError, HttpError } from "./errors.ts";

/**
 * HTTP plumbing shared by the functions: one request envelope (preflight, method, one log
 * line, timing, CORS, error rendering), JSON responses, and body limits. Every error leaves as
 * `{ "error": { "code", "message", "details"? } }`.
 */

/** One structured log line per request. */
export type RequestLog = (line: Record<string, unknown>) => void;

/** Writes a log line to stdout as JSON (what the Supabase log explorer reads). */
export const consoleLog: RequestLog = (line) => console.log(JSON.stringify(line));

/**
 * What a handler may tell the request's log line, and where it times its Stripe and database
 * steps. Never an email, a token or a secret.
 */
export class RequestContext {
  readonly fields: Record<string, unknown> = { outcome: "error" };
  stripeMs = 0;
  dbMs = 0;

  /** Adds fields to the log line. */
  note(fields: Record<string, unknown>): void {
    Object.assign(this.fields, fields);
  }

  /** Runs a Stripe call, counting its time. */
  stripe<T>(call: () => Promise<T>): Promise<T> {
    return this.#timed(call, (ms) => this.stripeMs += ms);
  }

  /** Runs a database step, counting its time. */
  db<T>(step: () => Promise<T>): Promise<T> {
    return this.#timed(step, (ms) => this.dbMs += ms);
  }

  async #timed<T>(step: () => Promise<T>, add: (ms: number) => void): Promise<T> {
    const started = performance.now();
    try {
      return await step();
    } finally {
      add(performance.now() - started);
    }
  }
}

/** How an endpoint is served. */
export interface EnvelopeOptions {
  /** The function's name, for the log line. */
  fn: string;
  /** What the endpoint does, for error messages: "Cannot <action>: …". */
  action: string;
  /** Browser callers: CORS headers on every answer, and the OPTIONS preflight. */
  cors?: Cors;
  log?: RequestLog;
  /** The error for a failure that is not an HttpError (default: 503 temporarily_unavailable). */
  unexpected?: HttpError;
}

/**
 * Serves `handle` inside the one envelope: OPTIONS (with CORS) answers the preflight, any method
 * but POST is 405, an HttpError is rendered in the documented shape, anything else is logged by
 * name (and SQLSTATE) only, never its message, and answered `unexpected`.
 */
export function envelope(
  options: EnvelopeOptions,
  handle: (request: Request, context: RequestContext) => Promise<Response>,
): (request: Request) => Promise<Response> {
  const log = options.log ?? consoleLog;
  return async (request) => {
    const started = performance.now();
    const context = new RequestContext();
    let response: Response;
    try {
      response = await route(request, context, options, handle);
    } catch (error) {
      const httpError = error instanceof HttpError ? error : unexpected(error, context, options);
      context.note({ code: httpError.code });
      response = errorResponse(httpError, options.action);
    }
    if (options.cors) {
      for (const [name, value] of Object.entries(corsHeaders(options.cors, request))) {
        response.headers.set(name, value);
      }
    }
    log({
      fn: options.fn,
      ...context.fields,
      status: response.status,
      stripe_ms: round(context.stripeMs),
      db_ms: round(context.dbMs),
      ms: round(performance.now() - started),
    });
    return response;
  };
}

function route(
  request: Request,
  context: RequestContext,
  options: EnvelopeOptions,
  handle: (request: Request, context: RequestContext) => Promise<Response>,
): Promise<Response> {
  if (request.method === "OPTIONS" && options.cors) {
    context.note({ outcome: "preflight" });
    return Promise.resolve(new Response(null, { status: 204 }));
  }
  if (request.method !== "POST") {
    throw apiError("method_not_allowed", {
      reason: `use POST, not ${request.method}`,
      headers: { allow: options.cors ? "POST, OPTIONS" : "POST" },
    });
  }
  return handle(request, context);
}

function unexpected(error: unknown, context: RequestContext, options: EnvelopeOptions): HttpError {
  // Name and SQLSTATE only: messages can carry connection strings or parameters.
  context.note({ error: error instanceof Error ? error.name : typeof error });
  const state = (error as { code?: unknown })?.code;
  if (typeof state === "string" && /^[0-9A-Z]{5}$/.test(state)) context.note({ sqlstate: state });
  return options.unexpected ?? apiError("temporarily_unavailable");
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/** Largest accepted request body. */
export const MAX_BODY_BYTES = 16 * 1024;

/** CORS policy: the origins allowed to call, and what a browser may send and read. */
export interface Cors {
  allowedOrigins: ReadonlySet<string>;
}

const ALLOWED_HEADERS = "authorization, x-client-info, apikey, content-type, idempotency-key";
const EXPOSED_HEADERS = "Idempotent-Replayed, Retry-After";

/**
 * CORS headers for a request: the origin is echoed only when it is allowed. What a browser may
 * send (methods, headers, how long to remember it) is read from the preflight's answer only
 * (Fetch standard, CORS-preflight fetch), so only the OPTIONS answer carries it.
 */
export function corsHeaders(cors: Cors, request: Request): Record<string, string> {
  const origin = request.headers.get("origin");
  const headers: Record<string, string> = {
    "access-control-expose-headers": EXPOSED_HEADERS,
    "vary": "Origin",
  };
  if (request.method === "OPTIONS") {
    headers["access-control-allow-methods"] = "POST, OPTIONS";
    headers["access-control-allow-headers"] = ALLOWED_HEADERS;
    headers["access-control-max-age"] = "600";
  }
  if (origin && cors.allowedOrigins.has(origin)) headers["access-control-allow-origin"] = origin;
  return headers;
}

/** A JSON response. */
export function json(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

/**
 * A JSON response whose bytes depend only on the value: keys sorted at every depth. A stored
 * response comes back from jsonb with its keys reordered, so the first answer and every replay
 * are both written this way to be byte-identical.
 */
export function canonicalJsonResponse(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(canonicalJson(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

/** The documented error shape for an HttpError, its message phrased for `action`. */
export function errorResponse(error: HttpError, action: string): Response {
  const body: { code: string; message: string; details?: unknown } = {
    code: error.code,
    message: `Cannot ${action}: ${error.message}`,
  };
  if (error.details !== undefined) body.details = error.details;
  return json(error.status, { error: body }, error.headers);
}

/** One fatal UTF-8 decoder: a decode() without `stream` starts from a fresh state on every call. */
const UTF8_FATAL = new TextDecoder("utf-8", { fatal: true });

/** Reads a JSON body: content type, size limit (streamed, so a huge body is never buffered), parse. */
export async function readJsonBody(request: Request, maxBytes = MAX_BODY_BYTES): Promise<unknown> {
  const type = request.headers.get("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type.trim())) {
    throw apiError("unsupported_media_type");
  }
  const bytes = await readLimitedBytes(request, maxBytes);
  let text: string;
  try {
    text = UTF8_FATAL.decode(bytes);
  } catch {
    throw apiError("invalid_json", { reason: "the body is not valid UTF-8" });
  }
  try {
    return JSON.parse(text);
  } catch {
    throw apiError("invalid_json");
  }
}

/**
 * Reads a body as text exactly as `Request.text()` does (UTF-8, invalid bytes replaced), but at
 * most `maxBytes`: a declared Content-Length over it is refused before reading, and the stream
 * is counted and cancelled once it passes the limit. 413 `payload_too_large` either way.
 */
export async function readRawText(request: Request, maxBytes: number): Promise<string> {
  return new TextDecoder().decode(await readLimitedBytes(request, maxBytes));
}

async function readLimitedBytes(request: Request, maxBytes: number): Promise<Uint8Array> {
  const length = request.headers.get("content-length");
  const declared = Number(length ?? "0");
  if (declared > maxBytes) throw tooLarge(maxBytes);
  if (length !== null && Number.isInteger(declared)) {
    // A declared length within the limit is all that HTTP framing delivers: read in one call.
    // request.body is not read first: its getter makes a ReadableStream that arrayBuffer() then
    // reads through, instead of Deno's direct path (about 12 µs a request). No body reads empty.
    const bytes = new Uint8Array(await request.arrayBuffer());
    if (bytes.byteLength > maxBytes) throw tooLarge(maxBytes);
    return bytes;
  }
  if (!request.body) return new Uint8Array();
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function tooLarge(maxBytes: number): HttpError {
  return apiError("payload_too_large", { reason: `the body exceeds ${maxBytes} bytes` });
}
