"""Triton serving benchmark: the deployed model through the real tritonserver, CPU instance vs GPU instance.

    .venv/bin/python benchmarks/triton_bench.py [--batches 200] [--cpu-batches 40] [--out PATH]
    .venv/bin/python benchmarks/triton_bench.py --publish          # writes docs/triton_bench.json with a GPU,
                                                                   # docs/triton_bench_cpu.json without (refused
                                                                   # on a dirty tree or outside a git checkout)
    python3 benchmarks/triton_bench.py --out /tmp/t.json --allow-dirty   # a plain copy of the tree (no .git)

model_repo/ is copied into a temp folder (the committed one is never touched). For each row of the run
(``KIND_CPU forward``: a CPU instance serving the exported forward as is, the baseline of the face-reader
split; ``KIND_CPU``: the CPU instance as deployed, each distinct face crop read once; ``KIND_GPU`` when
``torch.cuda.is_available()``) the copy's config is switched with
``emoframe.workers.serving.triton_config.set_instance_kind`` (and ``set_parameter``), EmbeddedTriton serves the
deployed ``model.pt`` with the real ``model.py``, and TritonClient (the workers' client) then:

- checks the server is ready and serves our contract, warms up with ``--warmup`` full batches;
- throughput: ``--batches`` (GPU) / ``--cpu-batches`` (CPU) full batches of MAX_BATCH_SIZE windows through
  the pipelined path (``infer_many``, ``--in-flight`` requests outstanding), best of ``--repeats`` passes:
  windows/s, model frames/s (windows x window) and labelled frames/s (windows x stride: windows overlap by
  window - stride frames when a video is labelled, so each window labels ``stride`` new frames);
- latency: ``--latency-reps`` sequential ``infer`` calls of one full batch, and of one window: p50/p90 ms.

Inputs are valid per the contract (``input_specs``) and shaped like a video's: a batch is consecutive windows
of one stream of frames, each starting ``stride`` frames after the last (so a frame is in window / stride
windows, as when a video is labelled), with a realistic mask mix: most frames have a face and audio; faces
drop out in runs, audio goes silent in runs, and some windows have no audio at all; a masked frame's tensor
is zeros, as the preprocessing leaves it. Face pixels are random (no two frames alike). The same inputs go
to every kind. The CPU row is the
baseline of the ratios (GPU/CPU), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import emoframe.workers.serving.triton_server as triton_server  # noqa: E402
from published import git_state, worktree_hash, write_readme_block  # noqa: E402
from emoframe.training.export import latest_version  # noqa: E402
from emoframe.workers.spec.contract import MAX_BATCH_SIZE, MODEL_NAME, PREPROCESSING, input_specs  # noqa: E402
from emoframe.workers.spec.policy import POLICY  # noqa: E402
from emoframe.workers.inference.triton_client import TritonClient  # noqa: E402
from emoframe.workers.task.triton_nodes import cpu_instance_threads  # noqa: E402
from emoframe.workers.serving.triton_config import set_instance_kind, set_parameter  # noqa: E402
from emoframe.workers.serving.triton_server import EmbeddedTriton  # noqa: E402

MODEL_REPO = ROOT / "model_repo"
PUBLISHED = ROOT / "docs" / "triton_bench.json"  # a run with a GPU row (a lent GPU machine)
PUBLISHED_CPU = ROOT / "docs" / "triton_bench_cpu.json"  # a run without one (the project's 2-core machine)
FORWARD = "KIND_CPU forward"  # the row served without the face-reader split
POOL = 8  # distinct batches, cycled: the inputs stay varied without holding every batch in memory

# Realistic mask mix (per window's span of the stream): a face missing for a run of frames, audio silent for
# a run, stretches without audio, and isolated frames whose face crop is blank.
P_FACE_GAP, P_AUDIO_GAP, P_NO_AUDIO, P_FACE_DROP = 0.25, 0.25, 0.05, 0.03


# -- environment ------------------------------------------------------------------------------------
def ensure_tritonserver() -> Path:
    """The wheel's tritonserver binary (FileNotFoundError with a hint when nvidia-pytriton is absent)."""
    return triton_server.tritonserver_path()


