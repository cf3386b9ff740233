/**
 * The local stack behind `npm start` and the browser test, on 127.0.0.1 only:
 *
 *   local Stripe-compatible server  (unless Stripe is external)  → webhooks → stripe-webhook
 *   storefront server               storefront/ + dev reads
 *   functions host (subprocess)     scripts/functions-host.ts: every supabase/functions/<name>
 *
 * Ports may be 0 (free ports, for tests): each part learns the others' URLs once they listen.
 */
import {
  createWebhookForwarder,
  startStripeServer,
  type StripeServer,
} from "../../local/stripe/mod.ts";
import { startStorefrontServer, type StorefrontServer } from "../storefront-server.ts";
import { DEMO_EVENT_ID } from "./local.ts";
import { functionsAuthEnv, type LocalKeys } from "./local-keys.ts";
import { terminate } from "./process.ts";

/** Where Stripe is: the local server this stack starts, or one given (real Stripe, stripe-mock). */
export type StripeSetting =
  | { mode: "local"; port: number }
  | { mode: "external"; secretKey: string; apiBase: string | null };

/** Options for `startLocalStack`. */
export interface LocalStackOptions {
  databaseUrl: string;
  functionsPort: number;
  storefrontPort: number;
  stripe: StripeSetting;
  /** The project's publishable, secret and signing keys (the functions get only these). */
  keys: LocalKeys;
  webhookSecret: string;
  /** Where the storefront bundle is written. */
  bundleFile: string;
  eventId?: string;
  /**
   * Extra environment for the functions (e.g. CHECKOUT_SESSION_TTL_MINUTES, or a legacy
   * SUPABASE_JWT_SECRET side by side with the keys).
   */
  functionsEnv?: Record<string, string>;
  /** Where the functions host's output lines go (default: this process's stdout). */
  log?: (line: string) => void;
}

/** A running stack. */
export interface LocalStack {
  functionsUrl: string;
  storefrontUrl: string;
  /** The local Stripe-compatible server, when this stack started one. */
  stripe: StripeServer | null;
  /** STRIPE_API_BASE the functions use (null: api.stripe.com). */
  stripeApiBase: string | null;
  /** The storefront's key (apikey header). */
  publishableKey: string;
  /** The operator endpoints' key (apikey header). */
  secretKey: string;
  /** The functions that failed to load, with the reason. */
  failedFunctions: string[];
  close(): Promise<void>;
}

/** Sent to every function (the secrets of a Supabase project). */
export interface FunctionsEnvironment {
  [name: string]: string;
}

const LOCAL_STRIPE_KEY = "sk_test_local_stripe_compatible_server";

/** Starts the stack; on failure, whatever was started is stopped again. */
export async function startLocalStack(options: LocalStackOptions): Promise<LocalStack> {
  const stops: (() => Promise<unknown>)[] = [];
  const close = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {});
  };
  try {
    return { ...await start(options, stops), close };
  } catch (error) {
    await close();
    throw error;
  }
}

async function start(
  options: LocalStackOptions,
  stops: (() => Promise<unknown>)[],
): Promise<Omit<LocalStack, "close">> {
  const eventId = options.eventId ?? DEMO_EVENT_ID;
  const { publishableKey, secretKey } = options.keys;
  let functionsUrl = "";

  let stripe: StripeServer | null = null;
  if (options.stripe.mode === "local") {
    stripe = await startStripeServer({
      port: options.stripe.port,
      onEvent: createWebhookForwarder({
        url: () => `${functionsUrl}/functions/v1/stripe-webhook`,
        secret: options.webhookSecret,
      }),
    });
    stops.push(() => stripe!.close());
  }

  const storefront: StorefrontServer = await startStorefrontServer({
    port: options.storefrontPort,
    databaseUrl: options.databaseUrl,
    bundleFile: options.bundleFile,
    config: () => ({ supabaseUrl: functionsUrl, publishableKey, eventId }),
  });
  stops.push(() => storefront.close());

  const origins = [storefront.url, storefront.url.replace("127.0.0.1", "localhost")];
  const env: FunctionsEnvironment = {
    PORT: String(options.functionsPort),
    SUPABASE_DB_URL: options.databaseUrl,
    SITE_URL: storefront.url,
    CHECKOUT_ALLOWED_ORIGINS: origins.join(","),
    // What the platform provisions for a new project; SUPABASE_URL is the host's own.
    ...await functionsAuthEnv(options.keys),
    STRIPE_WEBHOOK_SECRET: options.webhookSecret,
    ...(stripe
      ? { STRIPE_SECRET_KEY: LOCAL_STRIPE_KEY, STRIPE_API_BASE: stripe.url }
      : options.stripe.mode === "external"
      ? {
        STRIPE_SECRET_KEY: options.stripe.secretKey,
        ...(options.stripe.apiBase ? { STRIPE_API_BASE: options.stripe.apiBase } : {}),
      }
      : {}),
    ...options.functionsEnv,
  };
  const host = await spawnFunctionsHost(env, options.log ?? ((line) => console.log(line)));
  stops.push(() => host.stop());
  functionsUrl = host.url;

  return {
    functionsUrl,
    storefrontUrl: storefront.url,
    stripe,
    stripeApiBase: env.STRIPE_API_BASE ?? null,
    publishableKey,
    secretKey,
    failedFunctions: host.failed,
  };
}

/** A functions host running in a process of its own (scripts/functions-host.ts). */
export interface HostProcess {
  url: string;
  pid: number;
  failed: string[];
  stop(): Promise<void>;
}

const HOST_START_TIMEOUT_MS = 120_000;

/**
 * Starts scripts/functions-host.ts in its own process, so that the functions read exactly the
 * environment given here (index.ts reads Deno.env) and nothing of this process's servers; `log`
 * gets its output lines. Resolves once it listens (PORT in `env`; 0 for a free port).
 */
export async function spawnFunctionsHost(
  env: FunctionsEnvironment,
  log: (line: string) => void,
): Promise<HostProcess> {
  const script = new URL("../functions-host.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", "--allow-read", "--allow-sys", script],
    env: { ...env, NO_COLOR: "1", RUST_BACKTRACE: "0" },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const stop = async () => {
    await terminate(child);
  };
  const failed: string[] = [];
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines());
  const reader = lines.getReader();
  const deadline = setTimeout(() => void stop(), HOST_START_TIMEOUT_MS);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error("The functions host exited before it was listening");
      log(value);
      const failure = /^functions-host: (\S+) FAILED to load: (.*)$/.exec(value);
      if (failure) failed.push(`${failure[1]}: ${failure[2]}`);
      const listening = /^functions-host: listening on (http:\/\/\S+?)\/functions\/v1\/$/.exec(
        value,
      );
      if (listening) {
        clearTimeout(deadline);
        // Keep forwarding the functions' log lines.
        (async () => {
          for (;;) {
            const next = await reader.read().catch(() => null);
            if (!next || next.done) return;
            log(next.value);
          }
        })();
        return { url: listening[1]!, pid: child.pid, failed, stop };
      }
    }
  } catch (error) {
    clearTimeout(deadline);
    await stop();
    throw error;
  }
}

function splitLines(): TransformStream<string, string> {
  let buffer = "";
  return new TransformStream({
    transform(chunk, controller) {
      buffer += chunk;
      const parts = buffer.split("\n");
      buffer = parts.pop() ?? "";
      for (const part of parts) controller.enqueue(part);
    },
    flush(controller) {
      if (buffer) controller.enqueue(buffer);
    },
  });
}
