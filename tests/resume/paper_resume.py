"""fedmoe-paper --checkpoint / --resume, end to end (issue 16, section 2).

A small sweep (two settings, the paper's methods and a personalised-FL baseline, early stopping) is run
once without interruption. Then the same sweep is killed again and again and resumed each time until it
completes, and its final JSON must have bitwise the results of the uninterrupted run:
- killed by the test hook FEDMOE_PAPER_CRASH_AT at the k-th save of each process, after half of the
  file was written, after the temporary file was synced, or after the rename (so mid-write kills are
  covered), cycling k and the phase;
- killed by SIGKILL from outside after a random delay, resumed on 1 or 2 threads.
Then: a completed sweep resumes without training and writes the same results; a checkpoint is refused
by a run with other flags (naming the flag), by --checkpoint on a directory that holds one, and when
damaged; --resume needs a checkpoint.

Usage: python3 paper_resume.py FEDMOE_PAPER DATA_DIR [WORK_DIR]
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

paper, data = sys.argv[1], sys.argv[2]
work = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="fedmoe-resume-")
os.makedirs(work, exist_ok=True)

SWEEP = ["--data", data, "--clients", "4", "--clients-per-round", "2", "--train-per-client", "30",
         "--val-per-client", "20", "--test-per-client", "20", "--p", "0.5", "1.0", "--opt-out", "0.5",
         "--rounds", "8", "--round-check", "2", "--round-patience", "2", "--max-epochs", "6", "--epoch-check", "2",
         "--global-test", "50", "--methods", "global", "specialist", "finetuned", "mixture", "mixture-prior", "ditto",
         "--strategy", "fedadam", "--checkpoint-every", "2"]


def run(args, threads=1, env=None, expect=0, timeout=600):
    e = dict(os.environ)
    e.pop("FEDMOE_PAPER_CRASH_AT", None)
    e.update(env or {})
    p = subprocess.run([paper] + args + ["--threads", str(threads)], env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    if expect is not None and p.returncode != expect:
        sys.exit("unexpected exit %d (expected %d) of %s\nstderr:\n%s" % (p.returncode, expect, args, p.stderr))
    return p


def results(path):
    doc = json.load(open(path))
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in doc["federation"]]
    assert doc["results"] and strip, "no results in " + path
    return doc["results"], doc["groups"], strip


def same(a, b, what):
    if results(a) != results(b):
        sys.exit(what + ": the results differ from the uninterrupted run's")
    print(what + ": bitwise the uninterrupted run's results")


reference = os.path.join(work, "reference.json")
t = time.time()
run(SWEEP + ["--json", reference])
reference_seconds = time.time() - t

# 1. Killed at the k-th save of every process, at each phase of the write.
ck = os.path.join(work, "hook")
out = os.path.join(work, "hook.json")
plan = [(k, phase) for k in (2, 3, 5) for phase in ("half", "synced", "renamed")]
kills, first = 0, True
while True:
    k, phase = plan[kills % len(plan)]
    p = run(SWEEP + (["--checkpoint", ck] if first else ["--resume", ck]) + ["--json", out],
            threads=1 + kills % 2, env={"FEDMOE_PAPER_CRASH_AT": "%d:%s" % (k, phase)}, expect=None)
    first = False
    if p.returncode == 0:
        break
    if p.returncode != -signal.SIGKILL:
        sys.exit("expected SIGKILL from FEDMOE_PAPER_CRASH_AT or success, got exit %d\n%s" % (p.returncode, p.stderr))
    assert not os.path.exists(out), "a killed run wrote its JSON"
    kills += 1
    assert kills < 200, "no progress after 200 kills"
assert kills >= 9, "expected the sweep to be killed at every (k, phase) at least once, got %d kills" % kills
same(reference, out, "killed %d times at the k-th save (k in 2, 3, 5; mid-write, synced, renamed)" % kills)

# 2. SIGKILL from outside at random moments.
rng = random.Random(16)
ck = os.path.join(work, "signal")
out = os.path.join(work, "signal.json")
kills, first = 0, True
while True:
    args = [paper] + SWEEP + (["--checkpoint", ck] if first else ["--resume", ck]) + ["--json", out,
                                                                                     "--threads", str(1 + kills % 2)]
    first = False
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Late enough for the data to load and some work to be saved, at a different moment each time.
        _, err = proc.communicate(timeout=rng.uniform(0.25, 0.6) * reference_seconds)
        if proc.returncode != 0:
            sys.exit("a resumed run failed (exit %d):\n%s" % (proc.returncode, err))
        break
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        assert kills < 200, "no progress after 200 kills"
assert kills >= 2, "expected at least two kills, got %d" % kills
same(reference, out, "killed %d times by SIGKILL at random moments" % kills)

# 3. Secure aggregation (its round counter binds the keys and masks) and SCAFFOLD (client control variates),
#    when fedmoe-paper was built with libsodium.
# The baselines run neither secure aggregation nor SCAFFOLD.
NO_BASELINE = [a for a in SWEEP if a != "ditto"]
SECURE = NO_BASELINE + ["--secure-aggregation", "--client-failure", "0.2"]
secure_reference = os.path.join(work, "secure-reference.json")
p = run(SECURE + ["--json", secure_reference], expect=None)
if p.returncode == 0:
    for extra, name in (([], "secure aggregation"), (["scaffold"], "SCAFFOLD")):
        args = SECURE if not extra else [a if a != "fedadam" else "scaffold" for a in NO_BASELINE]
        ref = secure_reference if not extra else os.path.join(work, "scaffold-reference.json")
        if extra:
            run(args + ["--json", ref])
        ck3 = os.path.join(work, "ck-" + name.split()[0].lower())
        out3 = os.path.join(work, "out-" + name.split()[0].lower() + ".json")
        kills, first = 0, True
        while True:
            p = run(args + (["--checkpoint", ck3] if first else ["--resume", ck3]) + ["--json", out3],
                    env={"FEDMOE_PAPER_CRASH_AT": "%d:%s" % plan[kills % len(plan)]}, expect=None)
            first = False
            if p.returncode == 0:
                break
            assert p.returncode == -signal.SIGKILL, p.stderr
            kills += 1
            assert kills < 200, "no progress after 200 kills"
        same(ref, out3, "%s, killed %d times" % (name, kills))
else:
    assert "libsodium" in p.stderr, p.stderr
    print("secure aggregation: not built (no libsodium), its resume is not tested")

# 4. A complete sweep's checkpoint: --resume rewrites the outputs without training.
again = os.path.join(work, "again.json")
t = time.time()
run(SWEEP + ["--resume", ck, "--json", again])
same(reference, again, "resumed after the end (%.1f s)" % (time.time() - t))

# 5. Refusals, each before any work and without an output.
never = os.path.join(work, "never.json")
other = [a if a != "8" else "9" for a in SWEEP]  # --rounds 9
p = run(other + ["--resume", ck, "--json", never], expect=1)
assert "--rounds: the checkpoint has 8, this run has 9" in p.stderr, p.stderr
p = run(SWEEP + ["--checkpoint", ck, "--json", never], expect=1)
assert "already holds a checkpoint" in p.stderr and "--resume" in p.stderr, p.stderr
empty = os.path.join(work, "empty")
os.makedirs(empty, exist_ok=True)
p = run(SWEEP + ["--resume", empty, "--json", never], expect=1)
assert "no checkpoint there" in p.stderr, p.stderr
p = run(SWEEP + ["--checkpoint", empty, "--resume", ck, "--json", never], expect=1)
assert "got both" in p.stderr, p.stderr
state = os.path.join(ck, "sweep.state")
raw = bytearray(open(state, "rb").read())
raw[len(raw) // 2] ^= 0x20
open(state, "wb").write(bytes(raw))
p = run(SWEEP + ["--resume", ck, "--json", never], expect=1)
assert "checksum mismatch" in p.stderr or "truncated" in p.stderr, p.stderr
assert not os.path.exists(never), "a refused run wrote its JSON"
print("refused: other flags (named), an existing checkpoint, no checkpoint, both flags, a damaged file")

if len(sys.argv) <= 3:
    shutil.rmtree(work)
