/**
 * Stripe's list endpoints (docs.stripe.com/api/pagination): the answer `{ object: "list", data,
 * has_more, url }` with the newest objects first; `limit` 1 to 100 (default 10); `starting_after`
 * (an object id: the page of older objects after it) or `ending_before` (the page of newer
 * objects just before it, still newest first), never both; a cursor naming no object is a 400
 * `resource_missing` on its param. `has_more` says whether objects lie beyond the page in the
 * direction of travel, which is what the SDK's auto-pagination follows (it turns pages with the
 * last id, or with the first under `ending_before`).
 */
import type { FormObject } from "./form.ts";
import { ParamError, readInteger, readString } from "./params.ts";

/** A list answer as the API returns it. */
export interface ListObject<T> {
  object: "list";
  data: T[];
  has_more: boolean;
  url: string;
}

/** The pagination parameters every list endpoint takes. */
export const PAGINATION_PARAMS: readonly string[] = ["limit", "starting_after", "ending_before"];

/** The validated pagination of a list call. */
export interface Page {
  limit: number;
  cursor: { param: "starting_after" | "ending_before"; id: string } | null;
}

/** Reads `limit`, `starting_after` and `ending_before` as Stripe does; throws `ParamError`. */
export function parsePage(params: FormObject): Page {
  const limit = readInteger(params.limit, "limit") ?? 10;
  if (limit < 1 || limit > 100) {
    throw new ParamError(
      `Invalid limit: must be between 1 and 100; you passed ${limit}.`,
      "limit",
      "parameter_invalid_integer",
    );
  }
  const startingAfter = readString(params.starting_after, "starting_after") || undefined;
  const endingBefore = readString(params.ending_before, "ending_before") || undefined;
  if (startingAfter && endingBefore) {
    throw new ParamError(
      "You may only specify one of these parameters: ending_before, starting_after.",
      "starting_after",
      "parameters_exclusive",
    );
  }
  if (startingAfter) return { limit, cursor: { param: "starting_after", id: startingAfter } };
  if (endingBefore) return { limit, cursor: { param: "ending_before", id: endingBefore } };
  return { limit, cursor: null };
}

/**
 * One page of `ordered` (every object of the resource, newest first), keeping those that pass
 * `keep`. A cursor is placed by its position among all the objects, so it may name one that the
 * filters leave out; one that names no object at all is a `ParamError` (`noun` names the
 * resource in its message: "No such refund: 're_…'").
 */
export function listPage<T extends { id: string }>(
  ordered: readonly T[],
  options: { page: Page; keep: (item: T) => boolean; url: string; noun: string },
): ListObject<T> {
  const { page, keep, url, noun } = options;
  const { cursor, limit } = page;
  let index = -1;
  if (cursor) {
    index = ordered.findIndex((item) => item.id === cursor.id);
    if (index === -1) {
      throw new ParamError(`No such ${noun}: '${cursor.id}'`, cursor.param, "resource_missing");
    }
  }
  if (cursor?.param === "ending_before") {
    // The newer objects, nearest the cursor first; the page keeps the `limit` nearest.
    const newer = ordered.slice(0, index).filter(keep);
    return {
      object: "list",
      data: newer.slice(Math.max(0, newer.length - limit)),
      has_more: newer.length > limit,
      url,
    };
  }
  const older = ordered.slice(index + 1).filter(keep);
  return { object: "list", data: older.slice(0, limit), has_more: older.length > limit, url };
}
