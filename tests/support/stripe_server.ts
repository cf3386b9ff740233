/**
 * A local stand-in for api.stripe.com, for tests and local runs.
 *
 * It serves the Checkout Session calls this project makes, with Stripe's documented semantics for
 * authentication, form-encoded parameters, idempotent requests and errors, so that code using the
 * official `stripe` SDK (pointed here with `host`/`port`/`protocol`) behaves as it would against
 * Stripe. Tests inspect what happened (`sessions`, `requests`) and inject faults (`faults`).
 *
 * Stripe behaviour encoded here (docs.stripe.com/api/idempotent_requests, /error-low-level,
 * /api/errors, /payments/checkout/managing-limited-inventory, and the SDK's pinned API spec):
 * - The first result of a POST with an `Idempotency-Key` is saved (status and body, 500s too) per
 *   API key once the endpoint has started executing, and replayed for the same key and parameters.
 *   Validation failures and requests that conflict with one still executing are not saved.
 * - The same key with other parameters or another endpoint is a 400 `idempotency_error`; while the
 *   first request runs, another with its key is a 409 `idempotency_key_in_use`. Keys are up to 255
 *   characters and are forgotten after 24 hours.
 * - `expires_at` must be 30 minutes to 24 hours after creation and defaults to 24 hours.
 *
 * Connection faults need a real dropped TCP connection: a response whose body stream errors would
 * still send a status line first, which changes the SDK's retry decision. So clients connect to a
 * small TCP relay that forwards to the HTTP server and can cut a client's connection mid-request.
 *
 * The session's `url` is a small hosted-checkout page with "Pay" and "Cancel" buttons. "Pay"
 * completes the session and redirects to `success_url`; "Cancel" returns to `cancel_url`. With
 * `createWebhookForwarder` as `onSessionChange`, completed and expired sessions are delivered as
 * signed events to a webhook endpoint, as `stripe listen --forward-to` does.
 *
 * Run it alone with: deno run --allow-net tests/support/stripe_server.ts --port 12111
 *   [--forward-to http://127.0.0.1:54321/functions/v1/stripe-webhook --webhook-secret whsec_...]
 */

const HOST = "127.0.0.1";
const MINUTE = 60;
const HOUR = 60 * MINUTE;
const DAY_MS = 24 * HOUR * 1000;
const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** Stripe event types a Checkout Session change corresponds to. */
export type CheckoutEventType = "checkout.session.completed" | "checkout.session.expired";

/** A Price the server knows, so line items may reference it by `price` id. */
export interface PriceFixture {
  currency: string;
  unitAmount: number;
  productName: string;
}

/** Options for `startStripeServer`. */
export interface StripeServerOptions {
  /** Port to listen on (default: a free one). */
  port?: number;
  /** Accept only this secret key (default: any key starting with `sk_test_`). */
  secretKey?: string;
  /** Clock in milliseconds, for `created`, `expires_at` checks and idempotency key expiry. */
  now?: () => number;
  /** Prices that line items may reference by id. */
  prices?: Record<string, PriceFixture>;
  /**
   * Called after a session completes or expires (for a webhook forwarder). A returned promise is
   * awaited (for at most 15 s) by the hosted page's "Pay" before it redirects to `success_url`.
   */
  onSessionChange?: (session: CheckoutSession, eventType: CheckoutEventType) => unknown;
}

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

/** One API request as the server saw it. */
export interface RequestRecord {
  requestId: string;
  method: string;
  path: string;
  idempotencyKey: string | null;
  stripeVersion: string | null;
  /** Status sent, or null if none was (still running, or the connection was dropped). */
  status: number | null;
  replayed: boolean;
  fault: Fault["kind"] | null;
}

/** A decoded form value: Stripe's bracket encoding yields nested objects and arrays. */
export type FormValue = string | FormValue[] | FormObject;
/** A decoded form object. */
export interface FormObject {
  [key: string]: FormValue;
}

/** Checkout Session modes. */
export type CheckoutMode = "payment" | "setup" | "subscription";
/** Checkout Session UI modes in the SDK's pinned API version. */
export type UiMode = "hosted_page" | "embedded_page" | "elements" | "form";

/** A Checkout Session object as the API returns it. */
export interface CheckoutSession {
  id: string;
  object: "checkout.session";
  mode: CheckoutMode;
  ui_mode: UiMode;
  status: "open" | "complete" | "expired";
  payment_status: "unpaid" | "paid" | "no_payment_required";
  url: string | null;
  client_secret: string | null;
  amount_subtotal: number | null;
  amount_total: number | null;
  currency: string | null;
  customer: string | null;
  customer_email: string | null;
  client_reference_id: string | null;
  metadata: Record<string, string>;
  created: number;
  expires_at: number;
  livemode: false;
  success_url: string | null;
  cancel_url: string | null;
  payment_intent: string | null;
  [field: string]: unknown;
}