def git_stamp() -> dict[str, Any]:
    """git_state() where the tree is a git checkout; else (a plain copy, no git) the commit is 'unknown'."""
    if not (ROOT / ".git").exists():
        return {"head": "unknown", "dirty": None, "changed": [], "why": f"{ROOT} is not a git checkout (no .git)"}
    try:
        g = git_state()
    except OSError as e:  # no git binary
        return {"head": "unknown", "dirty": None, "changed": [], "why": f"git not runnable: {e}"}
    if not g.get("head"):
        return {**g, "head": "unknown", "dirty": None, "why": "git rev-parse HEAD gave nothing"}
    return g


def cpu_count() -> dict[str, int]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {"os_cpu_count": os.cpu_count() or 0, "usable": usable}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# -- inputs -----------------------------------------------------------------------------------------
def _runs(rng: np.random.Generator, t: int, p_gap: float, mask: np.ndarray) -> None:
    if rng.random() < p_gap:
        n = int(rng.integers(2, t // 2 + 1))
        lo = int(rng.integers(0, t - n + 1))
        mask[lo:lo + n] = False


def make_batch(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``b`` consecutive windows of one stream of frames (``stride`` apart), valid per input_specs, with the
    mask mix above (masked frames are zeros)."""
    specs = {s.name: s for s in input_specs()}
    t, stride = PREPROCESSING.window, POLICY.stride
    starts = [k * stride for k in range(b)]
    n = starts[-1] + t
    face_mask = np.ones(n, bool)
    audio_mask = np.ones(n, bool)
    for lo in range(0, n, t):
        _runs(rng, min(t, n - lo), P_FACE_GAP, face_mask[lo:lo + t])
        if rng.random() < P_NO_AUDIO:
            audio_mask[lo:lo + t] = False
        else:
            _runs(rng, min(t, n - lo), P_AUDIO_GAP, audio_mask[lo:lo + t])
    face_mask &= rng.random(n) >= P_FACE_DROP
    face = rng.integers(0, 256, (n, *specs["face"].shape[1:]), dtype=np.uint8)
    face[~face_mask] = 0
    mel = (rng.normal(size=(n, *specs["mel"].shape[1:])) * 2.0 - 6.0).astype(np.float32)  # log-mel-like values
    mel[~audio_mask] = 0.0
    stream = {"face": face, "face_mask": face_mask, "mel": mel, "audio_mask": audio_mask}
    batch = {name: np.stack([a[lo:lo + t] for lo in starts]) for name, a in stream.items()}
    for name, s in specs.items():  # the contract, not this function, decides what is valid
        a = batch[name]
        assert a.dtype == np.dtype(s.numpy_dtype) and a.shape[1:] == s.shape, (name, a.dtype, a.shape)
    return batch


def batches(pool: list[dict[str, np.ndarray]], n: int) -> Iterator[dict[str, np.ndarray]]:
    return islice(cycle(pool), n)


# -- measuring --------------------------------------------------------------------------------------
def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def latency_ms(client: TritonClient, batch: dict[str, np.ndarray], reps: int) -> dict[str, float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        client.infer(batch)
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50": _pct(times, 50), "p90": _pct(times, 90), "mean": float(np.mean(times)), "reps": reps}


def throughput(client: TritonClient, pool: list[dict[str, np.ndarray]], n: int) -> dict[str, float]:
    windows = n * MAX_BATCH_SIZE
    t = time.perf_counter()
    got = 0
    for out in client.infer_many(batches(pool, n)):
        got += out.shape[0]
    s = time.perf_counter() - t
    if got != windows:
        raise RuntimeError(f"infer_many returned {got} windows for {windows} sent")
    return {"batches": n, "windows": windows, "seconds": s, "windows_per_s": windows / s,
            "model_frames_per_s": windows * PREPROCESSING.window / s,
            "labelled_frames_per_s": windows * POLICY.stride / s}


def label_dir(label: str) -> str:
    return label.lower().replace(" ", "_").replace(",", "")


def bench_kind(r: dict[str, Any], pool: list[dict[str, np.ndarray]], a: argparse.Namespace, workdir: Path) -> None:
    """Fills ``r`` (kind, batches) as it goes, so a failure part-way still leaves what was measured."""
    kind, n_batches, label = r["kind"], r["batches"], r["label"]
    repo = workdir / label_dir(label) / "model_repo"
    shutil.copytree(MODEL_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    set_instance_kind(repo / MODEL_NAME, kind)
    if not r["split"]:
        set_parameter(repo / MODEL_NAME, "face_reader_split", "off")
    log = workdir / label_dir(label) / "tritonserver.log"
    t0 = time.perf_counter()
    with EmbeddedTriton(repo, log_path=log, ready_timeout_s=a.ready_timeout) as srv:
        r["start_s"] = time.perf_counter() - t0
        print(f"  {label}: tritonserver ready in {r['start_s']:.1f} s", flush=True)
        r["split_in_use"] = "reads each distinct crop once" in log.read_text(errors="replace")
        if r["split_in_use"] != r["split"]:
            raise RuntimeError(f"{label}: the face-reader split is {'' if r['split_in_use'] else 'not '}in use "
                               f"(wanted {'on' if r['split'] else 'off'}); see {log}")
        with TritonClient(srv.grpc_url, max_in_flight=a.in_flight, timeout_s=a.request_timeout) as client:
            client.check_ready()
            r["served_version"] = client.served_version()
            t = time.perf_counter()
            for _ in client.infer_many(batches(pool, a.warmup)):
                pass
            r["warmup_s"] = time.perf_counter() - t
            ref = client.infer(pool[0])  # compared across kinds below
            row_sums = ref.sum(axis=-1)
            if not np.all(np.isfinite(ref)) or not np.allclose(row_sums, 1.0, atol=1e-3):
                raise RuntimeError(f"{label}: outputs are not per-frame probabilities (row sums {row_sums.min()}"
                                   f"..{row_sums.max()})")
            r["reference_output"] = ref
            passes = []
            for i in range(a.repeats):
                passes.append(throughput(client, pool, n_batches))
                print(f"  {label}: pass {i + 1}/{a.repeats}: {n_batches} batches in {passes[-1]['seconds']:.2f} s, "
                      f"{passes[-1]['model_frames_per_s']:.0f} model frames/s", flush=True)
            r["throughput"] = max(passes, key=lambda x: x["windows_per_s"])
            r["passes"] = passes
            r["latency_batch_ms"] = latency_ms(client, pool[1 % len(pool)], a.latency_reps)
            one = {k: v[:1] for k, v in pool[2 % len(pool)].items()}
            r["latency_window_ms"] = latency_ms(client, one, a.latency_reps)


# -- report -----------------------------------------------------------------------------------------
def _f(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: dict[str, dict[str, Any]], ratios: dict[str, float]) -> str:
    kinds = list(rows)
    metrics = [
        ("batches timed (x16 windows)", lambda r: str(r["throughput"]["batches"]), None),
        ("tritonserver start s", lambda r: _f(r.get("start_s"), ".1f"), None),
        ("windows/s", lambda r: _f(r["throughput"]["windows_per_s"], ".1f"), "windows_per_s"),
        ("model frames/s (x window)", lambda r: _f(r["throughput"]["model_frames_per_s"], ".0f"), "model_frames_per_s"),
        ("labelled frames/s (x stride)", lambda r: _f(r["throughput"]["labelled_frames_per_s"], ".0f"),
         "labelled_frames_per_s"),
        ("batch of 16 latency p50 ms", lambda r: _f(r["latency_batch_ms"]["p50"], ".2f"), "latency_batch_p50"),
        ("  p90 ms", lambda r: _f(r["latency_batch_ms"]["p90"], ".2f"), None),
        ("one window latency p50 ms", lambda r: _f(r["latency_window_ms"]["p50"], ".2f"), "latency_window_p50"),
        ("  p90 ms", lambda r: _f(r["latency_window_ms"]["p90"], ".2f"), None),
    ]
    head = ["", *kinds] + (["GPU/CPU"] if ratios else [])
    body = []
    for label, fn, key in metrics:
        cells = []
        for k in kinds:
            try:
                cells.append(fn(rows[k]))
            except (KeyError, TypeError):
                cells.append("failed" if "error" in rows[k] else "-")
        if ratios:
            cells.append(f"{ratios[key]:.2f}x" if key in ratios else "")
        body.append([label, *cells])
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: " | ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])  # noqa: E731
    lines = [fmt(head), "-" * len(fmt(head))] + [fmt(r) for r in body]
    return "\n".join(lines)


START, END = "<!-- triton-bench:start -->", "<!-- triton-bench:end -->"
START_CPU, END_CPU = "<!-- triton-bench-cpu:start -->", "<!-- triton-bench-cpu:end -->"


def published_blocks() -> list[tuple[Path, str, str]]:
    return [(PUBLISHED, START, END), (PUBLISHED_CPU, START_CPU, END_CPU)]


def render(report: dict) -> str:
    """The README's table: the published JSON's figures per row, the split/forward and GPU/CPU ratios."""
    rows, st = report["kinds"], report["stamp"]
    columns = [("CPU split/forward", report.get("ratios_split_over_forward") or {}),
               ("GPU/CPU", report.get("ratios_gpu_over_cpu") or {})]
    columns = [(name, r) for name, r in columns if r]
    kinds = [k for k in rows if "error" not in rows[k]]
    lines = ["| | " + " | ".join(kinds + [name for name, _ in columns]) + " |",
             "|---|" + "---|" * (len(kinds) + len(columns))]
    for label, get, key in (
            ("model frames/s", lambda r: f"{r['throughput']['model_frames_per_s']:,.0f}", "model_frames_per_s"),
            ("labelled frames/s (stride 16)", lambda r: f"{r['throughput']['labelled_frames_per_s']:,.0f}",
             "labelled_frames_per_s"),
            ("batch of 16 windows, p50 ms", lambda r: f"{r['latency_batch_ms']['p50']:.1f}", "latency_batch_p50"),
            ("one window, p50 ms", lambda r: f"{r['latency_window_ms']['p50']:.1f}", "latency_window_p50")):
        cells = [get(rows[k]) for k in kinds] + [f"{r[key]:.2f}x" if key in r else "" for _, r in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cpu = st["cpu_count"]["usable"]
    threads = st.get("cpu_instance_threads")  # recorded since the CPU instance runs on a share of the cores
    cpu_use = (f"the CPU instance runs {threads} thread{'s' if threads > 1 else ''} on them (model.py's CPU_SHARE)"
               if threads else "the CPU rows use those cores")
    published = PUBLISHED if "KIND_GPU" in rows else PUBLISHED_CPU
    machine = f"{st['gpu_name']} with " if st["gpu_name"] else "a machine without a GPU, "
    diff = rows.get("KIND_GPU", {}).get("max_abs_diff_vs_cpu")
    agree = f" GPU and CPU probabilities on the same batch differ by at most {diff:.1e}." if diff is not None else ""
    split_diff = rows.get("KIND_CPU", {}).get("max_abs_diff_vs_forward")
    if split_diff is not None:
        agree += (f" `{FORWARD}` serves the exported forward as is (every frame of every window read); the other "
                  f"rows read each distinct face crop once, with probabilities within {split_diff:.1e} of it.")
    lines += ["", f"Model version {rows[kinds[0]].get('served_version')} through the real tritonserver, measured by "
                  f"`benchmarks/triton_bench.py --publish` at commit `{st['commit'][:12]}` ({st['date'][:10]}) on "
                  f"{machine}{cpu} CPU cores; {cpu_use}. Figures in "
                  f"`{published.relative_to(ROOT)}`.{agree}"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200, help="full batches timed on the GPU instance")
    ap.add_argument("--cpu-batches", type=int, default=40,
                    help="full batches timed on the CPU instance (kept small: about 10 s on 2 idle cores)")
    ap.add_argument("--warmup", type=int, default=5, help="full batches sent before timing")
    ap.add_argument("--repeats", type=int, default=1, help="throughput passes per kind; the best is reported")
    ap.add_argument("--latency-reps", type=int, default=30, help="sequential requests per latency figure")
    ap.add_argument("--in-flight", type=int, default=4, help="requests outstanding in infer_many (client default 4)")
    ap.add_argument("--cpu-only", action="store_true", help="leave out the GPU row even where CUDA is available")
    ap.add_argument("--ready-timeout", type=float, default=300, help="seconds for tritonserver to become ready")
    ap.add_argument("--request-timeout", type=float, default=120, help="seconds per request")
    ap.add_argument("--out", type=Path, help=f"write the figures as JSON here (with --publish: "
                                             f"{PUBLISHED.relative_to(ROOT)} when a GPU row is measured, else "
                                             f"{PUBLISHED_CPU.relative_to(ROOT)})")
    ap.add_argument("--publish", action="store_true",
                    help="write the JSON (refused on a tree with uncommitted changes, or not a git checkout)")
    ap.add_argument("--code", metavar="COMMIT:TREE",
                    help="for a copy whose .git is older than its files (a device machine's): the commit these "
                         "files are and its tree id (git rev-parse COMMIT^{tree}); checked against the files")
    ap.add_argument("--render", action="store_true",
                    help=f"only re-render the README tables from {PUBLISHED.name} and {PUBLISHED_CPU.name}")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="publish anyway from a dirty tree or a plain copy (stamped with its commit or 'unknown')")
    a = ap.parse_args()
    for name in ("batches", "cpu_batches", "latency_reps", "in_flight", "repeats"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0:
        ap.error("--warmup must be >= 0")

    if a.render:
        for path, start, end in published_blocks():
            if path.exists():
                write_readme_block(start, end, render(json.loads(path.read_text())))
        return 0
    git = git_stamp()  # the code measured: taken before the run, as the tree may change while it runs
    if a.code:
        commit, _, tree = a.code.partition(":")
        found = worktree_hash()
        if found != tree:
            sys.exit(f"triton_bench --code: these files' tree is {found}, not {tree}: they are not {commit}")
        git = {**git, "head": commit, "dirty": False, "changed": [],
               "code_check": f"the files' tree id equals {commit}'s ({tree}); .git here is older"}
    if a.publish:
        if (git["dirty"] or git["dirty"] is None) and not a.allow_dirty:
            why = git.get("why") or f"uncommitted changes to {', '.join(git['changed'])}"
            sys.exit(f"triton_bench --publish: {why}; published figures must come from a commit "
                     "(commit, then rerun; or pass --allow-dirty for a scratch run)")
        a.out = a.out or (PUBLISHED if torch.cuda.is_available() and not a.cpu_only else PUBLISHED_CPU)

    binary = ensure_tritonserver()
    gpu = torch.cuda.is_available() and not a.cpu_only
    # label -> (instance kind, batches timed, face-reader split). "forward" is the baseline of the split: the
    # TorchScript forward as exported, every frame of every window read.
    kinds = {FORWARD: ("KIND_CPU", a.cpu_batches, False), "KIND_CPU": ("KIND_CPU", a.cpu_batches, True)}
    if gpu:
        kinds["KIND_GPU"] = ("KIND_GPU", a.batches, True)
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpus = cpu_count()
    print(f"commit {git['head'][:12]}{' (dirty)' if git['dirty'] else ''}; python {platform.python_version()}, "
          f"torch {torch.__version__}, {cpus['usable']} usable cores ({cpus['os_cpu_count']} on the machine), "
          f"GPU: {gpu_name or 'none'}", flush=True)
    print(f"tritonserver: {binary}", flush=True)
    if not gpu:
        why = "--cpu-only was given" if a.cpu_only else "no CUDA GPU is present (torch.cuda.is_available() is False)"
        print(f"KIND_GPU row SKIPPED: {why}; only the KIND_CPU row is measured", flush=True)

    rng = np.random.default_rng(0)
    pool = [make_batch(MAX_BATCH_SIZE, rng) for _ in range(POOL)]
    fm = np.concatenate([b["face_mask"] for b in pool])
    am = np.concatenate([b["audio_mask"] for b in pool])
    mix = {"face_present": float(fm.mean()), "audio_present": float(am.mean()),
           "both_absent": float((~fm & ~am).mean())}
    print(f"inputs: {POOL} distinct batches of {MAX_BATCH_SIZE} windows x {PREPROCESSING.window} frames, cycled; "
          f"frames with a face {mix['face_present']:.0%}, with audio {mix['audio_present']:.0%}, "
          f"with neither {mix['both_absent']:.1%}", flush=True)

    load_before = os.getloadavg()
    rows: dict[str, dict[str, Any]] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="emoframe-triton-bench-") as tmp:
        for label, (kind, n, split) in kinds.items():
            print(f"{label}: {n} batches timed, {a.warmup} warm-up, {a.latency_reps} latency requests", flush=True)
            rows[label] = {"kind": kind, "label": label, "batches": n, "split": split}
            try:
                bench_kind(rows[label], pool, a, Path(tmp))
            except Exception as e:  # a failed kind is reported; the other row still counts
                failed = True
                rows[label]["error"] = f"{type(e).__name__}: {e}"
                print(f"  {label} FAILED: {type(e).__name__}: {e}", flush=True)
    load_after = os.getloadavg()

    ratios: dict[str, float] = {}
    cpu, gpu_row = rows.get("KIND_CPU", {}), rows.get("KIND_GPU", {})
    if "latency_window_ms" in cpu and "latency_window_ms" in gpu_row:
        for key in ("windows_per_s", "model_frames_per_s", "labelled_frames_per_s"):
            ratios[key] = gpu_row["throughput"][key] / cpu["throughput"][key]
        ratios["latency_batch_p50"] = gpu_row["latency_batch_ms"]["p50"] / cpu["latency_batch_ms"]["p50"]
        ratios["latency_window_p50"] = gpu_row["latency_window_ms"]["p50"] / cpu["latency_window_ms"]["p50"]
        diff = float(np.abs(gpu_row["reference_output"] - cpu["reference_output"]).max())
        gpu_row["max_abs_diff_vs_cpu"] = diff
        print(f"GPU vs CPU outputs on the same batch: max abs difference {diff:.2e}")
    base = rows.get(FORWARD, {})
    split_ratios: dict[str, float] = {}
    if "latency_window_ms" in cpu and "latency_window_ms" in base:
        for key in ("windows_per_s", "model_frames_per_s", "labelled_frames_per_s"):
            split_ratios[key] = cpu["throughput"][key] / base["throughput"][key]
        diff = float(np.abs(cpu["reference_output"] - base["reference_output"]).max())
        cpu["max_abs_diff_vs_forward"] = diff
        print(f"split vs forward outputs on the same batch: max abs difference {diff:.2e}; KIND_CPU/{FORWARD} "
              f"labelled frames/s {split_ratios['labelled_frames_per_s']:.2f}x")
    for r in rows.values():
        r.pop("reference_output", None)

    print()
    print(table(rows, ratios))
    print(f"\nwindow {PREPROCESSING.window} frames, stride {POLICY.stride}: labelled frames/s = windows/s x "
          f"{POLICY.stride}; model frames/s = windows/s x {PREPROCESSING.window}. "
          f"client max_in_flight {a.in_flight}; GPU/CPU ratios (latency: lower is better) are from this run")
    for r in rows.values():
        if "error" in r:
            print(f"{r['kind']} FAILED: {r['error']}")
    if not gpu:
        print("GPU row skipped: no GPU/CPU ratio" + (" (--cpu-only)" if a.cpu_only else " (no CUDA GPU present)"))
    print(f"load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after: {'/'.join(f'{x:.2f}' for x in load_after)}")

    if a.out:
        report = {
            "stamp": {"commit": git["head"], "dirty": git["dirty"], "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                      "device": gpu_name if gpu else "cpu", "gpu_name": gpu_name,
                      "torch": torch.__version__, "python": platform.python_version(),
                      "cpu_count": cpus, "cpu_instance_threads": cpu_instance_threads(cpus["usable"]),
                      "platform": platform.platform(),
                      "nvidia_pytriton": _version("nvidia-pytriton"), "tritonclient": _version("tritonclient"),
                      "tritonserver": str(binary)},
            "git": git,
            "loadavg": {"before": load_before, "after": load_after},
            "settings": {"batches_gpu": a.batches, "batches_cpu": a.cpu_batches, "warmup": a.warmup,
                         "repeats": a.repeats, "latency_reps": a.latency_reps, "in_flight": a.in_flight,
                         "batch_windows": MAX_BATCH_SIZE, "window": PREPROCESSING.window,
                         "stride": POLICY.stride, "distinct_batches": POOL, "input_mix": mix,
                         "kinds": list(kinds), "gpu_skipped": not gpu, "cpu_only": a.cpu_only,
                         "model": str((latest_version(MODEL_REPO / MODEL_NAME) / "model.pt").relative_to(ROOT))},
            "kinds": rows,
            "ratios_gpu_over_cpu": ratios,
            "ratios_split_over_forward": split_ratios,
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nwrote {a.out}")
        for path, start, end in published_blocks():
            if a.out == path:
                write_readme_block(start, end, render(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
