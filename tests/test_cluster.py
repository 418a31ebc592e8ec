"""A Triton per Ray node (workers/task/triton_nodes.py) on a real two-node Ray cluster started on this machine
(ray.cluster_utils.Cluster: a head and a second raylet, each with its own resources, object store and
workers), with the real flow, real tritonservers and real videos.

Both nodes share this host, so both servers listen on this host's 127.0.0.1 and a task could connect to the
other node's server, which on two machines it could not even reach. That makes this the stricter check:
each server answers with its own id (run and node), a task compares that id with its own node's before it
labels, and a task given the other node's server refuses; the servers' own inference counts show that both
served and that together they ran every window of every video, no more.
"""

from __future__ import annotations

import os
import secrets
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from emoframe.flows.run.planning import DEFAULT_MODEL_REPO, new_run_id
from emoframe.workers.task.resources import TASK_MEMORY_MB
from tests.media import write_video
from emoframe.workers.spec.contract import PREPROCESSING
from emoframe.workers.spec.policy import POLICY
from emoframe.workers.task.triton_nodes import (TRITON_MEMORY_MB, NoNodeServerError, WrongServerError, for_this_node,
                                  per_node_tritons)
from emoframe.workers.task.video_job import LabelConfig
from emoframe.workers.inference.windows import window_starts

pytestmark = pytest.mark.integration

TAG_VAR = "EMOFRAME_CLUSTER_TEST"
NODE_CPUS = 2  # the server declares half (one), a video the other
# Room for the server and exactly one video: while two videos run, one is on each node.
NODE_MEMORY = (TRITON_MEMORY_MB + TASK_MEMORY_MB + 256) * 2**20
OBJECT_STORE = 100 * 2**20


def servers_left(tag: str) -> dict[int, str]:
    """tritonserver and backend-stub processes started under this test (they inherit the tag)."""
    marker = f"{TAG_VAR}={tag}".encode()
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if ("tritonserver" in cmd or "triton_python_backend_stub" in cmd) and \
                    marker in (d / "environ").read_bytes().split(b"\0"):
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found[int(d.name)] = cmd[:160]
        except OSError:
            continue
    return found


def wait_gone(tag: str, timeout: float = 20) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := servers_left(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[object, str]]:
    """Two Ray nodes on this host, both able to hold a Triton and one video; every process they start carries
    a tag in its environment, so the test finds its own servers and nobody else's."""
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    tag = secrets.token_hex(8)
    old = {k: os.environ.get(k) for k in (TAG_VAR, "RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE")}
    os.environ.update({TAG_VAR: tag, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    # Ray caches the auth mode in this process (a local ray.init() earlier in the session set it to "token"):
    # refresh it on the way in and again on the way out, or the next local Ray's GCS wants a token that this
    # process no longer sends ("InvalidAuthToken" for every later test: CI at 4556626).
    reset_auth_token_state()
    node = {"num_cpus": NODE_CPUS, "memory": NODE_MEMORY, "object_store_memory": OBJECT_STORE}
    with tempfile.TemporaryDirectory(prefix="efcl", dir="/tmp") as tmp:  # short: Ray's socket paths
        c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False, "temp_dir": tmp})
        try:
            c.add_node(**node)
            c.wait_for_nodes()
            yield c, tag
        finally:
            c.shutdown()
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            reset_auth_token_state()


def _node_ids(cluster) -> list[str]:
    return [n.node_id for n in cluster.list_all_nodes()]


