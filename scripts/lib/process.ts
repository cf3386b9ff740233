/**
 * Child-process helpers shared by the local stack (scripts/lib/local-stack.ts) and the bench
 * (bench/lib.ts).
 */

/** How long a child gets to exit after SIGTERM before it is sent SIGKILL. */
export const STOP_GRACE_MS = 5_000;

/** Stops a child: SIGTERM, then SIGKILL if it is still running after `graceMs`; waits for it. */
export async function terminate(
  child: Deno.ChildProcess,
  graceMs: number = STOP_GRACE_MS,
): Promise<Deno.CommandStatus> {
  sendSignal(child, "SIGTERM");
  const timer = setTimeout(() => sendSignal(child, "SIGKILL"), graceMs);
  try {
    return await child.status;
  } finally {
    clearTimeout(timer);
  }
}

function sendSignal(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // Already gone.
  }
}
