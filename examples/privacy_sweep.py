#!/usr/bin/env python3
"""The README's privacy-utility table on real Fashion-MNIST, by running fedmoe-paper.

1,000 clients with 40 train / 10 val / 50 test samples each (1,000 x 100 samples fit the 60,000
training images), majority p = 0.8, opt-out 0, Poisson sampling at q = 0.1 (100 expected clients per
round), a fixed number of rounds, DP-FedAvg with adaptive clipping (target quantile 0.5, initial C
0.1) at several noise multipliers z, against the same federation without DP (uniform sampling of 100
clients, the sample-weighted mean). Reports epsilon at delta = 1e-5 (RDP accountant, improved
conversion) and the global model's, the fine-tuned model's and the mixture's accuracy on the clients'
local test sets and on 2,000 global test images.

Each run writes its JSON into --out; a run whose JSON exists is not repeated (so a sweep can be
resumed). Prints a markdown table, writes DIR/privacy.csv and, with gnuplot, DIR/privacy.png
(accuracy against epsilon). Progress on stderr.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time

COMMON = ["--clients", "1000", "--train-per-client", "40", "--val-per-client", "10", "--test-per-client", "50",
          "--p", "0.8", "--opt-out", "0", "--client-fraction", "0.1", "--round-check", "10", "--max-epochs", "10",
          "--global-test", "2000", "--methods", "global", "finetuned", "mixture"]
NOISE = [0.5, 0.7, 1.0, 1.5, 2.5]
METHODS = ["global", "finetuned", "mixture"]


def run(binary, out_dir, name, flags, threads):
    path = os.path.join(out_dir, name + ".json")
    if not os.path.exists(path):
        start = time.time()
        cmd = [binary, "--json", path, "--threads", str(threads)] + flags
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit("privacy_sweep: %s failed (exit %d):\n%s" % (" ".join(cmd), done.returncode, done.stderr))
        print("privacy_sweep: %s: %.0f s" % (name, time.time() - start), file=sys.stderr, flush=True)
    with open(path) as f:
        doc = json.load(f)
    fed = doc["federation"][0]
    row = {"run": name, "rounds": fed["rounds"], "seconds": fed["seconds"]}
    dp = fed.get("dp")
    row["noise_multiplier"] = dp["noise_multiplier"] if dp else 0
    row["epsilon"] = dp["epsilon"] if dp else float("inf")
    row["final_clip"] = fed["per_round"]["clip_norm"][-1] if dp else None
    for r in doc["results"]:
        if r["method"] in METHODS:
            row[r["method"] + "_local"] = r["local_test_acc"]
            row[r["method"] + "_global"] = r["global_test_acc"]
    return row


def plot(out_dir, rows):
    """privacy.png: accuracy against epsilon. gnuplot runs in out_dir on fixed, relative file names."""
    if shutil.which("gnuplot") is None:
        print("privacy_sweep: gnuplot not found (apt-get install gnuplot-nox): no privacy.png", file=sys.stderr)
        return
    with open(os.path.join(out_dir, "privacy.dat"), "w") as f:
        for r in rows:
            if r["noise_multiplier"] > 0:
                f.write("%g %g %g %g %g\n" % (r["epsilon"], 100 * r["global_global"], 100 * r["mixture_local"],
                                               100 * r["mixture_global"], 100 * r["finetuned_local"]))
    base = next(r for r in rows if r["noise_multiplier"] == 0)
    script = """set terminal pngcairo size 800,500
set output 'privacy.png'
set logscale x
set xlabel 'epsilon at delta = 1e-5'
set ylabel 'accuracy (%%)'
set key bottom right
set grid
plot 'privacy.dat' using 1:2 with linespoints title 'global model, global test', \\
     'privacy.dat' using 1:3 with linespoints title 'mixture, local test', \\
     'privacy.dat' using 1:4 with linespoints title 'mixture, global test', \\
     'privacy.dat' using 1:5 with linespoints title 'fine-tuned, local test', \\
     %g with lines dashtype 2 title 'global model without DP, global test'
""" % (100 * base["global_global"])
    done = subprocess.run(["gnuplot"], input=script, text=True, cwd=out_dir, capture_output=True)
    if done.returncode != 0:
        sys.exit("privacy_sweep: gnuplot failed: " + done.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default="build/release/examples/fedmoe-paper")
    p.add_argument("--out", default="privacy-sweep")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rounds = ["--rounds", str(args.rounds)]
    rows = [run(args.binary, args.out, "no-dp", COMMON + rounds, args.threads)]
    for z in NOISE:
        flags = COMMON + rounds + ["--dp-noise", str(z), "--dp-clip", "0.1", "--dp-adaptive-quantile", "0.5"]
        rows.append(run(args.binary, args.out, "dp-z%g" % z, flags, args.threads))
    print("| noise z | epsilon (delta 1e-5) | final C | global: global test | fine-tuned: local / global | "
          "mixture: local / global |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        eps = "no DP" if r["noise_multiplier"] == 0 else "%.2f" % r["epsilon"]
        clip = "" if r["final_clip"] is None else "%.2f" % r["final_clip"]
        print("| %s | %s | %s | %.1f | %.1f / %.1f | %.1f / %.1f |" % (
            "-" if r["noise_multiplier"] == 0 else "%g" % r["noise_multiplier"], eps, clip,
            100 * r["global_global"], 100 * r["finetuned_local"], 100 * r["finetuned_global"],
            100 * r["mixture_local"], 100 * r["mixture_global"]))
    with open(os.path.join(args.out, "privacy.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    plot(args.out, rows)


if __name__ == "__main__":
    main()