@pytest.mark.timeout(420)
def test_tasks_use_their_own_nodes_server_and_never_anothers(cluster):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    c, tag = cluster
    ray.init(address=c.address)
    try:
        a, b = _node_ids(c)
        run_id = new_run_id()
        with per_node_tritons(DEFAULT_MODEL_REPO, run_id) as served:
            urls = dict(served.nodes)
            assert set(urls) == {a, b} and urls[a] != urls[b]
            assert len(servers_left(tag)) >= 4  # a tritonserver and its backend stub on each node

            cfg = LabelConfig(out="unused", run_id=run_id, triton_url="", model_version=served.version,
                              triton_nodes=served.nodes)

            @ray.remote(num_cpus=0)
            def pick(cfg: LabelConfig) -> str:
                try:
                    return for_this_node(cfg).triton_url
                except (WrongServerError, NoNodeServerError) as exc:
                    return f"{type(exc).__name__}: {exc}"

            def on(node: str, cfg: LabelConfig) -> str:
                return ray.get(pick.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                               .remote(cfg))

            assert on(a, cfg) == urls[a] and on(b, cfg) == urls[b]
            swapped = replace(cfg, triton_nodes=((a, urls[b]), (b, urls[a])))
            refused = on(b, swapped)
            assert refused.startswith("WrongServerError") and "not this run's server of this node" in refused
            other_run = replace(cfg, run_id=new_run_id())
            assert on(a, other_run).startswith("WrongServerError")
            without_b = replace(cfg, triton_nodes=((a, urls[a]),))
            assert on(b, without_b).startswith("NoNodeServerError: Ray node")

            # A node that joins after the start gets no server, and the video tasks' options keep them off it.
            late = c.add_node(num_cpus=NODE_CPUS, memory=NODE_MEMORY, object_store_memory=OBJECT_STORE)
            c.wait_for_nodes()
            try:
                @ray.remote(num_cpus=1)
                def where() -> str:
                    time.sleep(1.0)
                    return ray.get_runtime_context().get_node_id()

                free = set(ray.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)]))
                assert late.node_id in free  # without the selector, the new node takes work
                kept = set(ray.get([where.options(scheduling_strategy="SPREAD", **served.task_options()).remote()
                                    for _ in range(6)]))
                assert kept <= {a, b}
            finally:
                c.remove_node(late)

            # A server whose actor is killed (SIGKILL: no handler runs) goes with it: the guard kills its group.
            pid = served.servers[[s["node_id"] for s in served.servers].index(b)]["pid"]
            actor_process = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            os.kill(actor_process, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not Path(f"/proc/{pid}").exists(), "the killed actor's server outlived it"
        assert not wait_gone(tag), "tritonserver processes left after the run"
    finally:
        ray.shutdown()


@pytest.mark.timeout(600)
def test_the_flow_labels_on_both_nodes_each_with_its_nodes_triton(cluster, tmp_path):
    from emoframe.flows.run.label_archive import run_label_archive
    from tests.test_deploy import assert_labelled
    from emoframe.workers.task import triton_nodes

    c, tag = cluster
    # Different lengths: identical files would be recognised as one moved file and labelled once.
    videos = [write_video(tmp_path / "in" / f"clip{i}.mp4", n, 15, audio_seconds=n / 15 if i % 2 else None)
              for i, n in enumerate((40, 44, 48, 52))]
    out = tmp_path / "out"
    t0 = time.monotonic()
    result = run_label_archive([str(tmp_path / "in")], str(out), ray_address=c.address, triton="per-node",
                               face_mode="centred", report=False)
    print(f"flow with a Triton per node: {time.monotonic() - t0:.0f} s")
    assert result["labelled"] == 4 and result["failed"] == 0, result["text"]
    assert_labelled(out, videos)
    servers = triton_nodes.last_servers
    assert {s["node_id"] for s in servers} == set(_node_ids(c))
    # Every task checked its server's id against its own node's before it labelled (else it would have
    # failed); both servers served, and between them every window of the four videos, once.
    assert all(s["inferences"] > 0 for s in servers), servers
    windows = sum(len(window_starts(n, PREPROCESSING.window, POLICY.stride)) for n in (40, 44, 48, 52))
    assert sum(s["inferences"] for s in servers) == windows, servers
    assert not wait_gone(tag), "tritonserver processes left after the run"
    # The run joined this cluster and leaves it running: its kill of leftovers is for a Ray it started itself.
    assert all(node.remaining_processes_alive() for node in c.list_all_nodes())


@pytest.mark.timeout(420)
def test_sigterm_stops_every_nodes_server(cluster, tmp_path):
    """`emoframe label --triton per-node` stopped by SIGTERM while a video is in flight (what a scheduler's
    stop or `kill` sends; Ctrl-C's SIGINT takes the same path): it exits 143, each node's server is stopped
    by the unwinding flow, and none is left."""
    import subprocess
    import sys

    c, tag = cluster
    write_video(tmp_path / "in" / "short.mp4", 40, 15)
    write_video(tmp_path / "in" / "long.mp4", 900, 15)
    log = tmp_path / "cli.log"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with log.open("wb") as f:
        cli = subprocess.Popen([sys.executable, "-m", "emoframe.flows.cli.main", "label", str(tmp_path / "in"), "--out",
                                str(tmp_path / "out"), "--faces", "centred", "--no-report", "--ray-address",
                                c.address, "--triton", "per-node"], stdout=f, stderr=subprocess.STDOUT, env=env,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 300
        # Once the short video is done: every video submitted, the long one in flight. (A signal while the flow
        # submits can land inside Prefect's serialisation of the task, which turns it into an exit 1.)
        while "[1/2]" not in log.read_text(errors="replace"):
            assert cli.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.5)
        assert len(servers_left(tag)) >= 4
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(120) == 128 + signal.SIGTERM, log.read_text(errors="replace")
    finally:
        if cli.poll() is None:
            cli.kill()
    text = log.read_text(errors="replace")
    assert text.count("stopped; it ran") == 2, text  # each stopped cleanly by the unwinding flow
    assert not wait_gone(tag), "tritonserver processes left after SIGTERM"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="a per-node Triton on a GPU node: needs a CUDA GPU, which these machines "
                                            "and CI do not have (benchmarks/triton_gpu_check.sh runs it on one)")
