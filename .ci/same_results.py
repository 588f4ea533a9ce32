"""Exit non-zero unless two fedmoe-paper JSON files have bitwise equal results, groups and federation
entries (apart from each entry's wall-clock "seconds"). Usage: python3 same_results.py A.json B.json WHAT"""
import json
import sys

a, b = (json.load(open(p)) for p in sys.argv[1:3])
what = sys.argv[3] if len(sys.argv) > 3 else "the two runs"
strip = lambda fed: [{k: v for k, v in s.items() if k != "seconds"} for s in fed]
assert a["results"] and a["federation"], "no results in " + sys.argv[1]
assert a["results"] == b["results"] and a["groups"] == b["groups"], what + ": results differ"
assert strip(a["federation"]) == strip(b["federation"]), what + ": federation differs"
print(what + ": results, groups and federation bitwise equal")
