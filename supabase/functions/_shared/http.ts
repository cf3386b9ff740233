import { canonicalJson } from "./checkout-utils.ts";

/**
 * HTTP plumbing shared by the functions: errors with stable codes, JSON responses, CORS, and
 * body limits. Every error leaves as `{ "error": { "code", "message", "details"? } }`.
 */

/** An error that becomes an HTTP response; `code` is stable and machine-readable. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HttpError";
  }
}

/** Largest accepted request body. */
export const MAX_BODY_BYTES = 16 * 1024;

/** CORS policy: the origins allowed to call, and what a browser may send and read. */
export interface Cors {
  allowedOrigins: ReadonlySet<string>;
}

const ALLOWED_HEADERS = "authorization, x-client-info, apikey, content-type, idempotency-key";
const EXPOSED_HEADERS = "Idempotent-Replayed, Retry-After";

/** CORS headers for a request: the origin is echoed only when it is allowed. */
export function corsHeaders(cors: Cors, request: Request): Record<string, string> {
  const origin = request.headers.get("origin");
  const headers: Record<string, string> = {
    "access-control-allow-methods": "POST, OPTIONS",
    "access-control-allow-headers": ALLOWED_HEADERS,
    "access-control-expose-headers": EXPOSED_HEADERS,
    "access-control-max-age": "600",
    "vary": "Origin",
  };
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

/** The documented error shape for an HttpError. */
export function errorResponse(error: HttpError, headers: Record<string, string> = {}): Response {
  const body: { code: string; message: string; details?: unknown } = {
    code: error.code,
    message: error.message,
  };
  if (error.details !== undefined) body.details = error.details;
  return json(error.status, { error: body }, { ...headers, ...error.headers });
}

/** Reads a JSON body: content type, size limit (streamed, so a huge body is never buffered), parse. */
export async function readJsonBody(request: Request, maxBytes = MAX_BODY_BYTES): Promise<unknown> {
  const type = request.headers.get("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type.trim())) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      "Cannot read request: Content-Type must be application/json",
    );
  }
  const bytes = await readLimitedBytes(request, maxBytes);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new HttpError(400, "invalid_json", "Cannot read request: the body is not valid UTF-8");
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, "invalid_json", "Cannot read request: the body is not valid JSON");
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
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw tooLarge(maxBytes);
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
  return new HttpError(
    413,
    "payload_too_large",
    `Cannot read request: the body exceeds ${maxBytes} bytes`,
  );
}
