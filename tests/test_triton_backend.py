"""The Triton backend's face-reader split (workers/serving/triton_backend.py), in process.

The backend imports ``triton_python_backend_utils``, which only exists inside Triton's Python stub; these unit
tests give it a stand-in with the one thing the split uses (a logger). The real server runs the same file in
tests/test_deployed_model.py, where its answers are compared with the TorchScript file's.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from emoframe.training.backbones.mini_xception import MiniXception
from emoframe.training.export import to_torchscript
from emoframe.training.model import ExportWrapper, FusionModel
from emoframe.training.readers import FerReader
from emoframe.workers.serving.triton_config import model_config
from emoframe.workers.spec.contract import PREPROCESSING, input_specs
from emoframe.workers.spec.model_versions import MODEL_FILE
from emoframe.workers.spec.policy import POLICY

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "model_repo" / "expression_fusion"


@pytest.fixture(scope="module")
def backend():
    warnings: list[str] = []
    stub = types.ModuleType("triton_python_backend_utils")
    stub.Logger = types.SimpleNamespace(log_warn=warnings.append, log_info=lambda msg: None)  # type: ignore[attr-defined]
    sys.modules["triton_python_backend_utils"] = stub
    try:
        spec = importlib.util.spec_from_file_location("emoframe_triton_backend",
                                                      ROOT / "workers" / "serving" / "triton_backend.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.warnings = warnings
        yield module
    finally:
        del sys.modules["triton_python_backend_utils"]


@pytest.fixture(scope="module")
def config() -> dict:
    """The served config as Triton hands it to initialize(): JSON names, TYPE_ dtypes, dims without the batch."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(model_config(), preserving_proto_field_name=True)


def video_windows(n_windows: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Windows of one video as the client batches them: each starts `stride` frames after the last, faces
    hidden in a stretch (zeros, mask False), audio present."""
    p, stride = PREPROCESSING, POLICY.stride
    g = torch.Generator().manual_seed(seed)
    frames = p.window + stride * (n_windows - 1)
    face_spec, _, mel_spec, _ = input_specs()
    crops = torch.randint(0, 256, (frames, *face_spec.shape[1:]), generator=g, dtype=torch.uint8)
    present = torch.ones(frames, dtype=torch.bool)
    present[20:45] = False
    crops[~present] = 0
    mel = torch.randn((frames, *mel_spec.shape[1:]), generator=g)
    starts = [k * stride for k in range(n_windows)]
    face = torch.stack([crops[s:s + p.window] for s in starts])
    face_mask = torch.stack([present[s:s + p.window] for s in starts])
    mel_w = torch.stack([mel[s:s + p.window] for s in starts])
    return face, face_mask, mel_w, torch.ones_like(face_mask)


def test_the_deployed_model_served_split_reads_each_distinct_crop_once_and_answers_as_its_forward(backend, config):
    module = torch.jit.load(str(VERSIONS / "3" / MODEL_FILE)).eval()
    split = backend.face_reader_split(module, config, torch.device("cpu"))
    assert split is not None and not hasattr(module, "fuse")  # exported before fuse: the softmax fallback

    seen: list[int] = []
    reader = split.reader
    split.reader = lambda crops: (seen.append(crops.shape[0]), reader(crops))[1]
    inputs = video_windows(8, seed=3)
    with torch.inference_mode():
        want = module(*inputs)
        got = split(*inputs)
    face = inputs[0]
    distinct = len({bytes(c.numpy().tobytes()) for c in face.reshape(-1, *face.shape[2:])})
    assert sum(seen) == distinct and distinct < face.shape[0] * face.shape[1] * 0.6
    assert max(seen) == backend.CPU_READER_CHUNK and len(seen) > 1  # on CPU, in cache-sized chunks
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_a_new_export_is_split_through_its_own_fuse_method(backend, config):
    torch.manual_seed(0)
    module = to_torchscript(ExportWrapper(FerReader(MiniXception()), FusionModel()))
    assert hasattr(module, "fuse")
    split = backend.face_reader_split(module, config, torch.device("cpu"))
    assert split is not None and split.fuse == module.fuse
    inputs = video_windows(4, seed=1)
    with torch.inference_mode():
        np.testing.assert_allclose(split(*inputs).numpy(), module(*inputs).numpy(), atol=1e-5, rtol=0)


def test_a_model_without_a_reader_or_whose_split_disagrees_is_served_by_its_forward(backend, config):
    v1 = torch.jit.load(str(VERSIONS / "1" / MODEL_FILE)).eval()  # 40x40 crops straight into the model
    assert backend.face_reader_split(v1, config, torch.device("cpu")) is None

    class LogProbs(ExportWrapper):  # a reader and a window model, but forward is not softmax(model(...))
        def forward(self, face, face_mask, mel, audio_mask):
            b, t = face.shape[:2]
            evidence = self.reader(face.reshape(b * t, *face.shape[2:])).view(b, t, -1)
            return torch.log_softmax(self.model(evidence, face_mask, mel, audio_mask), dim=-1)

    odd = torch.jit.trace(LogProbs(FerReader(MiniXception()), FusionModel()).eval(), video_windows(2, seed=0))
    assert not hasattr(odd, "fuse") and hasattr(odd, "reader") and hasattr(odd, "model")
    assert backend.face_reader_split(odd, config, torch.device("cpu")) is None


def test_a_config_written_with_the_split_off_serves_the_forward(backend, config, tmp_path):
    from google.protobuf.json_format import MessageToDict

    from emoframe.workers.serving.triton_config import read_config, set_parameter, write_config

    module = torch.jit.load(str(VERSIONS / "3" / MODEL_FILE)).eval()
    write_config(tmp_path / "expression_fusion")
    set_parameter(tmp_path / "expression_fusion", backend.SPLIT_PARAMETER, "off")
    off = MessageToDict(read_config(tmp_path / "expression_fusion"), preserving_proto_field_name=True)
    assert off["input"] == config["input"]  # only the parameter changed
    assert backend.face_reader_split(module, off, torch.device("cpu")) is None
    assert backend.face_reader_split(module, config, torch.device("cpu")) is not None


@pytest.mark.parametrize("cores, count, threads", [(2, 1, 1), (16, 1, 8), (16, 2, 4), (16, 3, 2), (2, 2, 1), (1, 1, 1)])
def test_cpu_instances_take_the_share_of_the_cores_a_per_node_server_declares(backend, monkeypatch, cores, count,
                                                                             threads):
    """Each instance is a process: together they take CPU_SHARE of the cores (never less than a thread each),
    the share a per-node server declares to Ray, so the video tasks beside it keep the rest."""
    from emoframe.workers.task.triton_nodes import TRITON_CPU_SHARE, cpu_instance_threads

    assert backend.CPU_SHARE == TRITON_CPU_SHARE
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda pid: set(range(cores)))
    cfg = {"instance_group": [{"kind": "KIND_CPU", "count": count}]}
    assert backend._cpu_threads(cfg) == threads == cpu_instance_threads(cores, count)  # the benchmarks' copy