@pytest.mark.timeout(600)
def test_a_gpu_nodes_server_holds_its_gpu_and_labels(tmp_path):
    """A Ray node with a GPU and a KIND_GPU config: the node's server declares the GPU to Ray, Ray gives it the
    device (CUDA_VISIBLE_DEVICES), the model instance runs on it, and the flow labels real videos through it."""
    import shutil

    from ray.cluster_utils import Cluster

    from emoframe.flows.run.label_archive import run_label_archive
    from tests.test_deploy import assert_labelled
    from emoframe.workers.task import triton_nodes
    from emoframe.workers.spec.contract import MODEL_NAME
    from emoframe.workers.serving.triton_config import set_instance_kind

    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL_REPO / MODEL_NAME, repo / MODEL_NAME)
    set_instance_kind(repo / MODEL_NAME, "KIND_GPU")
    videos = [write_video(tmp_path / "in" / f"clip{i}.mp4", n, 15) for i, n in enumerate((40, 44))]
    tag = secrets.token_hex(8)
    os.environ[TAG_VAR] = tag
    with tempfile.TemporaryDirectory(prefix="efgpu", dir="/tmp") as tmp:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 1, "memory": 8 * 2**30,
                                                          "include_dashboard": False, "temp_dir": tmp})
        try:
            result = run_label_archive([str(tmp_path / "in")], str(tmp_path / "out"), ray_address=c.address,
                                       triton="per-node", face_mode="centred", report=False,
                                       model_repo=str(repo))
        finally:
            c.shutdown()
            os.environ.pop(TAG_VAR, None)
    assert result["labelled"] == 2, result["text"]
    assert_labelled(tmp_path / "out", videos)
    [server] = triton_nodes.last_servers
    assert server["inferences"] > 0
    log = Path(server["log"]).read_text(errors="replace")
    assert "GPU device" in log, log[-3000:]  # Triton names where each instance runs: "(GPU device 0)"
    assert not wait_gone(tag)
