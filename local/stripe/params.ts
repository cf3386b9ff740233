/**
 * Parameter validation for the endpoints, with Stripe's answers: a problem found before the
 * endpoint runs is a 400 `invalid_request_error` naming the `param` (and a `code` where Stripe
 * gives one), and it is not saved under the idempotency key. The readers here serve every
 * endpoint (refunds.ts validates its own parameters with them).
 *
 * Checkout Session creation follows SessionCreateParams of the SDK's pinned API version: unknown
 * parameters are rejected; `expires_at` must be 30 minutes to 24 hours after creation and
 * defaults to 24 hours; line items need the same currency, a quantity of at least 1 and either a
 * known `price` or `price_data`; metadata has at most 50 keys of 40 characters, values of 500.
 */
import { type FormObject, type FormValue, setOwn } from "./form.ts";
import { randomId } from "./helpers.ts";
import { errorOutcome, type Outcome } from "./outcome.ts";

const MINUTE = 60;
const HOUR = 60 * MINUTE;

/** Checkout Session modes. */
export type CheckoutMode = "payment" | "setup" | "subscription";
/** Checkout Session UI modes in the SDK's pinned API version. */
export type UiMode = "hosted_page" | "embedded_page" | "elements" | "form";

/** A Price the server knows, so line items may reference it by `price` id. */
export interface PriceFixture {
  currency: string;
  unitAmount: number;
  productName: string;
}

/** A parameter problem found before execution: answered 400 and not saved under the key. */
export class ParamError extends Error {
  constructor(message: string, readonly param?: string, readonly code?: string) {
    super(message);
  }
}

/** The 400 a `ParamError` is answered with (never saved under the idempotency key). */
export function paramErrorOutcome(error: ParamError): Outcome {
  return errorOutcome(400, {
    type: "invalid_request_error",
    message: error.message,
    ...(error.code ? { code: error.code } : {}),
    ...(error.param ? { param: error.param } : {}),
  });
}

// ---------------------------------------------------------------------------------------------
// Readers: one decoded form value as the type a parameter needs
// ---------------------------------------------------------------------------------------------

/** A string parameter, or undefined when absent. */
export function readString(value: FormValue | undefined, param: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw new ParamError(`Invalid string: ${param}`, param);
  return value;
}

/** An integer parameter (`parameter_invalid_integer` otherwise), or undefined when absent. */
export function readInteger(value: FormValue | undefined, param: string): number | undefined {
  const text = readString(value, param);
  if (text === undefined) return undefined;
  if (!/^-?\d+$/.test(text)) {
    throw new ParamError(`Invalid integer: ${text}`, param, "parameter_invalid_integer");
  }
  return Number(text);
}

/** An object parameter (`created[gte]=…`), or undefined when absent. */
export function readObject(value: FormValue | undefined, param: string): FormObject | undefined {
  if (value === undefined || value === "") return undefined;
  if (typeof value === "string" || Array.isArray(value)) {
    throw new ParamError(`Invalid object: ${param}`, param);
  }
  return value;
}

/** An array parameter (`expand[]=…`), or undefined when absent. */
export function readList(value: FormValue | undefined, param: string): FormValue[] | undefined {
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

/** Throws `parameter_unknown` for the first parameter not in `known`. */
export function rejectUnknown(params: FormObject, known: ReadonlySet<string>): void {
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

/** A line item with its price resolved (from a `PriceFixture` or `price_data`). */
export interface ResolvedLineItem {
  id: string;
  priceId: string;
  productId: string;
  name: string;
  currency: string;
  unitAmount: number;
  quantity: number;
}

/** The validated parameters of a Checkout Session create call. */
export interface CreateInput {
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

/** What creation is validated against: the clock and the known prices. */
export interface CreateContext {
  nowSeconds: number;
  prices: Record<string, PriceFixture>;
}

/** Validates `POST /v1/checkout/sessions` parameters as Stripe does; throws `ParamError`. */
export function parseCreateParams(params: FormObject, context: CreateContext): CreateInput {
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

/** `value` if it is one of `allowed`, else a `parameter_invalid_enum` error. */
export function parseEnum<T extends string>(
  value: string,
  allowed: readonly T[],
  param: string,
): T {
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

/**
 * Stripe metadata: up to 50 keys, keys up to 40 characters, values up to 500; an empty value
 * means "unset", so it is left out.
 */
export function parseMetadata(value: FormValue | undefined, param: string): Record<string, string> {
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
