#!/usr/bin/env python3
"""The README's strategy and robustness tables on real Fashion-MNIST, by running fedmoe-paper.

Part 1 (--part strategies): every --strategy on 100 clients, 10 per round, opt-out 0, for majority
p = 0.8 and Dirichlet alpha = 0.3: the global model's accuracy on the full test set and the round of
its best validation loss.
Part 2 (--part attacks): every --aggregator under every --attack with 20 % of each round's sampled
clients attacking, on majority p = 0.8 (11 clients per round, so that the f = 2 attackers of each
round are within every rule's bound, Bulyan's n >= 4f + 3 included).

Each run writes its JSON into --out; a run whose JSON exists is not repeated (so a sweep can be
resumed). Prints markdown tables and writes DIR/strategies.csv, DIR/attacks.csv and, when gnuplot is
installed, DIR/attacks.png (a heat map of the global-test accuracy). Progress on stderr.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time

STRATEGIES = ["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedprox", "scaffold"]
# Rows of the strategy table: (label, flags). SCAFFOLD runs local SGD (lr 0.05); FedAvg with the same
# local SGD is the control that tells the control variates' effect from the optimizer's.
STRATEGY_ROWS = [(s, ["--strategy", s]) for s in STRATEGIES] + [
    ("fedavg, local SGD 0.05", ["--strategy", "fedavg", "--local-optimizer", "sgd", "--lr-fedavg", "0.05"])]
AGGREGATORS = ["mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geometric-median"]
ATTACKS = ["none", "sign-flip", "scale", "noise", "label-flip", "alie"]
PARTITIONS = {"majority p=0.8": ["--partition", "majority", "--p", "0.8"],
              "dirichlet a=0.3": ["--partition", "dirichlet", "--alpha", "0.3", "--p", "0.8"]}


def run(binary, out_dir, name, flags, threads):
    path = os.path.join(out_dir, name + ".json")
    if not os.path.exists(path):
        start = time.time()
        cmd = [binary, "--json", path, "--threads", str(threads)] + flags
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit("strategy_sweep: %s failed (exit %d):\n%s" % (" ".join(cmd), done.returncode, done.stderr))
        print("strategy_sweep: %s: %.0f s" % (name, time.time() - start), file=sys.stderr, flush=True)
    with open(path) as f:
        doc = json.load(f)
    row = next(r for r in doc["results"] if r["method"] == "global")
    fed = doc["federation"][0]
    per_round = fed["per_round"]
    return {"global_test_acc": row["global_test_acc"], "local_test_acc": row["local_test_acc"],
            "rounds": fed["rounds"], "best_round": fed["best_round"],
            "discarded": sum(per_round["discarded"]), "rejected": sum(per_round["rejected"]),
            "seconds": fed["seconds"]}


def heat_map(out_dir, rows):
    """attacks.png: aggregator x attack, global-test accuracy %. gnuplot runs in out_dir on fixed,
    relative file names, so no path of the user's reaches its script."""
    if shutil.which("gnuplot") is None:
        print("strategy_sweep: gnuplot not found (apt-get install gnuplot-nox): no attacks.png", file=sys.stderr)
        return
    with open(os.path.join(out_dir, "attacks.dat"), "w") as f:
        for i, agg in enumerate(AGGREGATORS):
            for j, atk in enumerate(ATTACKS):
                r = next(x for x in rows if x["aggregator"] == agg and x["attack"] == atk)
                f.write("%d %d %.1f\n" % (j, i, 100 * r["global_test_acc"]))
            f.write("\n")
    xt = ", ".join('"%s" %d' % (a, j) for j, a in enumerate(ATTACKS))
    yt = ", ".join('"%s" %d' % (a, i) for i, a in enumerate(AGGREGATORS))
    script = "\n".join([
        "set terminal pngcairo size 900,520", "set output 'attacks.png'",
        "set title 'Global-test accuracy % under 20 % attackers (Fashion-MNIST, 100 clients, 11 per round)'",
        "set xtics (%s)" % xt, "set ytics (%s)" % yt, "set cbrange [0:100]", "set palette rgb 33,13,10",
        "unset key", "set xrange [-0.5:%d.5]" % (len(ATTACKS) - 1), "set yrange [-0.5:%d.5] reverse" % (len(AGGREGATORS) - 1),
        "plot 'attacks.dat' using 1:2:3 with image, '' using 1:2:(sprintf('%.1f', $3)) with labels font ',10'", ""])
    done = subprocess.run(["gnuplot"], input=script, text=True, cwd=out_dir, capture_output=True)
    if done.returncode != 0:
        sys.exit("strategy_sweep: gnuplot failed: " + done.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="build/release/examples/fedmoe-paper")
    ap.add_argument("--out", default="strategy-sweep")
    ap.add_argument("--part", choices=["strategies", "attacks", "all"], default="all")
    ap.add_argument("--rounds", type=int, default=300, help="cap on rounds (strategies)")
    ap.add_argument("--attack-rounds", type=int, default=150, help="cap on rounds (attacks)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    common = ["--clients", "100", "--opt-out", "0", "--methods", "global", "--global-test", "0",
              "--round-patience", "5", "--seed", str(a.seed)]

    if a.part in ("strategies", "all"):
        rows = []
        for part, pflags in PARTITIONS.items():
            for label, sflags in STRATEGY_ROWS:
                name = "strategy-%s-%s" % (label.replace(", ", "-").replace(" ", "-"), part.split()[0])
                r = run(a.binary, a.out, name, common + pflags + ["--clients-per-round", "10", "--rounds",
                                                                  str(a.rounds), "--round-check", "20"] + sflags,
                        a.threads)
                rows.append(dict(partition=part, strategy=label, **r))
        with open(os.path.join(a.out, "strategies.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
        print("\n| strategy | " + " | ".join("%s: global test %%, best round" % p for p in PARTITIONS) + " |")
        print("|---|" + "---:|" * len(PARTITIONS))
        for s, _ in STRATEGY_ROWS:
            cells = []
            for p in PARTITIONS:
                r = next(x for x in rows if x["strategy"] == s and x["partition"] == p)
                cells.append("%.1f (round %d of %d)" % (100 * r["global_test_acc"], r["best_round"], r["rounds"]))
            print("| %s | %s |" % (s, " | ".join(cells)))

    if a.part in ("attacks", "all"):
        rows = []
        # Run order: the rules whose arithmetic is fixed first, the order-statistics rules last.
        for agg in sorted(AGGREGATORS, key=lambda g: g in ("median", "trimmed-mean", "bulyan")):
            for atk in ATTACKS:
                flags = common + PARTITIONS["majority p=0.8"] + [
                    "--clients-per-round", "11", "--rounds", str(a.attack_rounds), "--round-check", "15",
                    "--aggregator", agg, "--byzantine-bound", "2", "--trim-fraction", "0.2", "--attack", atk]
                if atk != "none":
                    flags += ["--attackers", "0.2", "--attack-scale", "10"]
                r = run(a.binary, a.out, "attack-%s-%s" % (agg, atk), flags, a.threads)
                rows.append(dict(aggregator=agg, attack=atk, **r))
        with open(os.path.join(a.out, "attacks.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
        print("\n| aggregator | " + " | ".join(ATTACKS) + " |")
        print("|---|" + "---:|" * len(ATTACKS))
        for agg in AGGREGATORS:
            base = next(x for x in rows if x["aggregator"] == agg and x["attack"] == "none")["global_test_acc"]
            cells = []
            for atk in ATTACKS:
                r = next(x for x in rows if x["aggregator"] == agg and x["attack"] == atk)
                acc = r["global_test_acc"]
                cells.append("%.1f" % (100 * acc) if atk == "none" else
                             "%.1f (%d %%)" % (100 * acc, round(100 * acc / base)))
            print("| %s | %s |" % (agg, " | ".join(cells)))
        heat_map(a.out, rows)


if __name__ == "__main__":
    main()
