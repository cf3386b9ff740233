/**
 * Serves handlers at /functions/v1/<name> on loopback, the path Supabase's gateway uses, so a
 * real supabase-js client can call them with functions.invoke.
 */

/** A running functions server. */
export interface FunctionsServer {
  /** Base URL to give createClient, e.g. http://127.0.0.1:PORT */
  url: string;
  close(): Promise<void>;
}

/** Serves `routes` (function name → handler) until closed. */
export function serveFunctions(
  routes: Record<string, (request: Request) => Promise<Response>>,
): FunctionsServer {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (request) => {
    const name = /^\/functions\/v1\/([a-z0-9-]+)\/?$/.exec(new URL(request.url).pathname)?.[1];
    const handler = name ? routes[name] : undefined;
    if (!handler) {
      return Response.json({ error: { code: "not_found", message: "No such function" } }, {
        status: 404,
      });
    }
    return handler(request);
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    close: () => server.shutdown(),
  };
}
