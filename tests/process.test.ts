/**
 * scripts/lib/process.ts: how the local stack and the bench stop their child processes.
 */
import assert from "node:assert/strict";
import { terminate } from "../scripts/lib/process.ts";

/** Runs `script` in sh; resolves once it printed its first line (it is then past its set-up). */
async function spawnShell(script: string): Promise<Deno.ChildProcess> {
  const child = new Deno.Command("sh", {
    args: ["-c", script],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  await reader.read();
  reader.releaseLock();
  return child;
}

Deno.test("terminate stops a child with SIGTERM and waits for it", async () => {
  const status = await terminate(await spawnShell("echo ready; exec sleep 30"));
  assert.equal(status.signal, "SIGTERM");
});

Deno.test("terminate sends SIGKILL to a child that ignores SIGTERM, after the grace period", async () => {
  const started = performance.now();
  const status = await terminate(await spawnShell("trap '' TERM; echo ready; exec sleep 30"), 300);
  assert.equal(status.signal, "SIGKILL");
  assert.ok(performance.now() - started >= 250, "it waited for the grace period first");
});

Deno.test("terminate of a child that already exited returns its status", async () => {
  const child = await spawnShell("echo ready; exit 3");
  await child.status;
  const status = await terminate(child);
  assert.equal(status.code, 3);
});
