"""What one per-node Triton (workers/task/triton_nodes.py) takes: memory and CPU of the server and its backend stub.

TRITON_MEMORY_MB, what each per-node server declares to Ray, must cover the peak measured here. The model
is shipped the way the per-node servers get it (``pack_model``: config and served version only) and served
by EmbeddedTriton with the instance kind of the config (KIND_CPU here unless the config says otherwise).
Measured: the proportional set size (PSS) of the server's whole process tree (guard, tritonserver, the
Python-backend stub with torch) sampled every 0.2 s, idle after start (the baseline) and while
``--batches`` full batches go through TritonClient.infer_many with ``--in-flight`` requests outstanding;
and the CPU time of that tree per labelled frame, against the wall time (cores the server keeps busy).

    python benchmarks/triton_node.py [--batches 40] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from triton_bench import POOL, batches, make_batch  # noqa: E402
from emoframe.workers.spec.contract import MAX_BATCH_SIZE  # noqa: E402
from emoframe.workers.spec.policy import POLICY  # noqa: E402
from emoframe.workers.inference.triton_client import TritonClient  # noqa: E402
from emoframe.workers.task.triton_nodes import TRITON_CPU_SHARE, TRITON_MEMORY_MB, pack_model  # noqa: E402
from emoframe.workers.serving.triton_server import EmbeddedTriton  # noqa: E402


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def pss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass  # ended between listing and reading
    return total / 2**20


def cpu_s(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--in-flight", type=int, default=4, help="requests outstanding (the workers keep 4 per video)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    model = pack_model(ROOT / "model_repo")
    rng = np.random.default_rng(0)
    pool = [make_batch(MAX_BATCH_SIZE, rng) for _ in range(POOL)]
    with tempfile.TemporaryDirectory() as d, EmbeddedTriton(model.write(Path(d)), server_id="bench") as srv:
        time.sleep(2.0)  # let the start settle
        idle = pss_mb(srv.pid)
        peak = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak.append(pss_mb(srv.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        with TritonClient(srv.grpc_url, max_in_flight=args.in_flight, timeout_s=600) as client:
            client.check_ready()
            list(client.infer_many(batches(pool, 1)))  # warm up
            cpu0, t0 = cpu_s(srv.pid), time.perf_counter()
            sampler.start()
            list(client.infer_many(batches(pool, args.batches)))
            wall, cpu = time.perf_counter() - t0, cpu_s(srv.pid) - cpu0
        stop.set()
        sampler.join()
    windows = args.batches * MAX_BATCH_SIZE
    labelled = windows * POLICY.stride
    figures = {
        "model_version": model.version, "kind": model.kind, "shipped_mb": round(model.size / 2**20, 2),
        "cores_seen": len(psutil.Process().cpu_affinity()), "loadavg_after": list(psutil.getloadavg()),
        "batches": args.batches, "in_flight": args.in_flight,
        "pss_idle_mb": round(idle, 1), "pss_peak_mb": round(max(peak), 1),
        "declared_mb": TRITON_MEMORY_MB, "declared_cpu_share_kind_cpu": TRITON_CPU_SHARE,
        "labelled_frames_per_s": round(labelled / wall, 1), "server_cores_busy": round(cpu / wall, 2),
        "server_cpu_ms_per_labelled_frame": round(cpu * 1e3 / labelled, 3),
    }
    print(f"model version {model.version} ({model.kind}), shipped to each node: {figures['shipped_mb']} MB")
    print(f"server PSS idle (baseline)      {idle:8.1f} MB")
    print(f"server PSS peak under load      {max(peak):8.1f} MB   ({max(peak) / idle:.2f}x idle)")
    print(f"declared to Ray                 {TRITON_MEMORY_MB:8d} MB   ({TRITON_MEMORY_MB / max(peak):.2f}x peak)")
    print(f"labelled frames/s (stride {POLICY.stride})   {labelled / wall:8.1f}")
    print(f"server CPU per labelled frame   {cpu * 1e3 / labelled:8.3f} ms   "
          f"({cpu / wall:.2f} of {figures['cores_seen']} cores busy; KIND_CPU declares {TRITON_CPU_SHARE:g} of a node)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
