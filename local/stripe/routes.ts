/**
 * The route table's pieces: an endpoint (method, path pattern, handler bound to its module's
 * state), what it is called with, and the lookup that answers an unknown path with a 404 and a
 * wrong method with a 405, as Stripe does. sessions.ts and refunds.ts each supply their routes.
 */
import type { FormObject } from "./form.ts";
import { errorOutcome, type Outcome } from "./outcome.ts";

/** One API call as a route sees it: decoded parameters, the path's ids, and the request. */
export interface ApiCall {
  params: FormObject;
  pathArgs: string[];
  /** The request's id and `Idempotency-Key`, for the `request` of the events it causes. */
  request: { id: string; idempotencyKey: string | null };
}

/** An endpoint: method, path pattern and handler. */
export interface Route {
  method: "GET" | "POST";
  pattern: RegExp;
  handle: (call: ApiCall) => Outcome;
}

/** A path segment decoded, or as it is when it is not valid percent-encoding. */
export function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** The route for a request, with its path arguments, or the 404 or 405 Stripe answers. */
export function findRoute(
  routes: readonly Route[],
  request: { method: string; path: string },
): { route: Route; args: string[] } | Outcome {
  const { method, path } = request;
  const candidates = routes.flatMap((route) => {
    const match = route.pattern.exec(path);
    return match ? [{ route, args: match.slice(1).map(decodePathSegment) }] : [];
  });
  const hit = candidates.find((candidate) => candidate.route.method === method);
  if (hit) return hit;
  if (candidates.length > 0) {
    const allowed = candidates.map((candidate) => candidate.route.method).join(", ");
    return {
      ...errorOutcome(405, {
        type: "invalid_request_error",
        message: `Unrecognized request URL (${method}: ${path}). This path accepts ${allowed}.`,
      }),
      headers: { allow: allowed },
    };
  }
  return errorOutcome(404, {
    type: "invalid_request_error",
    message: `Unrecognized request URL (${method}: ${path}).`,
  });
}
