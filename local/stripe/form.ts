/**
 * Stripe's form encoding: `application/x-www-form-urlencoded` pairs whose bracketed names
 * (`line_items[0][price_data][currency]=usd`, `expand[]=line_items`) stand for nested objects
 * and arrays, as the `stripe` SDK writes them.
 */

/** A decoded form value: Stripe's bracket encoding yields nested objects and arrays. */
export type FormValue = string | FormValue[] | FormObject;
/** A decoded form object. */
export interface FormObject {
  [key: string]: FormValue;
}

/** Thrown when a form body cannot be decoded into one consistent structure. */
export class FormDecodeError extends Error {}

interface Branch {
  list: boolean;
  children: Map<string, Node>;
}
type Node = string | Branch;

/** Decodes `a[b][0][c]=x` pairs into nested objects and arrays (array indices are compacted). */
export function decodeStripeForm(text: string): FormObject {
  const root: Branch = { list: false, children: new Map() };
  for (const [key, value] of new URLSearchParams(text)) {
    const path = parseKeyPath(key);
    if (!path) throw new FormDecodeError(`Invalid parameter name: ${key}`);
    assignPath(root, path, value, key);
  }
  return finishBranch(root) as FormObject;
}

function parseKeyPath(key: string): string[] | null {
  const open = key.indexOf("[");
  if (open === -1) return key === "" ? null : [key];
  const segments = [key.slice(0, open)];
  const segment = /\[([^[\]]*)\]/y;
  let position = open;
  while (position < key.length) {
    segment.lastIndex = position;
    const match = segment.exec(key);
    if (!match) return null;
    segments.push(match[1] ?? "");
    position = segment.lastIndex;
  }
  return segments[0] === "" ? null : segments;
}

function assignPath(root: Branch, path: string[], value: string, key: string): void {
  let branch = root;
  for (const [index, rawSegment] of path.entries()) {
    const last = index === path.length - 1;
    const segment = claimSegment(branch, rawSegment, last, key);
    const existing = branch.children.get(segment);
    if (last) {
      if (existing !== undefined) throw new FormDecodeError(`Duplicate parameter: ${key}`);
      branch.children.set(segment, value);
      return;
    }
    const nextIsIndex = /^\d*$/.test(path[index + 1] ?? "");
    if (existing === undefined) {
      const child: Branch = { list: nextIsIndex, children: new Map() };
      branch.children.set(segment, child);
      branch = child;
    } else if (typeof existing === "string" || existing.list !== nextIsIndex) {
      throw new FormDecodeError(`Conflicting parameter: ${key}`);
    } else {
      branch = existing;
    }
  }
}

// In a list `[]` appends (only last, as in `expand[]=x`); any other key must be an index.
function claimSegment(branch: Branch, segment: string, last: boolean, key: string): string {
  if (!branch.list) return segment;
  if (segment === "" && last) return `append:${branch.children.size}`;
  if (/^\d+$/.test(segment)) return segment;
  throw new FormDecodeError(`Invalid array index in parameter: ${key}`);
}

function finishBranch(branch: Branch): FormValue {
  if (branch.list) {
    return [...branch.children.entries()]
      .sort(([a], [b]) => listOrder(a) - listOrder(b))
      .map(([, child]) => finishNode(child));
  }
  const result: FormObject = {};
  for (const [key, child] of branch.children) {
    setOwn(result, key, finishNode(child));
  }
  return result;
}

/**
 * Sets `target[key]` with defineProperty, so a key such as "__proto__" is stored as data rather
 * than as a prototype.
 */
export function setOwn<T>(target: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(target, key, {
    value,
    enumerable: true,
    writable: true,
    configurable: true,
  });
}

function listOrder(key: string): number {
  return key.startsWith("append:")
    ? Number.MAX_SAFE_INTEGER / 2 + Number(key.slice(7))
    : Number(key);
}

function finishNode(node: Node): FormValue {
  return typeof node === "string" ? node : finishBranch(node);
}
