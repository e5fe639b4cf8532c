"""Prints the tables of scripts/bench.sh from its raw results.

Usage: report.py RESULTS_TSV RSS_TSV TITLE

RESULTS_TSV: round workload system requests duration_s bytes p50_us p99_us cpu_s err_socket
err_status bg_cpu_s (one line per wrk run, with a header line; bg_cpu_s is CPU time that other
processes than the proxy, the members and wrk used during the run). A run during which other
processes used more than a quarter of a core is "disturbed", and so is its round of that workload
for every system: the medians are taken over the rounds in which no system was disturbed when
there are any, over all rounds otherwise, so that every system is compared over the same rounds. RSS_TSV: system hwm_kib rss_before_kib
rss_after_kib opened wanted. Every figure in the tables is the median over the rounds.
Exits 1 when a run got a non-2xx answer or completed no request.
"""

import csv
import statistics
import sys

# "before": an earlier tether build measured in the same run (bench.sh --baseline BIN).
SYSTEMS = ["tether", "before", "nginx", "haproxy"]
WORKLOADS = [
    ("get", "1 GET small, sessionless"),
    ("sticky", "2 GET small, sessional"),
    ("post", "3 POST 4 KiB"),
    ("1m", "4 GET 1 MiB"),
    ("close", "5 new conn per request"),
    ("paced", "P paced GET (fixed load)"),
]
# A run is disturbed when other processes used more than this share of a core meanwhile.
DISTURBED = 0.25
# Issue 5: tether / the better of nginx and HAProxy, in req/s per proxy CPU second.
TARGETS = {"get": 1.1, "sticky": 1.1, "post": 1.0, "1m": 1.0, "close": 1.0}


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def bg_share(row):
    dur = float(row["duration_s"])
    return float(row.get("bg_cpu_s") or 0) / dur if dur else 0.0


def median(values):
    return statistics.median(values) if values else float("nan")


def summarize(rows):
    """workload -> system -> dict of medians."""
    out = {}
    for w, _ in WORKLOADS:
        of_w = [r for r in rows if r["workload"] == w]
        rounds = {r["round"] for r in of_w}
        quiet_rounds = rounds - {r["round"] for r in of_w if bg_share(r) > DISTURBED}
        counted = quiet_rounds or rounds
        for s in SYSTEMS:
            runs = [r for r in of_w if r["system"] == s]
            if not runs:
                continue
            used = [r for r in runs if r["round"] in counted]
            rps, per_cpu, us_cpu, p50, p99, bpr, bg = [], [], [], [], [], [], []
            errors = sum(int(r["err_socket"]) + int(r["err_status"]) for r in runs)
            for r in used:
                n, dur, cpu = int(r["requests"]), float(r["duration_s"]), float(r["cpu_s"])
                rps.append(n / dur if dur else 0.0)
                if cpu > 0 and n:
                    per_cpu.append(n / cpu)
                    us_cpu.append(cpu / n * 1e6)
                p50.append(float(r["p50_us"]) / 1000)
                p99.append(float(r["p99_us"]) / 1000)
                bpr.append(int(r["bytes"]) / n if n else 0)
                bg.append(100 * bg_share(r))
            out.setdefault(w, {})[s] = {
                "name": s,
                "runs": f"{len(used)}/{len(runs)}",
                "rps": median(rps),
                "per_cpu": median(per_cpu),
                "us_cpu": median(us_cpu),
                "p50": median(p50),
                "p99": median(p99),
                "p99_by_round": {r["round"]: float(r["p99_us"]) / 1000 for r in used},
                "bytes_per_req": median(bpr),
                "errors": errors,
                "bg": max(bg),
            }
    return out


def paced_spread(t, others):
    """Whether a paced p99 verdict is more than noise: the range of each system's p99 over the
    counted rounds, and in how many of them tether had the lowest p99 of its round."""
    nan = float("nan")
    rounds = [r for r in t["p99_by_round"] if all(r in o["p99_by_round"] for o in others)]
    lowest = sum(
        t["p99_by_round"][r] <= min(o["p99_by_round"][r] for o in others) for r in rounds
    )
    ranges = ", ".join(
        f"{m['name']} {min(m['p99_by_round'].values(), default=nan):.3f}"
        f"-{max(m['p99_by_round'].values(), default=nan):.3f}"
        for m in [t, *others]
    )
    return f"tether lowest in {lowest} of {len(rounds)} counted rounds; p99 ms range: {ranges}"


def ratio(a, b):
    if a is None or b is None or not b or a != a or b != b:
        return "   -  "
    return f"{a / b:6.2f}"