/** A running server. */
export interface StripeServer extends AsyncDisposable {
  /** Base URL, e.g. `http://127.0.0.1:12111`. */
  readonly url: string;
  readonly port: number;
  /** Sessions by id. */
  readonly sessions: Map<string, CheckoutSession>;
  /** API requests in arrival order. */
  readonly requests: RequestRecord[];
  /** Pending faults; push to add. Each is removed when a request takes it. */
  readonly faults: Fault[];
  /** Sessions actually created (replays do not count). */
  sessionsCreated(): number;
  /** Marks an open session paid, as if the customer completed Checkout. */
  completeSession(id: string): CheckoutSession;
  /** Expires an open session, as Stripe does at `expires_at`. */
  expireSession(id: string): CheckoutSession;
  /** Expires every open session whose `expires_at` has passed; returns their ids. */
  sweepExpired(): string[];
  /** Forgets sessions, requests, faults and idempotency keys. */
  reset(): void;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Form decoding (Stripe's bracket encoding)
// ---------------------------------------------------------------------------------------------

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

// defineProperty, so a key such as "__proto__" is stored as data rather than as a prototype.
function setOwn<T>(target: Record<string, T>, key: string, value: T): void {
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

// ---------------------------------------------------------------------------------------------
// Errors and outcomes
// ---------------------------------------------------------------------------------------------

interface StripeErrorBody {
  type: "invalid_request_error" | "idempotency_error" | "api_error";
  message: string;
  code?: string;
  param?: string;
}

/** What an API call produced, before it is written out. */
interface Outcome {
  status: number;
  body: unknown;
  /** Whether the idempotency layer saves it (only once the endpoint began executing). */
  storable: boolean;
  replayed?: boolean;
  originalRequestId?: string;
  headers?: Record<string, string>;
}

/** A parameter problem found before execution: answered 400 and not saved under the key. */
class ParamError extends Error {
  constructor(message: string, readonly param?: string, readonly code?: string) {
    super(message);
  }
}

function errorOutcome(status: number, error: StripeErrorBody, storable = false): Outcome {
  return { status, body: { error }, storable };
}

function okOutcome(body: unknown): Outcome {
  return { status: 200, body, storable: true };
}

function paramErrorOutcome(error: ParamError): Outcome {
  return errorOutcome(400, {
    type: "invalid_request_error",
    message: error.message,
    ...(error.code ? { code: error.code } : {}),
    ...(error.param ? { param: error.param } : {}),
  });
}

function missingSession(id: string): Outcome {
  return errorOutcome(404, {
    type: "invalid_request_error",
    code: "resource_missing",
    param: "session",
    message: `No such checkout.session: '${id}'`,
  });
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
// Parameter readers
// ---------------------------------------------------------------------------------------------

function readString(value: FormValue | undefined, param: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw new ParamError(`Invalid string: ${param}`, param);
  return value;
}

function readInteger(value: FormValue | undefined, param: string): number | undefined {
  const text = readString(value, param);
  if (text === undefined) return undefined;
  if (!/^-?\d+$/.test(text)) {
    throw new ParamError(`Invalid integer: ${text}`, param, "parameter_invalid_integer");
  }
  return Number(text);
}

function readObject(value: FormValue | undefined, param: string): FormObject | undefined {
  if (value === undefined || value === "") return undefined;
  if (typeof value === "string" || Array.isArray(value)) {
    throw new ParamError(`Invalid object: ${param}`, param);
  }
  return value;
}

function readList(value: FormValue | undefined, param: string): FormValue[] | undefined {
  if (value === undefined || value === "") return undefined;
  if (!Array.isArray(value)) throw new ParamError(`Invalid array: ${param}`, param);
  return value;
}

function requireValue<T>(value: T | undefined, param: string): T {
  if (value === undefined || value === "") {
    throw new ParamError(`Missing required param: ${param}.`, param, "parameter_missing");
  }
  return value;
}

function rejectUnknown(params: FormObject, known: ReadonlySet<string>): void {
  for (const key of Object.keys(params)) {
    if (!known.has(key)) {
      throw new ParamError(`Received unknown parameter: ${key}`, key, "parameter_unknown");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Checkout Session creation: validation
// ---------------------------------------------------------------------------------------------

// Top-level parameters of SessionCreateParams in the SDK's pinned API version. Stripe rejects
// unknown ones; the ones not modelled here are accepted and ignored.
const CREATE_PARAMS = new Set(
  ("adaptive_pricing after_expiration allow_promotion_codes allowed_payment_method_types " +
    "automatic_tax billing_address_collection branding_settings cancel_url client_reference_id " +
    "consent_collection currency custom_fields custom_text customer customer_account " +
    "customer_creation customer_email customer_update discounts excluded_payment_method_types " +
    "expand expires_at integration_identifier invoice_creation line_items locale " +
    "managed_payments metadata mode name_collection optional_items origin_context " +
    "payment_intent_data payment_method_collection payment_method_configuration " +
    "payment_method_data payment_method_options permissions phone_number_collection " +
    "redirect_on_completion return_url saved_payment_method_options setup_intent_data " +
    "shipping_address_collection shipping_options submit_type subscription_data success_url " +
    "tax_id_collection ui_mode wallet_options").split(" "),
);
const MODES: readonly CheckoutMode[] = ["payment", "setup", "subscription"];
const UI_MODES: readonly UiMode[] = ["hosted_page", "embedded_page", "elements", "form"];
const MAX_LINE_ITEMS = 100;

interface ResolvedLineItem {
  id: string;
  priceId: string;
  productId: string;
  name: string;
  currency: string;
  unitAmount: number;
  quantity: number;
}

interface CreateInput {
  mode: CheckoutMode;
  uiMode: UiMode;
  lineItems: ResolvedLineItem[];
  currency: string | null;
  successUrl: string | null;
  cancelUrl: string | null;
  returnUrl: string | null;
  customer: string | null;
  customerEmail: string | null;
  clientReferenceId: string | null;
  metadata: Record<string, string>;
  expiresAt: number;
}

interface CreateContext {
  nowSeconds: number;
  prices: Record<string, PriceFixture>;
}

function parseCreateParams(params: FormObject, context: CreateContext): CreateInput {
  rejectUnknown(params, CREATE_PARAMS);
  const mode = parseEnum(requireValue(readString(params.mode, "mode"), "mode"), MODES, "mode");
  const uiMode = parseEnum(
    readString(params.ui_mode, "ui_mode") ?? "hosted_page",
    UI_MODES,
    "ui_mode",
  );
  const lineItems = parseLineItems(params.line_items, mode, context.prices);
  const currency = parseSessionCurrency(params.currency, lineItems);
  return {
    mode,
    uiMode,
    lineItems,
    currency,
    ...parseRedirectUrls(params, uiMode),
    ...parseCustomer(params),
    clientReferenceId: parseClientReferenceId(params.client_reference_id),
    metadata: parseMetadata(params.metadata, "metadata"),
    expiresAt: parseExpiresAt(params.expires_at, context.nowSeconds),
  };
}

function parseEnum<T extends string>(value: string, allowed: readonly T[], param: string): T {
  const found = allowed.find((candidate) => candidate === value);
  if (!found) {
    throw new ParamError(
      `Invalid ${param}: must be one of ${allowed.join(", ")}`,
      param,
      "parameter_invalid_enum",
    );
  }
  return found;
}

function parseLineItems(
  value: FormValue | undefined,
  mode: CheckoutMode,
  prices: Record<string, PriceFixture>,
): ResolvedLineItem[] {
  const items = readList(value, "line_items") ?? [];
  // Stripe requires line items in payment and subscription mode (docs: SessionCreateParams).
  if (mode !== "setup" && items.length === 0) {
    throw new ParamError(
      `Missing required param: line_items. Line items are required in ${mode} mode.`,
      "line_items",
      "parameter_missing",
    );
  }
  if (items.length > MAX_LINE_ITEMS) {
    throw new ParamError(`You can pass at most ${MAX_LINE_ITEMS} line_items.`, "line_items");
  }
  const resolved = items.map((item, index) => parseLineItem(item, `line_items[${index}]`, prices));
  const currencies = new Set(resolved.map((item) => item.currency));
  if (currencies.size > 1) {
    throw new ParamError(
      `All line_items must use the same currency; got ${[...currencies].join(", ")}.`,
      "line_items",
    );
  }
  return resolved;
}

function parseLineItem(
  value: FormValue,
  param: string,
  prices: Record<string, PriceFixture>,
): ResolvedLineItem {
  const item = requireValue(readObject(value, param), param);
  const quantity = requireValue(
    readInteger(item.quantity, `${param}[quantity]`),
    `${param}[quantity]`,
  );
  if (quantity < 1) {
    throw new ParamError(`Invalid quantity: must be at least 1`, `${param}[quantity]`);
  }
  const priceId = readString(item.price, `${param}[price]`);
  const priceData = readObject(item.price_data, `${param}[price_data]`);
  if (priceId !== undefined && priceData !== undefined) {
    throw new ParamError(
      `You may only specify one of these parameters: price, price_data.`,
      param,
      "parameters_exclusive",
    );
  }
  const price = priceId !== undefined
    ? lookupPrice(priceId, prices, `${param}[price]`)
    : parsePriceData(requireValue(priceData, `${param}[price]`), `${param}[price_data]`);
  return { id: randomId("li_", 24), quantity, ...price };
}

function lookupPrice(
  priceId: string,
  prices: Record<string, PriceFixture>,
  param: string,
): Omit<ResolvedLineItem, "id" | "quantity"> {
  const fixture = Object.hasOwn(prices, priceId) ? prices[priceId] : undefined;
  if (!fixture) {
    throw new ParamError(`No such price: '${priceId}'`, param, "resource_missing");
  }
  return {
    priceId,
    productId: `prod_${priceId.replace(/^price_/, "")}`,
    name: fixture.productName,
    currency: fixture.currency,
    unitAmount: fixture.unitAmount,
  };
}

function parsePriceData(
  data: FormObject,
  param: string,
): Omit<ResolvedLineItem, "id" | "quantity"> {
  const currency = parseCurrency(data.currency, `${param}[currency]`);
  if (data.unit_amount_decimal !== undefined) {
    throw new ParamError(
      "unit_amount_decimal is not supported by the local Stripe server; use unit_amount.",
      `${param}[unit_amount_decimal]`,
    );
  }
  const amountParam = `${param}[unit_amount]`;
  const unitAmount = requireValue(readInteger(data.unit_amount, amountParam), amountParam);
  if (unitAmount < 0) {
    throw new ParamError(`Invalid unit_amount: must be at least 0`, amountParam);
  }
  const product = readString(data.product, `${param}[product]`);
  const productData = readObject(data.product_data, `${param}[product_data]`);
  if (product !== undefined) {
    return {
      priceId: randomId("price_", 24),
      productId: product,
      name: product,
      currency,
      unitAmount,
    };
  }
  const productParam = `${param}[product_data]`;
  const nameParam = `${productParam}[name]`;
  const name = requireValue(
    readString(requireValue(productData, productParam).name, nameParam),
    nameParam,
  );
  if (name.trim() === "") {
    throw new ParamError(
      `Invalid name: must not be blank`,
      nameParam,
      "parameter_invalid_string_blank",
    );
  }
  return {
    priceId: randomId("price_", 24),
    productId: randomId("prod_", 14),
    name,
    currency,
    unitAmount,
  };
}

function parseCurrency(value: FormValue | undefined, param: string): string {
  const currency = requireValue(readString(value, param), param);
  // Stripe documents currencies as three-letter ISO codes in lowercase.
  if (!/^[a-z]{3}$/.test(currency)) {
    throw new ParamError(`Invalid currency: ${currency}`, param);
  }
  return currency;
}

function parseSessionCurrency(
  value: FormValue | undefined,
  lineItems: ResolvedLineItem[],
): string | null {
  const explicit = value === undefined ? undefined : parseCurrency(value, "currency");
  const fromItems = lineItems[0]?.currency;
  if (explicit && fromItems && explicit !== fromItems) {
    throw new ParamError(
      `currency (${explicit}) does not match the line_items currency (${fromItems}).`,
      "currency",
    );
  }
  return explicit ?? fromItems ?? null;
}

// hosted_page redirects to success_url; embedded_page and elements return via return_url instead.
function parseRedirectUrls(
  params: FormObject,
  uiMode: UiMode,
): Pick<CreateInput, "successUrl" | "cancelUrl" | "returnUrl"> {
  const successUrl = parseUrl(params.success_url, "success_url");
  const cancelUrl = parseUrl(params.cancel_url, "cancel_url");
  const returnUrl = parseUrl(params.return_url, "return_url");
  const redirectsInPage = uiMode === "embedded_page" || uiMode === "elements";
  if (redirectsInPage) {
    for (const [param, url] of [["success_url", successUrl], ["cancel_url", cancelUrl]] as const) {
      if (url !== null) {
        throw new ParamError(`${param} is not allowed when ui_mode is ${uiMode}.`, param);
      }
    }
  } else if (uiMode === "hosted_page" && successUrl === null) {
    throw new ParamError(
      "Missing required param: success_url.",
      "success_url",
      "parameter_missing",
    );
  }
  return { successUrl, cancelUrl, returnUrl };
}

function parseUrl(value: FormValue | undefined, param: string): string | null {
  const text = readString(value, param);
  if (text === undefined || text === "") return null;
  if (!URL.canParse(text) || !/^https?:$/.test(new URL(text).protocol) || text.length > 5000) {
    throw new ParamError(`Not a valid URL`, param, "url_invalid");
  }
  return text;
}

function parseCustomer(params: FormObject): Pick<CreateInput, "customer" | "customerEmail"> {
  const customer = readString(params.customer, "customer") || null;
  const customerEmail = readString(params.customer_email, "customer_email") || null;
  if (customer && customerEmail) {
    throw new ParamError(
      "You may only specify one of these parameters: customer, customer_email.",
      "customer_email",
      "parameters_exclusive",
    );
  }
  if (customerEmail && !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(customerEmail)) {
    throw new ParamError(
      `Invalid email address: ${customerEmail}`,
      "customer_email",
      "email_invalid",
    );
  }
  return { customer, customerEmail };
}

function parseClientReferenceId(value: FormValue | undefined): string | null {
  const id = readString(value, "client_reference_id");
  if (id === undefined || id === "") return null;
  if (id.length > 200) {
    throw new ParamError(
      "client_reference_id must be at most 200 characters.",
      "client_reference_id",
    );
  }
  return id;
}

// Stripe metadata: up to 50 keys, keys up to 40 characters, values up to 500; an empty value
// means "unset", so it is left out.
function parseMetadata(value: FormValue | undefined, param: string): Record<string, string> {
  const metadata = readObject(value, param) ?? {};
  const entries = Object.entries(metadata);
  if (entries.length > 50) {
    throw new ParamError(`Invalid ${param}: it can have at most 50 keys.`, param);
  }
  const result: Record<string, string> = {};
  for (const [key, raw] of entries) {
    const keyParam = `${param}[${key}]`;
    const text = readString(raw, keyParam) ?? "";
    if (key.length > 40) {
      throw new ParamError(`Metadata keys can be at most 40 characters: ${key}`, keyParam);
    }
    if (text.length > 500) {
      throw new ParamError(`Metadata values can be at most 500 characters.`, keyParam);
    }
    if (text !== "") setOwn(result, key, text);
  }
  return result;
}

function parseExpiresAt(value: FormValue | undefined, nowSeconds: number): number {
  const expiresAt = readInteger(value, "expires_at");
  if (expiresAt === undefined) return nowSeconds + 24 * HOUR;
  if (expiresAt < nowSeconds + 30 * MINUTE) {
    throw new ParamError(
      "The `expires_at` timestamp must be at least 30 minutes from Checkout Session creation.",
      "expires_at",
    );
  }
  if (expiresAt > nowSeconds + 24 * HOUR) {
    throw new ParamError(
      "The `expires_at` timestamp must be less than 24 hours from Checkout Session creation.",
      "expires_at",
    );
  }
  return expiresAt;
}

// ---------------------------------------------------------------------------------------------
// Checkout Session objects
// ---------------------------------------------------------------------------------------------

function buildSession(input: CreateInput, baseUrl: string, nowSeconds: number): CheckoutSession {
  const id = randomId("cs_test_", 58);
  const total = input.mode === "setup"
    ? null
    : input.lineItems.reduce((sum, item) => sum + item.unitAmount * item.quantity, 0);
  const hosted = input.uiMode === "hosted_page";
  return {
    id,
    object: "checkout.session",
    ...SESSION_DEFAULTS,
    mode: input.mode,
    ui_mode: input.uiMode,
    status: "open",
    payment_status: input.mode === "setup" ? "no_payment_required" : "unpaid",
    url: hosted ? `${baseUrl}/c/pay/${id}` : null,
    client_secret: hosted ? null : `${id}_secret_${randomId("", 24)}`,
    amount_subtotal: total,
    amount_total: total,
    currency: input.currency,
    customer: input.customer,
    customer_creation: input.mode === "subscription" ? null : "if_required",
    customer_email: input.customerEmail,
    client_reference_id: input.clientReferenceId,
    metadata: input.metadata,
    created: nowSeconds,
    expires_at: input.expiresAt,
    livemode: false,
    success_url: input.successUrl,
    cancel_url: input.cancelUrl,
    ...(input.returnUrl ? { return_url: input.returnUrl } : {}),
    payment_intent: null,
    total_details: total === null
      ? null
      : { amount_discount: 0, amount_shipping: 0, amount_tax: 0 },
  };
}

// The rest of the Session object's fields, with the values Stripe gives a plain new session.
const SESSION_DEFAULTS = {
  adaptive_pricing: null,
  after_expiration: null,
  allow_promotion_codes: null,
  allowed_payment_method_types: null,
  automatic_tax: { enabled: false, liability: null, provider: null, status: null },
  billing_address_collection: null,
  collected_information: null,
  consent: null,
  consent_collection: null,
  currency_conversion: null,
  custom_fields: [],
  custom_text: {
    after_submit: null,
    shipping_address: null,
    submit: null,
    terms_of_service_acceptance: null,
  },
  customer_account: null,
  customer_details: null,
  discounts: [],
  integration_identifier: null,
  invoice: null,
  invoice_creation: null,
  locale: null,
  managed_payments: null,
  origin_context: null,
  payment_link: null,
  payment_method_collection: "always",
  payment_method_configuration_details: null,
  payment_method_options: {},
  payment_method_types: ["card"],
  permissions: null,
  recovered_from: null,
  saved_payment_method_options: null,
  setup_intent: null,
  shipping_address_collection: null,
  shipping_cost: null,
  shipping_options: [],
  submit_type: null,
  subscription: null,
  wallet_options: null,
} as const;

function lineItemObject(item: ResolvedLineItem, created: number): Record<string, unknown> {
  const amount = item.unitAmount * item.quantity;
  return {
    id: item.id,
    object: "item",
    amount_discount: 0,
    amount_subtotal: amount,
    amount_tax: 0,
    amount_total: amount,
    currency: item.currency,
    description: item.name,
    price: {
      id: item.priceId,
      object: "price",
      active: true,
      billing_scheme: "per_unit",
      created,
      currency: item.currency,
      livemode: false,
      metadata: {},
      product: item.productId,
      type: "one_time",
      unit_amount: item.unitAmount,
      unit_amount_decimal: String(item.unitAmount),
    },
    quantity: item.quantity,
  };
}

// Stripe clears `url` once a session is no longer open.
function markCompleted(session: CheckoutSession): void {
  session.status = "complete";
  session.url = null;
  if (session.mode === "setup") {
    session.setup_intent = randomId("seti_", 24);
    return;
  }
  session.payment_status = "paid";
  if (session.mode === "subscription") session.subscription = randomId("sub_", 24);
  else session.payment_intent = randomId("pi_", 24);
  session.customer_details = { email: session.customer_email, name: null, phone: null };
}

function markExpired(session: CheckoutSession): void {
  session.status = "expired";
  session.url = null;
}

// ---------------------------------------------------------------------------------------------
// Server state
// ---------------------------------------------------------------------------------------------

type Stored =
  | { state: "running"; fingerprint: string }
  | {
    state: "done";
    fingerprint: string;
    outcome: Outcome;
    requestId: string;
    savedAt: number;
  };

interface State {
  options: StripeServerOptions;
  baseUrl: string;
  now: () => number;
  sessions: Map<string, CheckoutSession>;
  lineItems: Map<string, ResolvedLineItem[]>;
  requests: RequestRecord[];
  faults: Fault[];
  idempotency: Map<string, Stored>;
  created: number;
  /** Aborted on close, so pending delays end and nothing outlives the server. */
  lifetime: AbortController;
  relays: Map<number, Relay>;
}

function nowSeconds(state: State): number {
  return Math.floor(state.now() / 1000);
}

/** Tells `onSessionChange`; the promise settles when a promise it returned does (never rejects). */
function notify(
  state: State,
  session: CheckoutSession,
  eventType: CheckoutEventType,
): Promise<void> {
  const failed = (error: unknown) =>
    console.error(`stripe_server: onSessionChange threw for ${eventType}:`, error);
  try {
    const result = state.options.onSessionChange?.(structuredClone(session), eventType);
    return Promise.resolve(result).then(() => {}, failed);
  } catch (error) {
    failed(error);
    return Promise.resolve();
  }
}

// Stripe expires sessions at expires_at on its own; here that happens when a session is looked at.
function findSession(state: State, id: string): CheckoutSession | undefined {
  const session = state.sessions.get(id);
  if (session?.status === "open" && session.expires_at <= nowSeconds(state)) {
    markExpired(session);
    notify(state, session, "checkout.session.expired");
  }
  return session;
}

function openSessionOrThrow(state: State, id: string): CheckoutSession {
  const session = findSession(state, id);
  if (!session) throw new Error(`Cannot change session ${id}: no such session`);
  if (session.status !== "open") {
    throw new Error(`Cannot change session ${id}: its status is ${session.status}, not open`);
  }
  return session;
}

// ---------------------------------------------------------------------------------------------
// API routes
// ---------------------------------------------------------------------------------------------

interface ApiCall {
  state: State;
  params: FormObject;
  pathArgs: string[];
}

interface Route {
  method: "GET" | "POST";
  pattern: RegExp;
  handle: (call: ApiCall) => Outcome;
}

const ROUTES: Route[] = [
  { method: "POST", pattern: /^\/v1\/checkout\/sessions$/, handle: createSession },
  { method: "GET", pattern: /^\/v1\/checkout\/sessions\/([^/]+)$/, handle: retrieveSession },
  { method: "POST", pattern: /^\/v1\/checkout\/sessions\/([^/]+)\/expire$/, handle: expireSession },
  {
    method: "GET",
    pattern: /^\/v1\/checkout\/sessions\/([^/]+)\/line_items$/,
    handle: listLineItems,
  },
];

const EXPAND_ONLY = new Set(["expand"]);
const LIST_PARAMS = new Set(["expand", "limit", "starting_after", "ending_before"]);

function createSession({ state, params }: ApiCall): Outcome {
  const now = nowSeconds(state);
  const input = parseCreateParams(params, { nowSeconds: now, prices: state.options.prices ?? {} });
  const session = buildSession(input, state.baseUrl, now);
  state.sessions.set(session.id, session);
  state.lineItems.set(session.id, input.lineItems);
  state.created += 1;
  return okOutcome(withExpansions(state, session, params));
}

function retrieveSession({ state, params, pathArgs: [id = ""] }: ApiCall): Outcome {
  rejectUnknown(params, EXPAND_ONLY);
  const session = findSession(state, id);
  return session ? okOutcome(withExpansions(state, session, params)) : missingSession(id);
}

// Stripe: "A Checkout Session can be expired when it is in one of these statuses: open".
function expireSession({ state, params, pathArgs: [id = ""] }: ApiCall): Outcome {
  rejectUnknown(params, EXPAND_ONLY);
  const session = findSession(state, id);
  if (!session) return missingSession(id);
  if (session.status !== "open") {
    // The endpoint ran and refused, so this answer is saved under the key like any other.
    return errorOutcome(400, {
      type: "invalid_request_error",
      message: `Only Checkout Sessions with a status of "open" can be expired; ` +
        `${id} has status "${session.status}".`,
    }, true);
  }
  markExpired(session);
  notify(state, session, "checkout.session.expired");
  return okOutcome(withExpansions(state, session, params));
}

function listLineItems({ state, params, pathArgs: [id = ""] }: ApiCall): Outcome {
  rejectUnknown(params, LIST_PARAMS);
  const session = findSession(state, id);
  if (!session) return missingSession(id);
  return okOutcome(lineItemList(state, session));
}

function lineItemList(state: State, session: CheckoutSession): Record<string, unknown> {
  const items = state.lineItems.get(session.id) ?? [];
  return {
    object: "list",
    data: items.map((item) => lineItemObject(item, session.created)),
    has_more: false,
    url: `/v1/checkout/sessions/${session.id}/line_items`,
  };
}

function withExpansions(state: State, session: CheckoutSession, params: FormObject): unknown {
  const expand = readList(params.expand, "expand") ?? [];
  const copy: Record<string, unknown> = structuredClone(session);
  if (expand.includes("line_items")) copy.line_items = lineItemList(state, session);
  return copy;
}

function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function findRoute(method: string, path: string): { route: Route; args: string[] } | Outcome {
  const candidates = ROUTES.flatMap((route) => {
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

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

function apiKeyOf(request: Request): string | null {
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

function authError(state: State, apiKey: string | null): Outcome | null {
  if (apiKey === null) {
    return errorOutcome(401, {
      type: "invalid_request_error",
      message: "You did not provide an API key. Provide it in the Authorization header " +
        "(Authorization: Bearer YOUR_SECRET_KEY).",
    });
  }
  const expected = state.options.secretKey;
  const valid = expected === undefined ? apiKey.startsWith("sk_test_") : apiKey === expected;
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

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

/** Runs `execute` under an idempotency key, replaying or refusing as Stripe documents. */
async function runIdempotent(
  state: State,
  scope: { apiKey: string; key: string; requestId: string; fingerprint: string },
  execute: () => Promise<Outcome>,
): Promise<Outcome> {
  const storeKey = `${scope.apiKey}\u0000${scope.key}`;
  const stored = liveEntry(state, storeKey);
  if (stored?.state === "running") return keyInUse(scope.key);
  if (stored?.state === "done") {
    if (stored.fingerprint !== scope.fingerprint) return keyMismatch(scope.key);
    return { ...stored.outcome, replayed: true, originalRequestId: stored.requestId };
  }
  // Held from here (synchronously, before any await) so a concurrent request sees it running.
  state.idempotency.set(storeKey, { state: "running", fingerprint: scope.fingerprint });
  let outcome: Outcome | undefined;
  try {
    outcome = await execute();
    return outcome;
  } finally {
    if (outcome?.storable) {
      state.idempotency.set(storeKey, {
        state: "done",
        fingerprint: scope.fingerprint,
        outcome,
        requestId: scope.requestId,
        savedAt: state.now(),
      });
    } else {
      state.idempotency.delete(storeKey);
    }
  }
}

// Stripe may prune keys once they are 24 hours old; a pruned key starts a new request.
function liveEntry(state: State, storeKey: string): Stored | undefined {
  const entry = state.idempotency.get(storeKey);
  if (entry?.state === "done" && state.now() - entry.savedAt >= DAY_MS) {
    state.idempotency.delete(storeKey);
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

// Parameters are compared decoded (key order does not matter), together with the endpoint.
function fingerprint(method: string, path: string, params: FormObject): string {
  return `${method} ${path} ${canonicalJson(params)}`;
}

function canonicalJson(value: FormValue): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key] ?? "")}`)}}`;
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

function takeFault(state: State, target: FaultTarget): Fault | null {
  const index = state.faults.findIndex((fault) => faultMatches(fault, target));
  if (index === -1) return null;
  const [fault] = state.faults.splice(index, 1);
  return fault ?? null;
}

function faultMatches(fault: FaultFilter, target: FaultTarget): boolean {
  if (fault.method && fault.method.toUpperCase() !== target.method) return false;
  if (typeof fault.path === "string" && fault.path !== target.path) return false;
  if (fault.path instanceof RegExp && !fault.path.test(target.path)) return false;
  return fault.match ? fault.match(target) : true;
}

function faultOutcome(fault: Extract<Fault, { kind: "status" }>, storable: boolean): Outcome {
  return {
    status: fault.status,
    body: fault.body ?? defaultFaultBody(fault.status),
    storable,
    headers: fault.headers,
  };
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const finish = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", finish);
      resolve();
    };
    const timer = setTimeout(finish, ms);
    signal.addEventListener("abort", finish, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------
// Request pipeline
// ---------------------------------------------------------------------------------------------

interface ApiRequest {
  request: Request;
  record: RequestRecord;
  apiKey: string | null;
  body: string;
}

async function handleHttp(
  state: State,
  request: Request,
  info: Deno.ServeHandlerInfo,
): Promise<Response> {
  const requestId = randomId("req_", 14);
  const path = new URL(request.url).pathname;
  if (!path.startsWith("/v1/")) return await pageResponse(state, request, path, requestId);
  const record: RequestRecord = {
    requestId,
    method: request.method,
    path,
    idempotencyKey: request.method === "POST" ? request.headers.get("idempotency-key") : null,
    stripeVersion: request.headers.get("stripe-version"),
    status: null,
    replayed: false,
    fault: null,
  };
  state.requests.push(record);
  const call: ApiRequest = {
    request,
    record,
    apiKey: apiKeyOf(request),
    body: await request.text(),
  };
  const fault = takeFault(state, {
    method: record.method,
    path,
    idempotencyKey: record.idempotencyKey,
    params: safeDecode(call),
  });
  record.fault = fault?.kind ?? null;
  return await answerWithFault(state, call, fault, info);
}

async function answerWithFault(
  state: State,
  call: ApiRequest,
  fault: Fault | null,
  info: Deno.ServeHandlerInfo,
): Promise<Response> {
  if (fault?.kind === "reset_before") return dropConnection(state, info);
  // A status fault without storeUnderKey stands for an edge failure: nothing ran, nothing saved.
  if (fault?.kind === "status" && !fault.storeUnderKey) {
    return respond(call, faultOutcome(fault, false));
  }
  const outcome = await answerApi(state, call, fault);
  if (fault?.kind === "reset_after") return dropConnection(state, info);
  if (fault?.kind === "timeout") {
    // Stop waiting once the client has hung up: nobody is left to answer.
    const clientGone = relayOf(state, info)?.gone.signal;
    await sleep(
      fault.ms,
      AbortSignal.any([state.lifetime.signal, ...(clientGone ? [clientGone] : [])]),
    );
  }
  return respond(call, outcome);
}

/** Authentication, idempotency, routing, in Stripe's order; only endpoint results are saved. */
async function answerApi(state: State, call: ApiRequest, fault: Fault | null): Promise<Outcome> {
  const { record } = call;
  const denied = authError(state, call.apiKey);
  if (denied) return denied;
  const key = record.idempotencyKey;
  if (key !== null && (key.length === 0 || key.length > MAX_IDEMPOTENCY_KEY_LENGTH)) {
    return errorOutcome(400, {
      type: "invalid_request_error",
      message: `Invalid Idempotency-Key: keys must be 1 to ${MAX_IDEMPOTENCY_KEY_LENGTH} ` +
        `characters long (got ${key.length}).`,
    });
  }
  let params: FormObject;
  try {
    params = decodeParams(call);
  } catch (error) {
    if (error instanceof FormDecodeError) return paramErrorOutcome(new ParamError(error.message));
    throw error;
  }
  const found = findRoute(record.method, record.path);
  if (!("route" in found)) return found;
  const execute = () => executeRoute(state, { state, params, pathArgs: found.args }, found, fault);
  if (key === null || call.apiKey === null) return await execute();
  return await runIdempotent(state, {
    apiKey: call.apiKey,
    key,
    requestId: record.requestId,
    fingerprint: fingerprint(record.method, record.path, params),
  }, execute);
}

async function executeRoute(
  state: State,
  call: ApiCall,
  found: { route: Route },
  fault: Fault | null,
): Promise<Outcome> {
  // Latency stands for a slow endpoint: Stripe keeps working even if the client gives up.
  if (fault?.kind === "latency") await sleep(fault.ms, state.lifetime.signal);
  if (fault?.kind === "status") return faultOutcome(fault, true);
  try {
    return found.route.handle(call);
  } catch (error) {
    if (error instanceof ParamError) return paramErrorOutcome(error);
    // An unexpected failure after execution began is a saved 500, as on Stripe.
    console.error("stripe_server: endpoint failed:", error);
    return errorOutcome(500, { type: "api_error", message: "An unknown error occurred." }, true);
  }
}

function decodeParams(call: ApiRequest): FormObject {
  if (call.request.method === "GET") return decodeStripeForm(new URL(call.request.url).search);
  const type = call.request.headers.get("content-type") ?? "";
  if (call.body !== "" && !type.startsWith("application/x-www-form-urlencoded")) {
    throw new FormDecodeError(
      `Invalid request: v1 endpoints take application/x-www-form-urlencoded bodies, not ${type}.`,
    );
  }
  return decodeStripeForm(call.body);
}

// Fault filters see the parameters even when they cannot be decoded (then as empty).
function safeDecode(call: ApiRequest): FormObject {
  try {
    return decodeParams(call);
  } catch {
    return {};
  }
}

function respond(call: ApiRequest, outcome: Outcome): Response {
  const { record } = call;
  record.status = outcome.status;
  record.replayed = outcome.replayed === true;
  const headers = new Headers({
    "content-type": "application/json",
    "request-id": record.requestId,
  });
  if (record.stripeVersion) headers.set("stripe-version", record.stripeVersion);
  if (record.idempotencyKey) headers.set("idempotency-key", record.idempotencyKey);
  if (outcome.replayed) {
    headers.set("idempotent-replayed", "true");
    if (outcome.originalRequestId) headers.set("original-request", outcome.originalRequestId);
  }
  for (const [name, value] of Object.entries(outcome.headers ?? {})) headers.set(name, value);
  return new Response(JSON.stringify(outcome.body, null, 2), { status: outcome.status, headers });
}

// ---------------------------------------------------------------------------------------------
// Hosted checkout page
// ---------------------------------------------------------------------------------------------

const ZERO_DECIMAL = new Set(
  "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split(" "),
);
/** How long "Pay" waits for the webhook delivery before redirecting anyway. */
const PAY_DELIVERY_WAIT_MS = 15_000;

// GET /c/pay/:id shows the session; POST /c/pay/:id/pay completes it, POST /c/pay/:id/cancel
// goes back to cancel_url (the session stays open, as on Stripe).
async function pageResponse(
  state: State,
  request: Request,
  path: string,
  requestId: string,
): Promise<Response> {
  const match = /^\/c\/pay\/([^/]+)(?:\/(pay|cancel))?$/.exec(path);
  const action = match?.[2] ?? null;
  const headers = { "content-type": "text/html; charset=utf-8", "request-id": requestId };
  const allowed = action ? "POST" : "GET";
  if (match && request.method !== allowed) {
    return new Response("<!doctype html><p>Method not allowed</p>", {
      status: 405,
      headers: { ...headers, allow: allowed },
    });
  }
  const session = match ? findSession(state, decodePathSegment(match[1] ?? "")) : undefined;
  if (!session) return new Response("<!doctype html><p>Not found</p>", { status: 404, headers });
  if (action === null || session.status !== "open") {
    return new Response(renderPage(session), {
      status: action === null ? 200 : 409,
      headers,
    });
  }
  if (action === "cancel") return redirect(session.cancel_url, session, headers);
  markCompleted(session);
  const delivered = notify(state, session, "checkout.session.completed");
  await Promise.race([delivered, sleep(PAY_DELIVERY_WAIT_MS, state.lifetime.signal)]);
  return redirect(session.success_url, session, headers);
}

// Stripe fills in the {CHECKOUT_SESSION_ID} template of the redirect URLs.
function redirect(
  target: string | null,
  session: CheckoutSession,
  headers: Record<string, string>,
): Response {
  if (!target) return new Response(renderPage(session), { status: 200, headers });
  const location = target.replaceAll("{CHECKOUT_SESSION_ID}", session.id);
  return new Response(null, { status: 303, headers: { ...headers, location } });
}

function renderPage(session: CheckoutSession): string {
  const currency = (session.currency ?? "").toUpperCase();
  const amount = formatAmount(session.amount_total, session.currency);
  const id = escapeHtml(session.id);
  const actions = session.status === "open"
    ? `<form method="post" action="/c/pay/${id}/pay"><button type="submit">Pay</button></form>
${
      session.cancel_url
        ? `<form method="post" action="/c/pay/${id}/cancel"><button type="submit">Cancel</button></form>`
        : ""
    }`
    : "";
  const email = session.customer_email ? `<p>Email: ${escapeHtml(session.customer_email)}</p>` : "";
  return `<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Checkout (local Stripe)</title>
<style>body{font:16px system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}
form{display:inline-block;margin-right:.5rem}button{font-size:1rem;padding:.5rem 1.25rem}</style>
<main data-session-id="${id}" data-status="${session.status}">
<p><small>Local Stripe-compatible server: test mode, no card needed</small></p>
<h1>Pay ${escapeHtml(currency)} ${escapeHtml(amount)}</h1>
${email}<p>Session: <code>${id}</code></p>
<p>Status: <strong id="status">${session.status}</strong></p>
${actions}
</main></html>
`;
}

function formatAmount(amount: number | null, currency: string | null): string {
  if (amount === null) return "0";
  return currency && ZERO_DECIMAL.has(currency) ? String(amount) : (amount / 100).toFixed(2);
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

// ---------------------------------------------------------------------------------------------
// TCP relay (so faults can drop a client's connection)
// ---------------------------------------------------------------------------------------------

interface Relay {
  client: Deno.Conn;
  upstream: Deno.Conn;
  /** Aborted when the relay closes (the client hung up, or a fault dropped it). */
  gone: AbortController;
}

async function acceptClients(
  state: State,
  listener: Deno.Listener,
  innerPort: number,
  tasks: Set<Promise<void>>,
): Promise<void> {
  try {
    for await (const client of listener) {
      const task = relayConnection(state, client, innerPort);
      tasks.add(task);
      task.finally(() => tasks.delete(task));
    }
  } catch {
    // The listener was closed: the server is shutting down.
  }
}

async function relayConnection(state: State, client: Deno.Conn, innerPort: number): Promise<void> {
  let upstream: Deno.Conn;
  try {
    upstream = await Deno.connect({ hostname: HOST, port: innerPort });
  } catch {
    client.close();
    return;
  }
  const relay: Relay = { client, upstream, gone: new AbortController() };
  if (state.lifetime.signal.aborted) return closeRelay(relay);
  // The HTTP server sees the relay's upstream socket, so its local port names the connection.
  const port = (upstream.localAddr as Deno.NetAddr).port;
  state.relays.set(port, relay);
  await Promise.all([pump(relay, client, upstream), pump(relay, upstream, client)]);
  state.relays.delete(port);
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

function relayOf(state: State, info: Deno.ServeHandlerInfo): Relay | undefined {
  const address = info.remoteAddr;
  return address.transport === "tcp" ? state.relays.get(address.port) : undefined;
}

// Closing both sides before any response byte is written: the client sees the connection closed.
function dropConnection(state: State, info: Deno.ServeHandlerInfo): Response {
  const relay = relayOf(state, info);
  if (relay) closeRelay(relay);
  // Nobody reads this; the socket is gone.
  return new Response(null, { status: 503 });
}

// ---------------------------------------------------------------------------------------------
// Server lifecycle
// ---------------------------------------------------------------------------------------------

/** Starts the server on 127.0.0.1 (`options.port`, or a free port). */
export function startStripeServer(options: StripeServerOptions = {}): Promise<StripeServer> {
  const listener = Deno.listen({ hostname: HOST, port: options.port ?? 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const state: State = {
    options,
    baseUrl: `http://${HOST}:${port}`,
    now: options.now ?? Date.now,
    sessions: new Map(),
    lineItems: new Map(),
    requests: [],
    faults: [],
    idempotency: new Map(),
    created: 0,
    lifetime: new AbortController(),
    relays: new Map(),
  };
  const http = Deno.serve(
    { hostname: HOST, port: 0, onListen: () => {} },
    (request, info) => handleHttp(state, request, info),
  );
  const relayTasks = new Set<Promise<void>>();
  const accepting = acceptClients(state, listener, http.addr.port, relayTasks);
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= shutdown(state, listener, http, accepting, relayTasks);
    return closing;
  };
  return Promise.resolve(serverHandle(state, port, close));
}

async function shutdown(
  state: State,
  listener: Deno.Listener,
  http: Deno.HttpServer,
  accepting: Promise<void>,
  relayTasks: Set<Promise<void>>,
): Promise<void> {
  state.lifetime.abort();
  listener.close();
  await accepting;
  for (const relay of state.relays.values()) closeRelay(relay);
  await Promise.all([...relayTasks]);
  await http.shutdown();
}

function serverHandle(state: State, port: number, close: () => Promise<void>): StripeServer {
  const changeSession = (
    id: string,
    change: (s: CheckoutSession) => void,
    event: CheckoutEventType,
  ) => {
    const session = openSessionOrThrow(state, id);
    change(session);
    notify(state, session, event);
    return structuredClone(session);
  };
  return {
    url: state.baseUrl,
    port,
    sessions: state.sessions,
    requests: state.requests,
    faults: state.faults,
    sessionsCreated: () => state.created,
    completeSession: (id) => changeSession(id, markCompleted, "checkout.session.completed"),
    expireSession: (id) => changeSession(id, markExpired, "checkout.session.expired"),
    sweepExpired: () =>
      [...state.sessions.keys()].filter((id) => {
        const wasOpen = state.sessions.get(id)?.status === "open";
        return wasOpen && findSession(state, id)?.status === "expired";
      }),
    reset: () => {
      state.sessions.clear();
      state.lineItems.clear();
      state.requests.length = 0;
      state.faults.length = 0;
      state.idempotency.clear();
      state.created = 0;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

// ---------------------------------------------------------------------------------------------
// Webhook forwarding (what `stripe listen --forward-to` does)
// ---------------------------------------------------------------------------------------------

/** The API version stamped on forwarded events (the one the project's SDK pins). */
export const WEBHOOK_API_VERSION = "2026-10-28.endive";

/** Options for `createWebhookForwarder`. */
export interface WebhookForwarderOptions {
  /** The endpoint to POST events to; a function is asked at each delivery. */
  url: string | (() => string);
  /** The endpoint's signing secret (`whsec_...`). */
  secret: string;
  /** Deliveries tried per event, with a doubling pause between them (default 4). */
  attempts?: number;
  /** Per-delivery timeout (default 10 s). */
  timeoutMs?: number;
  /** One line per delivery attempt (default: console.log). */
  log?: (line: string) => void;
}

/** How an event's delivery ended. */
export interface WebhookDelivery {
  eventId: string;
  type: CheckoutEventType;
  /** The endpoint's last status, or null when it was never reached. */
  status: number | null;
  attempts: number;
}

/** The `Stripe-Signature` header Stripe sends: `t=<unix seconds>,v1=<hex HMAC-SHA256>`. */
export async function stripeSignatureHeader(
  payload: string,
  secret: string,
  timestamp: number = Math.floor(Date.now() / 1000),
): Promise<string> {
  const encoder = new TextEncoder();
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign("HMAC", key, encoder.encode(`${timestamp}.${payload}`));
  const hex = Array.from(new Uint8Array(mac), (byte) => byte.toString(16).padStart(2, "0"));
  return `t=${timestamp},v1=${hex.join("")}`;
}

/** The event Stripe sends for a Checkout Session change. */
export function checkoutSessionEvent(session: CheckoutSession, type: CheckoutEventType): string {
  return JSON.stringify(
    {
      id: randomId("evt_", 24),
      object: "event",
      api_version: WEBHOOK_API_VERSION,
      created: Math.floor(Date.now() / 1000),
      data: { object: session },
      livemode: false,
      pending_webhooks: 1,
      request: { id: null, idempotency_key: null },
      type,
    },
    null,
    2,
  );
}

/**
 * An `onSessionChange` that POSTs each change as a signed event to `url`, retrying (bounded) on
 * a network failure or a non-2xx answer, as Stripe retries a failed delivery.
 */
export function createWebhookForwarder(
  options: WebhookForwarderOptions,
): (session: CheckoutSession, type: CheckoutEventType) => Promise<WebhookDelivery> {
  const attempts = Math.max(1, options.attempts ?? 4);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const log = options.log ?? ((line: string) => console.log(line));
  return async (session, type) => {
    const payload = checkoutSessionEvent(session, type);
    const eventId = (JSON.parse(payload) as { id: string }).id;
    const delivery: WebhookDelivery = { eventId, type, status: null, attempts: 0 };
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (attempt > 1) await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
      delivery.attempts = attempt;
      const url = typeof options.url === "function" ? options.url() : options.url;
      let outcome: string;
      try {
        const response = await fetch(url, {
          method: "POST",
          headers: {
            "content-type": "application/json; charset=utf-8",
            "stripe-signature": await stripeSignatureHeader(payload, options.secret),
            "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
          },
          body: payload,
          signal: AbortSignal.timeout(timeoutMs),
        });
        await response.body?.cancel();
        delivery.status = response.status;
        outcome = String(response.status);
      } catch (error) {
        outcome = `failed (${error instanceof Error ? error.message : String(error)})`;
      }
      log(`stripe_server: ${type} ${eventId} for ${session.id} -> ${url}: ${outcome}`);
      if (delivery.status !== null && delivery.status >= 200 && delivery.status < 300) break;
    }
    return delivery;
  };
}

// ---------------------------------------------------------------------------------------------
// Helpers and script entry point
// ---------------------------------------------------------------------------------------------

const ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

function randomId(prefix: string, length: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return prefix + Array.from(bytes, (byte) => ALPHANUMERIC[byte % ALPHANUMERIC.length]).join("");
}

function argValue(args: string[], name: string): string | undefined {
  const index = args.indexOf(name);
  return index === -1 ? undefined : args[index + 1];
}

function portFromArgs(args: string[]): number {
  const value = argValue(args, "--port") ?? "12111";
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`Cannot start stripe_server: --port must be 0-65535, got ${value}`);
  }
  return port;
}

if (import.meta.main) {
  const forwardTo = argValue(Deno.args, "--forward-to");
  const secret = argValue(Deno.args, "--webhook-secret");
  if (forwardTo && !secret) {
    throw new Error("Cannot start stripe_server: --forward-to needs --webhook-secret whsec_...");
  }
  const server = await startStripeServer({
    port: portFromArgs(Deno.args),
    onSessionChange: forwardTo && secret
      ? createWebhookForwarder({ url: forwardTo, secret })
      : undefined,
  });
  console.log(server.url);
  const stop = () => server.close().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
