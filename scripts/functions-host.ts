/**
 * Serves every function of supabase/functions at http://127.0.0.1:PORT/functions/v1/<name> (PORT
 * defaults to 54321), as `supabase functions serve` does, but without Docker or the edge runtime.
 *
 * Each function's own index.ts is imported unchanged. An index.ts ends in `Deno.serve(handler)`;
 * while it is imported, `Deno.serve` is swapped for a stand-in that keeps the handler and returns
 * a server object that never listens. This one server then routes /functions/v1/<name>[/...] to
 * the handler captured from <name>/index.ts, with the function's `verify_jwt` setting from
 * supabase/config.toml applied first (HS256 with SUPABASE_JWT_SECRET), as the Supabase gateway
 * does (every function of this project has it off and checks its caller itself). The functions
 * read their configuration from this process's environment; like the platform, the host sets
 * SUPABASE_URL to its own URL when it is not given, and serves SUPABASE_JWKS at
 * /auth/v1/.well-known/jwks.json, where Supabase Auth publishes a project's signing keys.
 *
 * LOCAL USE ONLY. Run: deno run -A scripts/functions-host.ts  (see scripts/start.sh)
 */
import { LOCAL_JWT_SECRET, verifyJwt } from "./lib/jwt.ts";

type ServeHandler = (request: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;

/** A function folder, loaded or not. */
export interface LoadedFunction {
  name: string;
  /** The module that was imported. */
  entrypoint: URL;
  /** Whether the gateway checks the caller's JWT (config.toml `verify_jwt`, default true). */
  verifyJwt: boolean;
  /** The handler its index.ts passed to Deno.serve. */
  handler?: ServeHandler;
  /** Why it could not be loaded (e.g. a missing environment variable). */
  error?: string;
}

interface FunctionConfig {
  verifyJwt: boolean;
  entrypoint?: string;
}

/** `[functions.<name>]` blocks of a config.toml: `verify_jwt` and `entrypoint`. */
export function parseFunctionConfig(toml: string): Map<string, FunctionConfig> {
  const blocks = new Map<string, FunctionConfig>();
  let current: FunctionConfig | null = null;
  for (const line of toml.split("\n")) {
    const header = /^\s*\[functions\.([A-Za-z0-9_-]+)\]\s*$/.exec(line);
    if (header) {
      current = { verifyJwt: true };
      blocks.set(header[1]!, current);
      continue;
    }
    if (/^\s*\[/.test(line)) current = null;
    if (!current) continue;
    const verify = /^\s*verify_jwt\s*=\s*(true|false)\s*(#.*)?$/.exec(line);
    if (verify) current.verifyJwt = verify[1] === "true";
    const entry = /^\s*entrypoint\s*=\s*"([^"]+)"\s*(#.*)?$/.exec(line);
    if (entry) current.entrypoint = entry[1];
  }
  return blocks;
}

/**
 * Imports `entrypoint` with `Deno.serve` replaced, and returns the handler the module passed to
 * it. The module is evaluated exactly as written; only its call to Deno.serve is intercepted.
 */
export async function captureServeHandler(entrypoint: URL): Promise<ServeHandler> {
  const original = Object.getOwnPropertyDescriptor(Deno, "serve");
  if (!original) throw new Error("Deno.serve is missing");
  let captured: ServeHandler | undefined;
  const standIn = (...args: unknown[]) => {
    const handler = args.find((arg) => typeof arg === "function") ??
      (args[0] as { handler?: unknown } | undefined)?.handler;
    if (typeof handler !== "function") throw new Error("Deno.serve was called without a handler");
    captured ??= handler as ServeHandler;
    return idleServer();
  };
  Object.defineProperty(Deno, "serve", {
    configurable: true,
    enumerable: original.enumerable,
    writable: true,
    value: standIn,
  });
  try {
    await import(entrypoint.href);
  } finally {
    Object.defineProperty(Deno, "serve", original);
  }
  if (!captured) throw new Error(`${entrypoint.pathname} did not call Deno.serve`);
  return captured;
}

// What Deno.serve returns, for a server that is never started (the host listens instead).
function idleServer(): Deno.HttpServer<Deno.NetAddr> {
  const server = {
    addr: { transport: "tcp", hostname: "127.0.0.1", port: 0 } as Deno.NetAddr,
    finished: new Promise<void>(() => {}),
    shutdown: () => Promise.resolve(),
    ref: () => {},
    unref: () => {},
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
  return server as unknown as Deno.HttpServer<Deno.NetAddr>;
}

/** Loads every function folder of `functionsDir` (folders starting with `_` are shared code). */
export async function loadFunctions(
  functionsDir: URL,
  configToml: URL | null = new URL("../config.toml", functionsDir),
): Promise<LoadedFunction[]> {
  const config = configToml
    ? parseFunctionConfig(await Deno.readTextFile(configToml).catch(() => ""))
    : new Map<string, FunctionConfig>();
  const names: string[] = [];
  for await (const entry of Deno.readDir(functionsDir)) {
    if (entry.isDirectory && !entry.name.startsWith("_") && !entry.name.startsWith(".")) {
      names.push(entry.name);
    }
  }
  const loaded: LoadedFunction[] = [];
  // One at a time: the Deno.serve stand-in belongs to the import in progress.
  for (const name of names.sort()) {
    const settings = config.get(name);
    const entrypoint = settings?.entrypoint
      ? new URL(settings.entrypoint, configToml ?? functionsDir)
      : new URL(`${name}/index.ts`, functionsDir);
    const fn: LoadedFunction = { name, entrypoint, verifyJwt: settings?.verifyJwt ?? true };
    try {
      fn.handler = await captureServeHandler(entrypoint);
    } catch (error) {
      fn.error = error instanceof Error ? error.message : String(error);
    }
    loaded.push(fn);
  }
  return loaded;
}

function gatewayError(status: number, body: unknown): Response {
  return Response.json(body, { status });
}

/** The path where Supabase Auth publishes a project's JWT signing keys. */
export const JWKS_PATH = "/auth/v1/.well-known/jwks.json";

/**
 * Routes /functions/v1/<name>[/...] to the loaded functions, checking JWTs like the gateway,
 * and answers GET /auth/v1/.well-known/jwks.json with `jwks` when given.
 */
export function createGateway(
  functions: LoadedFunction[],
  options: { jwtSecret: string; jwks?: unknown },
): ServeHandler {
  const byName = new Map(functions.map((fn) => [fn.name, fn]));
  return async (request, info) => {
    if (options.jwks !== undefined && new URL(request.url).pathname === JWKS_PATH) {
      return request.method === "GET" || request.method === "HEAD"
        ? Response.json(options.jwks, { headers: { "cache-control": "max-age=600" } })
        : gatewayError(405, { error: { code: "method_not_allowed", message: "use GET" } });
    }
    const name = /^\/functions\/v1\/([^/]+)(?:\/.*)?$/.exec(new URL(request.url).pathname)?.[1];
    const fn = name ? byName.get(name) : undefined;
    if (!fn) {
      return gatewayError(404, { error: { code: "not_found", message: "Function not found" } });
    }
    if (!fn.handler) {
      return gatewayError(503, {
        error: {
          code: "function_boot_error",
          message: `Function ${fn.name} failed to start: ${fn.error}`,
        },
      });
    }
    // The gateway lets CORS preflights through; every other call needs a valid JWT.
    if (fn.verifyJwt && request.method !== "OPTIONS") {
      const bearer = /^Bearer\s+(\S+)$/i.exec(request.headers.get("authorization") ?? "")?.[1];
      if (!bearer) return gatewayError(401, { msg: "Error: Missing authorization header" });
      if (!await verifyJwt(bearer, options.jwtSecret)) {
        return gatewayError(401, { msg: "Invalid JWT" });
      }
    }
    // The gateway tells the function who called (checkout limits pending orders per address).
    const forwarded = new Headers(request.headers);
    const address = info.remoteAddr;
    if ("hostname" in address) {
      const earlier = request.headers.get("x-forwarded-for");
      const caller = address.hostname;
      forwarded.set("x-forwarded-for", earlier ? `${earlier}, ${caller}` : caller);
    }
    try {
      // A new Request from parts: `new Request(request, …)` would read request.signal, which
      // Deno warns about (its legacy abort behaviour); no function uses the signal.
      const forwardedRequest = new Request(request.url, {
        method: request.method,
        headers: forwarded,
        body: request.body,
        redirect: request.redirect,
      });
      return await fn.handler(forwardedRequest, info);
    } catch (error) {
      console.error(`functions-host: ${fn.name} threw:`, error);
      return gatewayError(500, {
        error: { code: "internal_error", message: "The function failed unexpectedly" },
      });
    }
  };
}

/** A running functions host. */
export interface FunctionsHost {
  /** e.g. http://127.0.0.1:54321 (the functions are under /functions/v1/). */
  url: string;
  functions: LoadedFunction[];
  close(): Promise<void>;
}

/** Options of {@link startFunctionsHost}. */
export interface FunctionsHostOptions {
  port: number;
  functionsDir?: URL;
  jwtSecret?: string;
  /** Served at /auth/v1/.well-known/jwks.json (the local project's signing keys). */
  jwks?: unknown;
  /** Called once the host listens, before the functions are loaded (they may need its URL). */
  onListening?: (url: string) => void;
}

/** Serves on 127.0.0.1:`port` (0: a free port), then loads the functions behind it. */
export async function startFunctionsHost(options: FunctionsHostOptions): Promise<FunctionsHost> {
  const functionsDir = options.functionsDir ??
    new URL("../supabase/functions/", import.meta.url);
  let gateway: ServeHandler = () => gatewayError(503, { error: { code: "starting" } });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: options.port, onListen: () => {} },
    (request, info) => gateway(request, info),
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  try {
    options.onListening?.(url);
    const functions = await loadFunctions(functionsDir);
    gateway = createGateway(functions, {
      jwtSecret: options.jwtSecret ?? LOCAL_JWT_SECRET,
      jwks: options.jwks,
    });
    return { url, functions, close: () => server.shutdown() };
  } catch (error) {
    await server.shutdown();
    throw error;
  }
}

if (import.meta.main) {
  const port = Number(Deno.env.get("PORT") || "54321");
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`Cannot start the functions host: PORT must be 0-65535`);
  }
  const jwksText = Deno.env.get("SUPABASE_JWKS");
  const host = await startFunctionsHost({
    port,
    jwtSecret: Deno.env.get("SUPABASE_JWT_SECRET") || LOCAL_JWT_SECRET,
    jwks: jwksText ? JSON.parse(jwksText) : undefined,
    // What the platform gives every function: the project's URL, here this host's.
    onListening: (url) => {
      if (!Deno.env.get("SUPABASE_URL")) Deno.env.set("SUPABASE_URL", url);
    },
  });
  for (const fn of host.functions) {
    const auth = fn.verifyJwt ? "JWT checked by the gateway" : "checks its caller itself";
    console.log(
      fn.handler
        ? `functions-host: ${fn.name} (${auth})`
        : `functions-host: ${fn.name} FAILED to load: ${fn.error}`,
    );
  }
  // start.ts and the browser test wait for this line.
  console.log(`functions-host: listening on ${host.url}/functions/v1/`);
  const stop = () => host.close().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
