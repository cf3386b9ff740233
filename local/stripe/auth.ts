/**
 * API key authentication as Stripe does it: the secret key as a Bearer token, or as the user name
 * of HTTP Basic (`curl -u sk_test_…:`); a missing or wrong key is a 401 `invalid_request_error`.
 */
import { errorOutcome, type Outcome } from "./outcome.ts";

/** The API key a request carries, or null. */
export function apiKeyOf(request: Request): string | null {
  const header = request.headers.get("authorization") ?? "";
  const bearer = /^Bearer\s+(\S+)$/i.exec(header);
  if (bearer) return bearer[1] ?? null;
  // Stripe also takes HTTP Basic with the key as user name (curl -u sk_test_...:).
  const basic = /^Basic\s+(\S+)$/i.exec(header);
  if (!basic) return null;
  try {
    return atob(basic[1] ?? "").split(":")[0] || null;
  } catch {
    return null;
  }
}

/**
 * The 401 for a missing or wrong key, or null when it is accepted: `secretKey` exactly, or any key
 * starting with `sk_test_` when none is set.
 */
export function authError(apiKey: string | null, secretKey: string | undefined): Outcome | null {
  if (apiKey === null) {
    return errorOutcome(401, {
      type: "invalid_request_error",
      message: "You did not provide an API key. Provide it in the Authorization header " +
        "(Authorization: Bearer YOUR_SECRET_KEY).",
    });
  }
  const valid = secretKey === undefined ? apiKey.startsWith("sk_test_") : apiKey === secretKey;
  if (valid) return null;
  return errorOutcome(401, {
    type: "invalid_request_error",
    message: `Invalid API Key provided: ${redactKey(apiKey)}`,
  });
}

function redactKey(key: string): string {
  return key.length <= 12
    ? key
    : `${key.slice(0, 8)}${"*".repeat(key.length - 12)}${key.slice(-4)}`;
}
