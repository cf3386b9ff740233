/**
 * Re-renders BENCHMARKS.md from the last run's .bench-artifacts/results.json, without measuring
 * anything (for changes to the report's wording; `npm run bench` does both).
 *
 * Run: deno run -A bench/render.ts
 */
import { renderReport, type Results } from "./report.ts";

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const results = JSON.parse(
  await Deno.readTextFile(`${root}/.bench-artifacts/results.json`),
) as Results;
const path = results.quick
  ? `${root}/.bench-artifacts/BENCHMARKS.quick.md`
  : `${root}/BENCHMARKS.md`;
await Deno.writeTextFile(path, renderReport(results));
const fmt = await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", path] }).output();
if (!fmt.success) throw new Error("deno fmt failed on the report");
console.log(`wrote ${path.replace(`${root}/`, "")}`);
