/**
 * `npm start` from a checkout the `postgres` user cannot reach (root's home is 0700 on Debian, so
 * is a `mktemp -d` folder): initdb and the server run as `postgres`, so the cluster must live
 * where that user can reach it. The test copies this working tree into such a folder, runs
 * `npm start` there on free ports, makes one real guest checkout with the publishable key it
 * prints and one signed-in checkout with a token from `npm run token` (ES256), then stops it
 * with SIGINT.
 *
 * It starts a PostgreSQL of its own (the one `npm start` makes), not the pipeline's database.
 */
import assert from "node:assert/strict";
import { DEMO_EVENT_ID, DEMO_TIERS } from "../scripts/lib/local.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const START_TIMEOUT_MS = 90_000;
const STOP_TIMEOUT_MS = 30_000;
const PG_CTL = "/usr/lib/postgresql/15/bin/pg_ctl";

async function run(cmd: string, args: string[], cwd = ROOT): Promise<Deno.CommandOutput> {
  return await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
}

/** Copies the working tree (tracked and untracked, not ignored files) into `target`. */
async function copyCheckout(target: string): Promise<void> {
  const listed = await run("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
  assert.equal(listed.code, 0, new TextDecoder().decode(listed.stderr));
  const files = new TextDecoder().decode(listed.stdout).split("\0").filter(Boolean);
  for (const file of files) {
    const info = await Deno.lstat(`${ROOT}/${file}`).catch(() => null);
    if (!info?.isFile) continue; // deleted in the working tree
    await Deno.mkdir(`${target}/${file}`.replace(/\/[^/]+$/, ""), { recursive: true });
    await Deno.copyFile(`${ROOT}/${file}`, `${target}/${file}`);
  }
  // The npm tools as they are installed here (npm start would otherwise run npm ci).
  await Deno.symlink(await Deno.realPath(`${ROOT}/node_modules`), `${target}/node_modules`);
}

function freePorts(count: number): number[] {
  const listeners = Array.from(
    { length: count },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  listeners.forEach((l) => l.close());
  return ports;
}

async function portAcceptsConnections(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return true;
  } catch {
    return false;
  }
}

/** Collects a child's stdout and stderr as they come, and resolves when a line matches. */
function watchOutput(child: Deno.ChildProcess) {
  let text = "";
  const waiters: { pattern: RegExp; resolve: () => void }[] = [];
  const pump = async (stream: ReadableStream<Uint8Array<ArrayBuffer>>) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      for (const waiter of waiters.filter((w) => w.pattern.test(text))) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  };
  const done = Promise.all([pump(child.stdout), pump(child.stderr)]);
  return {
    text: () => text,
    done,
    until(pattern: RegExp): Promise<void> {
      if (pattern.test(text)) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ pattern, resolve }));
    },
  };
}

