#!/usr/bin/env python3
"""Summarises a bench/ab.sh folder: webhook throughput, p99 and CPU per event
of each A and B run, and the ratio B/A of the means (B/A of each adjacent
pair too, since runs alternate)."""
import json
import pathlib
import statistics
import sys


def load(folder, side):
    runs = []
    for path in sorted(pathlib.Path(folder).glob(f"{side}-*.json")):
        report = json.loads(path.read_text())[0]
        runs.append(report)
    return runs


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "."
    a, b = load(folder, "a"), load(folder, "b")
    if not a or not b:
        sys.exit(f"no a-*.json and b-*.json in {folder}")
    names = [s["name"] for s in a[0]["webhooks"]]
    print("| scenario | A events/s (runs) | B events/s (runs) | B/A | B/A per pair | A p99 ms | B p99 ms |")
    print("|---|---|---|---:|---|---:|---:|")
    for name in names:
        def rates(runs):
            return [next(s["rate"] for s in r["webhooks"] if s["name"] == name) for r in runs]

        def p99(runs):
            return statistics.mean(next(s["p99_us"] for s in r["webhooks"] if s["name"] == name) for r in runs) / 1000

        ra, rb = rates(a), rates(b)
        pairs = ", ".join(f"{y / x:.2f}" for x, y in zip(ra, rb))
        print(
            f"| {name} | {statistics.mean(ra):.0f} ({', '.join(f'{x:.0f}' for x in ra)}) "
            f"| {statistics.mean(rb):.0f} ({', '.join(f'{x:.0f}' for x in rb)}) "
            f"| {statistics.mean(rb) / statistics.mean(ra):.2f} | {pairs} | {p99(a):.1f} | {p99(b):.1f} |"
        )
    cpu_a = statistics.mean(r["webhook_cpu_us_per_event"] for r in a)
    cpu_b = statistics.mean(r["webhook_cpu_us_per_event"] for r in b)
    print(f"\nCPU of gateway + user-service per user.created: A {cpu_a:.0f} µs, B {cpu_b:.0f} µs ({cpu_b / cpu_a:.2f}×)")
    bad = [(r["lost_or_wrong_after_webhooks"], r["lost_or_wrong_after_mixed"]) for r in a + b]
    print(f"Lost or wrong users (created, mixed) per run: {bad}")


if __name__ == "__main__":
    main()
