"""Per-module summary of a `make mutation` run: killed, survived, equivalent (listed in
EQUIVALENT.md with a reason), unreachable on the machine of the run (listed in UNREACHABLE.md
with a reason: code that only a GPU or a system feature this machine lacks runs) and the share
of the other mutants killed, as a Markdown table and as JSON; the share with the unreachable
ones counted as survivors is given too. The survivors not accounted for are listed by name
(``mutmut show NAME`` in the scratch folder prints the change).

Usage: summary.py WORK_DIR EQUIVALENT_MD [--unreachable UNREACHABLE_MD] [--json PATH]"""

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

from mutmut.stats import status_by_exit_code

# mutmut's own reading of a mutant's exit code; a timeout, a crash (segfault) or a catch by the
# type checker counts as killed, a mutant no test reaches as surviving, one not run (an
# interrupted run, skipped) as neither.
KILLED = ("killed", "timeout", "segfault", "caught by type check")
SURVIVING = ("survived", "no tests", "suspicious")


def verdict(code) -> str:
    return status_by_exit_code[code]


def listed_mutants(path: Path) -> dict[str, str]:
    """``- `mutant name`: reason`` lines of EQUIVALENT.md (or UNREACHABLE.md)."""
    names = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^- `([\w.]+__mutmut_\d+)`: (.+)$", line.strip())
        if m:
            names[m.group(1)] = m.group(2)
    return names


def summarise(work: Path, equivalent: dict[str, str], unreachable: dict[str, str]) -> dict:
    modules = {}
    seen = {}  # mutant name -> verdict, over all modules
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(work / "mutants")).removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        counts = Counter()
        survivors = []
        for name, code in sorted(codes.items()):
            v = seen[name] = verdict(code)
            if v in SURVIVING and name in equivalent:
                v = "equivalent"
            elif v in SURVIVING and name in unreachable:
                v = "unreachable"
            elif v in SURVIVING:
                survivors.append(name)
            counts[v] += 1
        caught = sum(counts[k] for k in KILLED)
        relevant = caught + sum(counts[k] for k in SURVIVING)
        modules[module] = dict(
            mutants=sum(counts.values()), killed=counts["killed"], timeout=counts["timeout"],
            crashed=counts["segfault"], survived=counts["survived"] + counts["suspicious"],
            no_tests=counts["no tests"], equivalent=counts["equivalent"], unreachable=counts["unreachable"],
            not_run=sum(counts.values()) - relevant - counts["equivalent"] - counts["unreachable"],
            killed_share=_share(caught, relevant),
            killed_share_with_unreachable=_share(caught, relevant + counts["unreachable"]), survivors=survivors,
        )
    # Listed but killed by a test since, or gone: the lists must say so.
    stale = sorted(name for name in {**equivalent, **unreachable} if name not in seen or seen[name] in KILLED)
    return dict(date=str(date.today()), machine=_machine(), modules=modules, equivalent_but_not_surviving=stale)


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def table(summary: dict) -> str:
    rows = ["| module | mutants | killed | timeout or crash | survived | no test | equivalent | unreachable here "
            "| killed of the rest | killed, unreachable counted |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    keys = ("mutants", "killed", "timeout", "crashed", "survived", "no_tests", "equivalent", "unreachable", "not_run")
    total = Counter()
    for module, m in summary["modules"].items():
        rows.append(_row(f"`{module}`", m))
        total.update({k: m[k] for k in keys})
    relevant = total["mutants"] - total["equivalent"] - total["unreachable"] - total["not_run"]
    caught = total["killed"] + total["timeout"] + total["crashed"]
    rows.append(_row("all", dict(total, killed_share=_share(caught, relevant),
                                 killed_share_with_unreachable=_share(caught, relevant + total["unreachable"]))))
    return "\n".join(rows)


def _share(caught: int, of: int) -> float | None:
    return caught / of if of else None


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _row(name: str, m: dict) -> str:
    return (f"| {name} | {m['mutants']} | {m['killed']} | {m['timeout'] + m['crashed']} | {m['survived']} | "
            f"{m['no_tests']} | {m['equivalent']} | {m['unreachable']} | {_percent(m['killed_share'])} | "
            f"{_percent(m['killed_share_with_unreachable'])} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("equivalent", type=Path)
    parser.add_argument("--unreachable", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    unreachable = listed_mutants(args.unreachable) if args.unreachable else {}
    summary = summarise(args.work, listed_mutants(args.equivalent), unreachable)
    print(table(summary))
    for module, m in summary["modules"].items():
        if m["not_run"]:
            print(f"{module}: {m['not_run']} mutants not run (an interrupted run, or skipped)")
        for name in m["survivors"]:
            print(f"survivor: {name}")
    for name in summary["equivalent_but_not_surviving"]:
        print(f"EQUIVALENT.md or UNREACHABLE.md lists {name}, which no longer survives (or no longer exists): "
              "remove it")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
