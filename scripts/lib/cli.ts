/** How the scripts behind `npm start` and `npm run token` run. */

/** Runs a script's `main`: a failure prints its message alone (no stack trace) and exits 1. */
export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (error) {
    console.error(error instanceof Error ? error.message : error);
    Deno.exit(1);
  }
}
