"""Per-module summary of a `make mutation` run: killed, survived, equivalent (listed in
EQUIVALENT.md with a reason) and the share of non-equivalent mutants killed, as a Markdown table
and as JSON. The survivors not shown equivalent are listed by name (``mutmut show NAME`` in the
scratch folder prints the change).

Usage: summary.py WORK_DIR EQUIVALENT_MD [--json PATH]"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections import Counter
from datetime import date
from pathlib import Path

# mutmut's exit-code convention (mutmut/stats.py): 1 and 3 killed, 0 survived, 33 and 5 no test
# reached the mutant, 36 and the SIGXCPU codes a timeout (counted as killed: the mutant hung the
# tests), None not checked yet.
KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {36, 24, -24, 152, 255}


def verdict(code) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    if code in TIMEOUT:
        return "timeout"
    return "other"


def equivalent_names(path: Path) -> dict[str, str]:
    """``- `mutant name`: reason`` lines of EQUIVALENT.md."""
    names = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^- `([\w.]+__mutmut_\d+)`: (.+)$", line.strip())
        if m:
            names[m.group(1)] = m.group(2)
    return names


def summarise(work: Path, equivalent: dict[str, str]) -> dict:
    modules = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(work / "mutants")).removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        counts = Counter()
        survivors = []
        for name, code in sorted(codes.items()):
            v = verdict(code)
            if v in ("survived", "no tests") and name in equivalent:
                v = "equivalent"
            elif v in ("survived", "no tests", "other"):
                survivors.append(name)
            counts[v] += 1
        relevant = sum(counts.values()) - counts["equivalent"] - counts["not checked"]
        caught = counts["killed"] + counts["timeout"]
        modules[module] = dict(
            mutants=sum(counts.values()), **{k.replace(" ", "_"): counts[k] for k in
                                              ("killed", "timeout", "survived", "no tests", "equivalent", "other", "not checked")},
            killed_share=caught / relevant if relevant else None, survivors=survivors,
        )
    stale = sorted(set(equivalent) - {n for m in modules.values() for n in m["survivors"]} -
                   {n for meta in (work / "mutants").rglob("*.py.meta")
                    for n, c in json.loads(meta.read_text())["exit_code_by_key"].items() if verdict(c) in ("survived", "no tests")})
    return dict(date=str(date.today()), machine=_machine(),
                modules=modules, equivalent_but_not_surviving=stale)


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def table(summary: dict) -> str:
    rows = ["| module | mutants | killed | timeout | survived | no test | equivalent | killed of non-equivalent |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total = Counter()
    for module, m in summary["modules"].items():
        share = "-" if m["killed_share"] is None else f"{100 * m['killed_share']:.1f}%"
        rows.append(f"| `{module}` | {m['mutants']} | {m['killed']} | {m['timeout']} | {m['survived']} | "
                    f"{m['no_tests']} | {m['equivalent']} | {share} |")
        total.update({k: m[k] for k in ("mutants", "killed", "timeout", "survived", "no_tests", "equivalent", "not_checked")})
    relevant = total["mutants"] - total["equivalent"] - total["not_checked"]
    share = (total["killed"] + total["timeout"]) / relevant if relevant else 0
    rows.append(f"| all | {total['mutants']} | {total['killed']} | {total['timeout']} | {total['survived']} | "
                f"{total['no_tests']} | {total['equivalent']} | {100 * share:.1f}% |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("equivalent", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    summary = summarise(args.work, equivalent_names(args.equivalent))
    print(table(summary))
    for module, m in summary["modules"].items():
        if m["not_checked"]:
            print(f"{module}: {m['not_checked']} mutants not checked (the run was interrupted)")
        for name in m["survivors"]:
            print(f"survivor: {name}")
    for name in summary["equivalent_but_not_surviving"]:
        print(f"EQUIVALENT.md lists {name}, which no longer survives (or no longer exists): remove it")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