function timeout(ms: number, what: string): { promise: Promise<never>; clear: () => void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms / 1000} s`)), ms);
  });
  return { promise, clear: () => clearTimeout(timer) };
}

/** Where the copy's cluster is: `.local/postgres`, or the folder that link points to. */
async function clusterDir(checkout: string): Promise<string> {
  const local = `${checkout}/.local/postgres`;
  const info = await Deno.lstat(local).catch(() => null);
  return info?.isSymlink ? await Deno.readLink(local) : local;
}

Deno.test({
  name:
    "npm start runs from a checkout postgres cannot reach, serves a checkout, SIGINT stops its cluster",
  // As another user, initdb runs as that user, who can reach their own checkout.
  ignore: Deno.uid() !== 0,
  async fn() {
    const checkout = await Deno.makeTempDir({ prefix: "npm-start-test-" });
    let child: Deno.ChildProcess | null = null;
    let cluster: string | null = null;
    try {
      await Deno.chmod(checkout, 0o700);
      const reach = await run("runuser", ["-u", "postgres", "--", "test", "-x", checkout]);
      assert.notEqual(reach.code, 0, "precondition: postgres cannot reach the copy");
      await copyCheckout(checkout);

      const [db, functions, storefront, stripe] = freePorts(4) as [number, number, number, number];
      const env = Object.fromEntries(
        // Nothing that points npm start at another database or Stripe.
        Object.entries(Deno.env.toObject()).filter(([name]) =>
          !name.startsWith("PG") &&
          !["DATABASE_URL", "STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET"]
            .includes(name)
        ),
      );
      child = new Deno.Command("npm", {
        args: ["start"],
        cwd: checkout,
        clearEnv: true,
        env: {
          ...env,
          DB_PORT: String(db),
          PORT: String(functions),
          STOREFRONT_PORT: String(storefront),
          LOCAL_STRIPE_PORT: String(stripe),
          RECONCILE_INTERVAL_SECONDS: "0",
        },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const output = watchOutput(child);
      const started = timeout(START_TIMEOUT_MS, "npm start was not up");
      try {
        await Promise.race([
          output.until(/Local stack is up/),
          child.status.then((s) => {
            throw new Error(`npm start exited with ${s.code}`);
          }),
          started.promise,
        ]);
      } catch (error) {
        throw new Error(`${(error as Error).message}:\n${output.text()}`);
      } finally {
        started.clear();
      }
      cluster = await clusterDir(checkout);

      // One real request: a guest checkout through the functions host, the database and the
      // local Stripe server, with the publishable key the banner prints (no JWT anywhere).
      const publishableKey = /Publishable\s+(sb_publishable_\S+)/.exec(output.text())?.[1];
      assert.ok(publishableKey, `the banner prints the publishable key:\n${output.text()}`);
      assert.doesNotMatch(output.text(), /sb_secret_/, "the secret key is never printed");
      assert.match(output.text(), new RegExp(`-H 'apikey: ${publishableKey}'`), "the curl line");
      // One ticket of the demo event, as the storefront asks for it.
      const buy = (fn: string, headers: Record<string, string>, buyer = {}) =>
        fetch(`http://127.0.0.1:${functions}/functions/v1/${fn}`, {
          method: "POST",
          headers: {
            apikey: publishableKey,
            "content-type": "application/json",
            "idempotency-key": `npm-start-test-${crypto.randomUUID()}`,
            ...headers,
          },
          body: JSON.stringify({
            eventId: DEMO_EVENT_ID,
            items: [{ tierId: DEMO_TIERS.general, quantity: 1 }],
            ...buyer,
          }),
        });
      const response = await buy("guest-checkout", {}, { email: "guest@example.com" });
      const body = await response.json();
      assert.equal(response.status, 201, JSON.stringify(body));
      assert.ok(
        String(body.url).startsWith(`http://127.0.0.1:${stripe}/`),
        `the session is the local Stripe server's: ${body.url}`,
      );

      // `npm run token` signs a user's token with the local ES256 key: enhanced-checkout takes it.
      const minted = await new Deno.Command("npm", {
        args: ["run", "-s", "token"],
        cwd: checkout,
        clearEnv: true,
        env: { ...env, DB_PORT: String(db), PORT: String(functions) },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const token = new TextDecoder().decode(minted.stdout).trim();
      assert.equal(minted.code, 0, new TextDecoder().decode(minted.stderr));
      assert.equal(JSON.parse(atob(token.split(".")[0]!)).alg, "ES256");
      const signedIn = await buy("enhanced-checkout", { authorization: `Bearer ${token}` });
      const signedInBody = await signedIn.json();
      assert.equal(signedIn.status, 201, JSON.stringify(signedInBody));

      child.kill("SIGINT");
      const stopped = timeout(STOP_TIMEOUT_MS, "npm start did not stop after SIGINT");
      try {
        await Promise.race([child.status, stopped.promise]);
      } finally {
        stopped.clear();
      }
      await output.done;
      child = null;
      assert.match(output.text(), /stopping the local PostgreSQL/);
      assert.equal(
        await Deno.lstat(`${cluster}/data/postmaster.pid`).then(() => true, () => false),
        false,
        `the cluster in ${cluster} is stopped`,
      );
      assert.equal(await portAcceptsConnections(db), false, "nothing listens on the db port");
      assert.equal(await portAcceptsConnections(functions), false, "the functions host stopped");
    } finally {
      if (child) {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already gone.
        }
        await child.status;
      }
      cluster ??= await clusterDir(checkout);
      if (await Deno.lstat(`${cluster}/data/postmaster.pid`).then(() => true, () => false)) {
        await run("runuser", [
          "-u",
          "postgres",
          "--",
          PG_CTL,
          "-D",
          `${cluster}/data`,
          "-m",
          "immediate",
          "stop",
        ]);
      }
      await Deno.remove(cluster, { recursive: true }).catch(() => {});
      await Deno.remove(checkout, { recursive: true });
    }
  },
});
