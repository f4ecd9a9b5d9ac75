// End-to-end latency from a local edit in one page to the same user's other
// page seeing it in its store: page A sets `custom/bench/value` to n (the
// persister writes it with SetUserData), user-service commits it and streams
// it, page B's persister applies it. Both times are taken in the pages, on the
// shared wall clock (performance.timeOrigin + performance.now()), one change at
// a time. Run: `cd examples/web && npm run bench` (after scripts/setup and
// `cargo build -p user-service`). Prints p50/p90/p99/max over CHANGES (100).
import { createUser, freshClerkId, startStack } from "../test/support.js";

const CHANGES = Number(process.env["CHANGES"] ?? 100);

type BenchWindow = Window & {
  userdata: { store: { setCell(t: string, r: string, c: string, v: number): void; addCellListener(t: string, r: string, c: string, l: (...a: unknown[]) => void): string; getCell(t: string, r: string, c: string): unknown } };
  seen?: Record<number, number>;
  sent?: Record<number, number>;
};

function percentile(sorted: number[], p: number): number {
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, index)] ?? NaN;
}

const stack = await startStack();
try {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const a = await stack.open(clerkId);
  const b = await stack.open(clerkId);
  await b.evaluate(() => {
    const w = window as unknown as BenchWindow;
    w.seen = {};
    w.userdata.store.addCellListener("custom", "bench", "value", () => {
      const n = w.userdata.store.getCell("custom", "bench", "value");
      if (typeof n === "number" && w.seen && !(n in w.seen)) w.seen[n] = performance.timeOrigin + performance.now();
    });
  });
  // Warm-up: the first write also creates the row.
  for (let n = -3; n < CHANGES; n++) {
    await a.evaluate((value) => {
      const w = window as unknown as BenchWindow;
      w.sent ??= {};
      w.sent[value] = performance.timeOrigin + performance.now();
      w.userdata.store.setCell("custom", "bench", "value", value);
    }, n);
    await b.waitForFunction((value) => (window as unknown as BenchWindow).seen?.[value] !== undefined, n, { timeout: 10_000, polling: 1 });
  }
  const sent = await a.evaluate(() => (window as unknown as BenchWindow).sent ?? {});
  const seen = await b.evaluate(() => (window as unknown as BenchWindow).seen ?? {});
  const latencies: number[] = [];
  for (let n = 0; n < CHANGES; n++) {
    const s = sent[n];
    const r = seen[n];
    if (s !== undefined && r !== undefined) latencies.push(r - s);
  }
  latencies.sort((x, y) => x - y);
  const fmt = (ms: number) => `${ms.toFixed(1)} ms`;
  console.log(`write in page A -> store update in page B, ${latencies.length} changes, one at a time`);
  console.log(`p50 ${fmt(percentile(latencies, 50))}  p90 ${fmt(percentile(latencies, 90))}  p99 ${fmt(percentile(latencies, 99))}  max ${fmt(latencies.at(-1) ?? NaN)}  min ${fmt(latencies[0] ?? NaN)}`);
} finally {
  await stack.close();
}
