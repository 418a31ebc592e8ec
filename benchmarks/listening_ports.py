"""What a local `emoframe label` run listens on: every TCP port opened by the run's processes, with its bind
address, sampled while the run labels a short clip. Writes docs/ports.json and the README's table.

    .venv/bin/python benchmarks/listening_ports.py          # measure, print; write from a clean tree only
    .venv/bin/python benchmarks/listening_ports.py --render # README from docs/ports.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published import git_state, write_readme_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "docs" / "ports.json"
START, END = "<!-- ports-table:start -->", "<!-- ports-table:end -->"

# A process's role, from its command line: first match wins.
ROLES = (("tritonserver", "Triton (embedded)"), ("triton_python_backend_stub", "Triton backend stub"),
         ("uvicorn", "Prefect server (temporary)"), ("gcs_server", "Ray GCS"), ("raylet", "Ray raylet"),
         ("dashboard/agent.py", "Ray dashboard agent"), ("runtime_env/agent", "Ray runtime-env agent"),
         ("dashboard/dashboard.py", "Ray dashboard"), ("dashboard/", "Ray dashboard module"),
         ("log_monitor", "Ray log monitor"), ("monitor.py", "Ray autoscaler monitor"),
         ("default_worker.py", "Ray worker"), ("ray::DashboardAgent", "Ray dashboard agent"),
         ("ray::RuntimeEnvAgent", "Ray runtime-env agent"), ("ray::", "Ray worker"),
         ("emoframe.flows.cli.main", "emoframe (driver)"))


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()) or p.name()
    except psutil.Error:
        return ""


def _role(cmd: str) -> str:
    return next((role for key, role in ROLES if key in cmd), cmd.split(" ")[0].rsplit("/", 1)[-1] or "?")


def _run_processes(driver: int) -> list[psutil.Process]:
    """The driver, its descendants, and the Ray processes of its session (some are not descendants): Ray
    names the session folder after the driver's pid."""
    mine = []
    for p in psutil.process_iter():
        cmd = _cmd(p)
        if p.pid == driver or f"_{driver}/" in cmd or f"_{driver} " in cmd or cmd.endswith(f"_{driver}"):
            mine.append(p)
    try:
        mine += psutil.Process(driver).children(recursive=True)
    except psutil.Error:
        pass
    return list({p.pid: p for p in mine}.values())


def _sample(driver: int) -> dict[tuple[str, str], set[str]]:
    """(role, bind address) -> ports, for every listening TCP socket of the run's processes."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p in _run_processes(driver):
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                # Triton's HTTP port shows as an IPv4-mapped address: the same loopback.
                found[(_role(_cmd(p)), c.laddr.ip.removeprefix("::ffff:"))].add(str(c.laddr.port))
    return found


def measure() -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.media import write_video

    with tempfile.TemporaryDirectory() as tmp:
        clip = write_video(Path(tmp) / "in" / "clip.mp4", 600, 15, audio_seconds=40)
        log = Path(tmp) / "run.log"
        proc = subprocess.Popen([sys.executable, "-m", "emoframe.flows.cli.main", "label", str(clip.parent), "--out",
                                 str(Path(tmp) / "out"), "--faces", "centred"], cwd=ROOT, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        while proc.poll() is None:
            for key, ports in _sample(proc.pid).items():
                seen[key] |= ports
            time.sleep(0.5)
        if proc.returncode != 0:
            raise SystemExit(f"the run failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    rows = [{"process": role, "bind": ip, "ports": len(ports),
             "fixed": sorted(p for p in ports if p in ("8265", "44217", "44227", "6379"))}
            for (role, ip), ports in sorted(seen.items())]
    import ray

    return {"rows": rows, "ray": ray.__version__}


def render(data: dict) -> str:
    lines = ["| process | bind address | ports | fixed port numbers |", "|---|---|---|---|"]
    for r in data["rows"]:
        bind = {"0.0.0.0": "0.0.0.0 (all interfaces)", "::": ":: (all interfaces)"}.get(r["bind"], r["bind"])
        lines.append(f"| {r['process']} | {bind} | {r['ports']} | {', '.join(r['fixed']) or 'none (random)'} |")
    s = data["stamp"]
    lines += ["", f"Measured by `benchmarks/listening_ports.py` at commit `{s['commit'][:12]}` ({s['date']}, "
                  f"Ray {data['ray']}): a local `emoframe label` run on one clip, its process tree sampled every "
                  "0.5 s; figures in `docs/ports.json`."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", action="store_true", help="only re-render the README from docs/ports.json")
    a = ap.parse_args()
    if a.render:
        write_readme_block(START, END, render(json.loads(JSON_PATH.read_text())))
        return 0
    git = git_state()
    data = measure()
    data["stamp"] = {"commit": git["head"], "date": date.today().isoformat()}
    print(render(data))
    if git["dirty"]:
        print("the tree has uncommitted changes: table printed, not written (commit first)", file=sys.stderr)
        return 1
    JSON_PATH.write_text(json.dumps(data, indent=1) + "\n")
    write_readme_block(START, END, render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
