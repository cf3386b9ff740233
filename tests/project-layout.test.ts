/**
 * Guards on the Supabase layout that the CLI does not check until deploy time.
 */
import assert from "node:assert/strict";

const root = new URL("../supabase/", import.meta.url);

async function functionFolders(): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(new URL("functions/", root))) {
    if (entry.isDirectory && !entry.name.startsWith("_")) names.push(entry.name);
  }
  return names.sort();
}

/** [functions.<name>] blocks of config.toml, with their keys (a minimal TOML reader). */
async function functionBlocks(): Promise<Map<string, Record<string, string>>> {
  const text = await Deno.readTextFile(new URL("config.toml", root));
  const blocks = new Map<string, Record<string, string>>();
  let current: Record<string, string> | null = null;
  for (const line of text.split("\n")) {
    const header = /^\[functions\.([a-z0-9-]+)\]\s*$/.exec(line);
    if (header) {
      current = {};
      blocks.set(header[1]!, current);
      continue;
    }
    if (/^\[/.test(line)) current = null;
    const pair = /^([a-z_]+)\s*=\s*"?([^"]*)"?\s*$/.exec(line);
    if (current && pair) current[pair[1]!] = pair[2]!;
  }
  return blocks;
}

Deno.test("every function folder has a config.toml block whose entrypoint exists", async () => {
  const blocks = await functionBlocks();
  const folders = await functionFolders();
  assert.deepEqual([...blocks.keys()].sort(), folders);
  for (const [name, block] of blocks) {
    assert.equal(block.entrypoint, `./functions/${name}/index.ts`, name);
    await Deno.stat(new URL(block.entrypoint!, root));
    assert.equal(block.import_map, "../deno.json", `${name} uses the root import map`);
  }
});

Deno.test("every function turns the gateway's JWT check off: each checks its caller itself", async () => {
  // A publishable or secret key is not a JWT: with verify_jwt = true the gateway would refuse
  // a new project's storefront and cron job. tests/credentials.test.ts checks each function's
  // own check, endpoint by endpoint and credential by credential.
  const blocks = await functionBlocks();
  assert.ok(blocks.size > 0);
  for (const [name, block] of blocks) assert.equal(block.verify_jwt, "false", name);
});

Deno.test("_shared has no index.ts (the CLI would deploy it) and functions never import each other", async () => {
  await assert.rejects(Deno.stat(new URL("functions/_shared/index.ts", root)));
  for (const name of await functionFolders()) {
    const source = await Deno.readTextFile(new URL(`functions/${name}/index.ts`, root));
    for (const match of source.matchAll(/from\s+"(\.\.\/[^"]+)"/g)) {
      assert.match(match[1]!, /^\.\.\/_shared\//, `${name} imports ${match[1]}`);
    }
  }
});

Deno.test("only index.ts files read the environment", async () => {
  const shared = new URL("functions/_shared/", root);
  for await (const entry of Deno.readDir(shared)) {
    const source = await Deno.readTextFile(new URL(entry.name, shared));
    assert.doesNotMatch(source, /Deno\.env\.\w+\(/, `${entry.name} reads the environment`);
  }
});

/** Files below `dir` (relative to the repository root), skipping node_modules and dot folders. */
async function repoFiles(dir: URL, prefix = ""): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.name === "node_modules" || entry.name.startsWith(".")) continue;
    const path = `${prefix}${entry.name}`;
    if (entry.isDirectory) {
      files.push(...await repoFiles(new URL(`${entry.name}/`, dir), `${path}/`));
    } else if (entry.isFile) files.push(path);
  }
  return files;
}

Deno.test("every Deno test file sits in a folder that npm test's deno test runs", async () => {
  const repo = new URL("../", import.meta.url);
  const pipeline = await Deno.readTextFile(new URL("scripts/test.sh", repo));
  const command = /"\$DENO" test(?:\s|\\)+--allow-all --ignore=tests\/browser(?:\s|\\)+([^|]+)\|\|/
    .exec(
      pipeline,
    );
  assert.ok(command, "scripts/test.sh runs deno test --allow-all --ignore=tests/browser <folders>");
  const folders = command[1]!.trim().split(/\s+/);
  const files = (await repoFiles(repo)).filter((path) => path.endsWith(".ts"));
  // deno test discovers only *_test.ts, *.test.ts and test.ts: `foo-test.ts` is silently skipped.
  assert.deepEqual(files.filter((path) => path.endsWith("-test.ts")), []);
  const tests = files.filter((path) => /(?:_test|\.test)\.ts$|(?:^|\/)test\.ts$/.test(path));
  assert.ok(tests.includes("local/stripe/stripe-server.test.ts"));
  for (const path of tests) {
    if (path.startsWith("tests/browser/")) continue; // the pipeline's browser step
    assert.ok(folders.some((folder) => path.startsWith(folder)), `${path} is outside ${folders}`);
  }
});

Deno.test("every TypeScript file is named in kebab-case, Deno tests as <name>.test.ts", async () => {
  const repo = new URL("../", import.meta.url);
  const files = (await repoFiles(repo)).filter((path) => path.endsWith(".ts"));
  const misnamed = files.filter((path) =>
    !/^[a-z0-9]+(-[a-z0-9]+)*(\.test)?\.ts$/.test(path.split("/").at(-1)!)
  );
  assert.deepEqual(misnamed, [], "one naming convention for files (folders of functions are URLs)");
});