def main():
    rows = read_tsv(sys.argv[1])
    rss = read_tsv(sys.argv[2]) if len(sys.argv) > 2 else []
    title = sys.argv[3] if len(sys.argv) > 3 else ""
    table = summarize(rows)
    rounds = max((int(r["round"]) for r in rows), default=0)

    print(f"\n== {title}; median of {rounds} round(s) ==\n")
    head = (
        f"{'workload':<26} {'system':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'req/s per proxy CPU-s':>22} {'CPU us/req':>11} {'errors':>7} {'bg CPU':>7} {'runs':>5}"
    )
    print(head)
    print("-" * len(head))
    noisy = False
    for w, label in WORKLOADS:
        if w not in table:
            continue
        for s in SYSTEMS:
            m = table[w].get(s)
            if not m:
                continue
            print(
                f"{label:<26} {s:<8} {m['rps']:>9.0f} {m['p50']:>8.3f} {m['p99']:>8.3f}"
                f" {m['per_cpu']:>22.0f} {m['us_cpu']:>11.1f} {m['errors']:>7}"
                f" {m['bg']:>6.0f}% {m['runs']:>5}"
            )
            label = ""
            noisy = noisy or m["bg"] > 100 * DISTURBED
    print(
        "errors: socket errors + non-2xx over all rounds; bg CPU: the most CPU (% of one core)"
        " other processes used during a run counted; runs: runs counted / runs made (a round in"
        " which other processes used > 25% of a core during any system's run is left out for"
        " every system, when any other round is left)"
    )
    if noisy:
        print("WARNING: some figures come from runs disturbed by other work on the machine")
    print()
    head = (
        f"{'workload':<26} {'':>4}{'req/s per CPU':>15} {'raw req/s':>10} {'p99':>8}"
        f"   (tether / other; p99: lower is better)"
    )
    print(head)
    print("-" * len(head))
    verdicts = []
    for w, label in WORKLOADS:
        t = table.get(w, {}).get("tether")
        if not t:
            continue
        for other in ("before", "nginx", "haproxy"):
            o = table[w].get(other)
            if not o:
                continue
            print(
                f"{label:<26} {'/' + other[:2]:>4}{ratio(t['per_cpu'], o['per_cpu']):>15}"
                f" {ratio(t['rps'], o['rps']):>10} {ratio(t['p99'], o['p99']):>8}"
            )
            label = ""
        others = [table[w][o] for o in ("nginx", "haproxy") if o in table[w]]
        if w in TARGETS and others:
            best = max(o["per_cpu"] for o in others)
            got = t["per_cpu"] / best if best else float("nan")
            verdicts.append(
                f"{w}: tether/best req/s per CPU {got:.2f} (target >= {TARGETS[w]:.2f})"
                f" {'met' if got >= TARGETS[w] else 'NOT met'}"
            )
        if w == "paced" and others:
            worst_ok = min(o["p99"] for o in others)
            verdicts.append(
                f"paced: tether p99 {t['p99']:.3f} ms vs best other {worst_ok:.3f} ms"
                f" {'met' if t['p99'] <= worst_ok else 'NOT met'}"
            )
            verdicts.append("  " + paced_spread(t, others))

    if rss:
        print()
        head = (
            f"{'system':<8} {'peak RSS under load':>20} {'RSS idle':>10} {'RSS + idle conns':>17}"
            f" {'conns':>11} {'KiB per idle conn':>18}"
        )
        print(head)
        print("-" * len(head))
        for r in rss:
            opened = int(r["opened"])
            before, after = int(r["rss_before_kib"]), int(r["rss_after_kib"])
            per = (after - before) / opened if opened else float("nan")
            print(
                f"{r['system']:<8} {int(r['hwm_kib']):>17} KiB {before:>6} KiB {after:>13} KiB"
                f" {opened:>5}/{int(r['wanted']):<5} {per:>18.2f}"
            )
            if r["system"] == "tether" and opened:
                verdicts.append(
                    f"idle: tether {per:.2f} KiB per idle keep-alive connection (target <= 10)"
                    f" {'met' if per <= 10 else 'NOT met'}"
                )
    if verdicts:
        print("\nissue 5 targets (informative):")
        for v in verdicts:
            print("  " + v)

    bad = [
        f"{r['system']} {r['workload']} round {r['round']}: "
        f"{r['requests']} requests, {r['err_status']} non-2xx"
        for r in rows
        if int(r["requests"]) == 0 or int(r["err_status"]) > 0
    ]
    if bad:
        print("\nFAILED runs (non-2xx answers or no request completed):")
        for b in bad:
            print("  " + b)
        sys.exit(1)


if __name__ == "__main__":
    main()
