/**
 * Idempotent requests as Stripe documents them (docs.stripe.com/api/idempotent_requests,
 * /error-low-level):
 * - The first result of a POST with an `Idempotency-Key` is saved (status and body, 500s too) per
 *   API key once the endpoint has started executing, and replayed for the same key and parameters.
 *   Validation failures and requests that conflict with one still executing are not saved.
 * - The same key with other parameters or another endpoint is a 400 `idempotency_error`; while the
 *   first request runs, another with its key is a 409 `idempotency_key_in_use`. Keys are up to 255
 *   characters and are forgotten after 24 hours.
 */
import type { FormObject, FormValue } from "./form.ts";
import { errorOutcome, type Outcome } from "./outcome.ts";

const DAY_MS = 24 * 60 * 60 * 1000;
const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

type Stored =
  | { state: "running"; fingerprint: string }
  | {
    state: "done";
    fingerprint: string;
    outcome: Outcome;
    requestId: string;
    savedAt: number;
  };

/** Saved results by API key and idempotency key. */
export interface IdempotencyStore {
  entries: Map<string, Stored>;
  /** Clock in milliseconds, for the 24-hour expiry. */
  now: () => number;
}

/** What one idempotent request is: whose key, which request, and its parameters' fingerprint. */
export interface IdempotencyScope {
  apiKey: string;
  key: string;
  requestId: string;
  fingerprint: string;
}

/** An empty store. */
export function createIdempotencyStore(now: () => number): IdempotencyStore {
  return { entries: new Map(), now };
}

/** The 400 for an `Idempotency-Key` header that is empty or too long, or null if it is fine. */
export function invalidKeyOutcome(key: string | null): Outcome | null {
  if (key === null || (key.length > 0 && key.length <= MAX_IDEMPOTENCY_KEY_LENGTH)) return null;
  return errorOutcome(400, {
    type: "invalid_request_error",
    message: `Invalid Idempotency-Key: keys must be 1 to ${MAX_IDEMPOTENCY_KEY_LENGTH} ` +
      `characters long (got ${key.length}).`,
  });
}

/** Runs `execute` under an idempotency key, replaying or refusing as Stripe documents. */
export async function runIdempotent(
  store: IdempotencyStore,
  scope: IdempotencyScope,
  execute: () => Promise<Outcome>,
): Promise<Outcome> {
  const storeKey = `${scope.apiKey}\u0000${scope.key}`;
  const stored = liveEntry(store, storeKey);
  if (stored?.state === "running") return keyInUse(scope.key);
  if (stored?.state === "done") {
    if (stored.fingerprint !== scope.fingerprint) return keyMismatch(scope.key);
    return { ...stored.outcome, replayed: true, originalRequestId: stored.requestId };
  }
  // Held from here (synchronously, before any await) so a concurrent request sees it running.
  store.entries.set(storeKey, { state: "running", fingerprint: scope.fingerprint });
  let outcome: Outcome | undefined;
  try {
    outcome = await execute();
    return outcome;
  } finally {
    if (outcome?.storable) {
      store.entries.set(storeKey, {
        state: "done",
        fingerprint: scope.fingerprint,
        outcome,
        requestId: scope.requestId,
        savedAt: store.now(),
      });
    } else {
      store.entries.delete(storeKey);
    }
  }
}

// Stripe may prune keys once they are 24 hours old; a pruned key starts a new request.
function liveEntry(store: IdempotencyStore, storeKey: string): Stored | undefined {
  const entry = store.entries.get(storeKey);
  if (entry?.state === "done" && store.now() - entry.savedAt >= DAY_MS) {
    store.entries.delete(storeKey);
    return undefined;
  }
  return entry;
}

function keyInUse(key: string): Outcome {
  // Docs: 409 Conflict, "the request conflicts with another request (perhaps due to using the
  // same idempotent key)"; code idempotency_key_in_use. The `idempotency_error` type is
  // documented for parameter mismatches only, so this one is an invalid_request_error.
  return errorOutcome(409, {
    type: "invalid_request_error",
    code: "idempotency_key_in_use",
    message: `There is currently another in-progress request using this idempotency key ` +
      `('${key}'). Please try again later.`,
  });
}

function keyMismatch(key: string): Outcome {
  return errorOutcome(400, {
    type: "idempotency_error",
    message: `Keys for idempotent requests can only be used with the same parameters they were ` +
      `first used with. Try using a key other than '${key}' if you meant to execute a ` +
      `different request.`,
  });
}

/** Parameters compared decoded (key order does not matter), together with the endpoint. */
export function fingerprint(method: string, path: string, params: FormObject): string {
  return `${method} ${path} ${canonicalJson(params)}`;
}

function canonicalJson(value: FormValue): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key] ?? "")}`)}}`;
}
