"""Unit tests of workers/task/triton_nodes.py's pure parts: what is shipped to the nodes, which nodes get a server
and what it declares, the task options. The servers themselves run in tests/test_cluster.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emoframe.flows.run.planning import DEFAULT_MODEL_REPO
from emoframe.workers.task.resources import TASK_CPUS, TASK_MEMORY_MB
from emoframe.workers.spec.contract import MODEL_NAME
from emoframe.workers.spec.model_versions import latest_version
from emoframe.workers.serving.triton_config import instance_kind, set_instance_kind
from emoframe.workers.task.resources import VideoTaskResources
from emoframe.workers.task.triton_nodes import (TRITON_GPU_NODE_CPUS, TRITON_MEMORY_MB, Served, _room, pack_model,
                                                plan_servers, server_cpus, server_id)
from emoframe.workers.task.video_job import LabelConfig

GB = 2**30


def node(i: int, cpus: float, memory_gb: float, gpus: int = 0, alive: bool = True) -> dict:
    res = {"CPU": cpus, "memory": memory_gb * GB, **({"GPU": gpus} if gpus else {})}
    return {"NodeID": f"{i:056x}", "Alive": alive, "NodeManagerAddress": f"10.0.0.{i}", "Resources": res}


def test_the_model_ships_its_config_and_the_served_version_only(tmp_path):
    model = pack_model(DEFAULT_MODEL_REPO)
    served = latest_version(DEFAULT_MODEL_REPO / MODEL_NAME)
    assert model.version == served.name
    names = {rel for rel, _ in model.files}
    assert names == {"config.pbtxt"} | {f"{served.name}/{p.name}" for p in served.iterdir() if p.is_file()}
    assert model.size < 5 * 2**20  # one version, not the whole repository
    model.write(tmp_path)
    assert latest_version(tmp_path / MODEL_NAME).name == served.name
    assert (tmp_path / MODEL_NAME / served.name / "model.pt").read_bytes() == (served / "model.pt").read_bytes()
    assert model.kind == instance_kind(DEFAULT_MODEL_REPO / MODEL_NAME) == "KIND_CPU"


def test_the_shipped_kind_is_the_configs(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL_REPO / MODEL_NAME, repo / MODEL_NAME)
    set_instance_kind(repo / MODEL_NAME, "KIND_GPU")
    assert pack_model(repo).kind == "KIND_GPU"
    with pytest.raises(FileNotFoundError, match="model repository holding expression_fusion"):
        pack_model(tmp_path / "nowhere")


def test_cpu_servers_take_half_a_node_and_leave_room_for_videos():
    nodes = [node(1, 16, 64), node(2, 2, 8), node(3, 1, 64), node(4, 16, 2), node(5, 16, 64, alive=False)]
    plans, left_out = plan_servers(nodes, "KIND_CPU", TASK_CPUS, TASK_MEMORY_MB)
    assert [(p.address, p.num_cpus, p.num_gpus, p.memory_mb) for p in plans] == [
        ("10.0.0.1", 8.0, 0, TRITON_MEMORY_MB), ("10.0.0.2", 1.0, 0, TRITON_MEMORY_MB)]
    # One CPU, or 2 GB: a server alone, no video could run beside it. The dead node is not mentioned.
    assert len(left_out) == 2 and "10.0.0.3" in left_out[0] and "10.0.0.4" in left_out[1]
    assert "less than a Triton and one video need" in left_out[0]


def test_videos_in_flight_count_what_the_servers_leave_on_their_nodes_only():
    nodes = [node(1, 16, 64), node(2, 4, 4), node(3, 1, 64)]  # node 3: too small for a server and a video
    plans, _ = plan_servers(nodes, "KIND_CPU", TASK_CPUS, TASK_MEMORY_MB)
    room = _room(nodes, plans)
    assert room == ({"CPU": 8.0, "memory": 64 * GB - TRITON_MEMORY_MB * 2**20},
                    {"CPU": 2.0, "memory": 4 * GB - TRITON_MEMORY_MB * 2**20})
    task = VideoTaskResources(cpus=TASK_CPUS, memory_mb=TASK_MEMORY_MB)
    # Node 1: 8 videos by CPU; node 2: 2.5 GB left, one 1.5 GB video. Twice that in flight (one queued per slot);
    # the whole cluster's 21 CPUs would have said 42.
    assert task.default_in_flight(room) == (8 + 1) * 2


def test_a_gpu_config_takes_every_gpu_of_gpu_nodes_only():
    nodes = [node(1, 16, 64, gpus=4), node(2, 16, 64)]
    plans, left_out = plan_servers(nodes, "KIND_GPU", TASK_CPUS, TASK_MEMORY_MB)
    assert [(p.address, p.num_cpus, p.num_gpus) for p in plans] == [("10.0.0.1", TRITON_GPU_NODE_CPUS, 4)]
    assert left_out == [f"node {'0' * 8} (10.0.0.2): no GPU, and the model config is KIND_GPU"]
    # A CPU config on a GPU node leaves the GPUs to others.
    plans, _ = plan_servers(nodes, "KIND_CPU", TASK_CPUS, TASK_MEMORY_MB)
    assert [p.num_gpus for p in plans] == [0, 0] and plans[0].num_cpus == server_cpus("KIND_CPU", 16) == 8


def test_video_tasks_go_only_where_a_server_is():
    a, b = "a" * 56, "b" * 56
    served = Served("3", nodes=((a, "127.0.0.1:1"), (b, "127.0.0.1:2")))
    assert served.task_options() == {"label_selector": {"ray.io/node-id": f"in({a},{b})"}}
    assert Served("3", url="host:8001").task_options() == {}


def test_a_run_with_one_server_gives_tasks_the_config_unchanged():
    from emoframe.workers.task.triton_nodes import for_this_node

    cfg = LabelConfig(out="o", run_id="r", triton_url="host:8001", model_version="3")
    assert for_this_node(cfg) is cfg  # no Ray needed, nothing looked up
    assert server_id("r1", "n") != server_id("r2", "n")  # another run's server on the node is not ours


def test_cli_refuses_per_node_with_a_url(tmp_path, capsys):
    from emoframe.flows.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["label", str(tmp_path), "--out", str(tmp_path / "o"), "--triton", "per-node",
              "--triton-url", "localhost:8001"])
    assert stop.value.code == 2
    assert "--triton per-node starts a Triton on each Ray node" in capsys.readouterr().err


def test_the_flow_refuses_an_unknown_mode(tmp_path):
    from emoframe.flows.run.label_archive import triton_endpoint

    with pytest.raises(ValueError, match="triton must be one of"):
        with triton_endpoint(None, Path(DEFAULT_MODEL_REPO), None, "everywhere"):
            pass
