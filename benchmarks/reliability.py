"""The README's reliability table, from a run of the reliability tests: `make reliability`.

Runs the bad-input, listing, fault and stop tests (real tritonserver, Ray, Prefect and files) with
EMOFRAME_RELIABILITY_RECORD set, so each test writes down what it observed (tests/reliability.py): what
became of every awkward file, and for every fault the frames lost, rows duplicated and healthy videos left
failed, counted with DuckDB against each video's decoded frame count. If any test fails nothing is written.
Figures go to docs/reliability.json, stamped with the commit, and the README shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published import ROOT, git_state, write_readme_block  # noqa: E402

JSON_PATH = ROOT / "docs" / "reliability.json"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
TESTS = ["tests/test_bad_input.py", "tests/test_sources.py", "tests/test_faults.py", "tests/test_stops.py"]


def measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.jsonl"
        env = {**os.environ, "EMOFRAME_RELIABILITY_RECORD": str(record), "PYTHONPATH": str(ROOT)}
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
                             env=env)
        if res.returncode != 0:
            raise SystemExit(f"the reliability tests failed (exit {res.returncode}): nothing written")
        rows = [json.loads(line) for line in record.read_text().splitlines()]
    return {"inputs": [r for r in rows if r["kind"] == "input"], "faults": [r for r in rows if r["kind"] == "fault"],
            "tests": TESTS}


def render(data: dict) -> str:
    lines = ["| input | outcome |", "|---|---|"]
    lines += [f"| {r['case']} | {r['outcome']} |" for r in data["inputs"]]
    lines += ["", "| fault | outcome | frames lost | rows duplicated | healthy videos left failed |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['outcome']} | {r['lost']} | {r['duplicated']} | {r['healthy_failed']} |"
              for r in data["faults"]]
    s = data["stamp"]
    lines += ["", f"Recorded by `make reliability` (`benchmarks/reliability.py`) at commit `{s['commit'][:12]}` "
                  f"({s['date']}) from a run of {', '.join(f'`{t}`' for t in data['tests'])}: "
                  f"{len(data['inputs'])} inputs, {len(data['faults'])} faults; figures in `docs/reliability.json`."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", action="store_true", help="only re-render the README from docs/reliability.json")
    a = ap.parse_args()
    if a.render:
        write_readme_block(START, END, render(json.loads(JSON_PATH.read_text())))
        return 0
    git = git_state()
    if git["dirty"]:
        print("the tree has uncommitted changes: commit first (published figures name their commit)",
              file=sys.stderr)
        return 1
    data = measure()
    data["stamp"] = {"commit": git["head"], "date": date.today().isoformat()}
    JSON_PATH.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    write_readme_block(START, END, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
