"""Summarise `cxr-review import` JSON lines: counts, and each rejected file with its reason."""

import collections
import json
import sys

counts = collections.Counter()
for line in sys.stdin:
    r = json.loads(line)
    counts[r["status"]] += 1
    if r["status"] == "rejected":
        print(f"  rejected {r['file']}: {r['reason']}")
print("sample import:", ", ".join(f"{n} {k}" for k, n in counts.items()))
