"""Triton serving: config generation (unit) and the real tritonserver from nvidia-pytriton (integration).

The served model is a tiny TorchScript module with the production forward signature, built per test
repository; model.py is the real one from model_repo/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch  # before anything that may import decord

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from emoframe.workers.spec.contract import (
    MAX_BATCH_SIZE,
    MODEL_NAME,
    NUM_CLASSES,
    PREPROCESSING,
    Preprocessing,
    contract_dict,
    fingerprint,
    input_specs,
    output_specs,
)
from emoframe.workers.spec.errors import ContractMismatchError, ServiceUnavailableError
from emoframe.workers.inference.triton_client import InferenceFailedError, TritonClient
from emoframe.workers.serving.triton_config import render_config_pbtxt, set_instance_kind, write_config
from emoframe.workers.serving.triton_server import EmbeddedTriton, tritonserver_path
from emoframe.workers.processes.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL_PY = ROOT / "model_repo" / MODEL_NAME / "1" / "model.py"
OTHER_MODEL = "expression_fusion_other"  # same code, config rendered from a different contract
OTHER_P = Preprocessing(window=PREPROCESSING.window // 2)
BROKEN_MODEL = "expression_fusion_broken"  # right contract, forward always raises


# -- helpers ---------------------------------------------------------------------------------------
class TinyFusion(torch.nn.Module):
    """Follows the exported model's forward signature; a masked modality contributes nothing."""

    def __init__(self, n_mels: int, num_classes: int):
        super().__init__()
        self.face = torch.nn.Linear(1, num_classes)
        self.audio = torch.nn.Linear(n_mels, num_classes)

    def forward(self, face: torch.Tensor, face_mask: torch.Tensor, mel: torch.Tensor, audio_mask: torch.Tensor):
        f = self.face(face.float().mean(dim=(2, 3, 4)).unsqueeze(-1) / 255.0)  # (B, T, C)
        a = self.audio(mel.mean(dim=2))  # (B, T, C)
        logits = f * face_mask.unsqueeze(-1).float() + a * audio_mask.unsqueeze(-1).float()
        return torch.softmax(logits, dim=-1)


def _scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(TinyFusion(PREPROCESSING.n_mels, NUM_CLASSES).eval())


class Broken(torch.nn.Module):
    def forward(self, face: torch.Tensor, face_mask: torch.Tensor, mel: torch.Tensor, audio_mask: torch.Tensor):
        if face.shape[0] > 0:
            raise RuntimeError("broken on purpose")
        return mel.mean(dim=2)


def make_repo(root: Path, extra: bool = False) -> Path:
    """A model repository with expression_fusion; ``extra`` adds a contract-mismatched and a failing model."""
    models = [(MODEL_NAME, PREPROCESSING, _scripted())]
    if extra:
        models += [(OTHER_MODEL, OTHER_P, _scripted()), (BROKEN_MODEL, PREPROCESSING, torch.jit.script(Broken()))]
    for name, p, module in models:
        d = root / name
        write_config(d, p=p)
        (d / "1").mkdir()
        shutil.copy(MODEL_PY, d / "1" / "model.py")
        module.save(str(d / "1" / "model.pt"))
    return root


def random_batch(b: int, rng: np.random.Generator, p: Preprocessing = PREPROCESSING) -> dict[str, np.ndarray]:
    out = {}
    for s in input_specs(p):
        shape = (b, *s.shape)
        if s.numpy_dtype == "uint8":
            out[s.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif s.numpy_dtype == "bool":
            out[s.name] = rng.random(shape) > 0.3
        else:
            out[s.name] = rng.normal(size=shape).astype(np.float32)
    return out


def in_process(module: torch.jit.ScriptModule, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return module(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a live process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = stat[stat.rfind(")") + 2 :].split()
    return rest[0], int(rest[2])


def live_processes(*, pgid: int | None = None, cmd_contains: str | None = None) -> list[int]:
    """Running (non-zombie) processes in a process group or whose command line mentions a string."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = _proc_stat(int(entry.name))
        if st is None or st[0] == "Z":
            continue
        if pgid is not None and st[1] == pgid:
            found.append(int(entry.name))
        elif cmd_contains is not None:
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd_contains in cmd:
                found.append(int(entry.name))
    return found


def wait_gone(check, timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# -- config generation (no server) -----------------------------------------------------------------
def contract_json() -> dict:
    return json.loads(json.dumps(contract_dict()))  # shapes become lists, as on the wire


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_carries_every_contract_tensor():
    cfg = _parse(render_config_pbtxt())
    assert cfg.name == MODEL_NAME and cfg.backend == "python"
    assert cfg.max_batch_size == MAX_BATCH_SIZE
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    for got, specs in ((cfg.input, input_specs()), (cfg.output, output_specs())):
        assert [t.name for t in got] == [s.name for s in specs]
        for t, s in zip(got, specs):
            assert model_config_pb2.DataType.Name(t.data_type) == f"TYPE_{s.dtype}"
            assert tuple(t.dims) == s.shape
    assert cfg.parameters["contract_fingerprint"].string_value == fingerprint()
    assert json.loads(cfg.parameters["contract"].string_value) == contract_json()
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]


def test_config_follows_preprocessing():
    cfg = _parse(render_config_pbtxt(p=OTHER_P))
    assert cfg.parameters["contract_fingerprint"].string_value == fingerprint(OTHER_P) != fingerprint()
    assert tuple(cfg.input[0].dims)[0] == OTHER_P.window


def test_kind_switch(tmp_path: Path):
    gpu = _parse(render_config_pbtxt("KIND_GPU", instance_count=2))
    assert [(g.kind, g.count) for g in gpu.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert "KIND_GPU" in render_config_pbtxt().split("name:")[0]  # the switch is documented in the header

    path = write_config(tmp_path / MODEL_NAME)
    original = path.read_text()
    set_instance_kind(path.parent, "KIND_GPU")
    assert _parse(path.read_text()).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert path.read_text() == original.replace("kind: KIND_CPU", "kind: KIND_GPU")
    set_instance_kind(path.parent, "KIND_CPU")
    assert path.read_text() == original
    with pytest.raises(ValueError):
        set_instance_kind(path.parent, "KIND_TPU")
    with pytest.raises(ValueError):
        render_config_pbtxt("GPU")


def test_client_validates_before_sending():
    rng = np.random.default_rng(0)
    with TritonClient(f"127.0.0.1:{free_port()}", retries=0) as client:  # nothing listens: must not get that far
        good = random_batch(2, rng)
        bad_dtype = dict(good, mel=good["mel"].astype(np.float64))
        bad_shape = dict(good, face=good["face"][:, :, :-1])
        missing = {k: v for k, v in good.items() if k != "audio_mask"}
        sizes = dict(good, face_mask=good["face_mask"][:1])
        too_big = random_batch(MAX_BATCH_SIZE + 1, rng)
        for batch in (bad_dtype, bad_shape, missing, sizes, too_big):
            with pytest.raises(ValueError):
                client.infer(batch)
            with pytest.raises(ValueError):
                list(client.infer_many([batch]))


def test_unreachable_server_fails_fast():
    url = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with TritonClient(url, retries=2, backoff_s=0.05) as client:
        with pytest.raises(ServiceUnavailableError, match="--triton-url"):
            client.check_ready()
        with pytest.raises(ServiceUnavailableError):
            client.infer(random_batch(1, np.random.default_rng(0)))
    assert time.monotonic() - t0 < 10


def test_tritonserver_binary_present():
    assert os.access(tritonserver_path(), os.X_OK)


# -- the real server -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("repo"), extra=True)
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    t0 = time.monotonic()
    models = (MODEL_NAME, OTHER_MODEL, BROKEN_MODEL)
    with EmbeddedTriton(repo, log_path=log, ready_timeout_s=120, model_names=models) as srv:
        srv.start_seconds = time.monotonic() - t0
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with TritonClient(server.grpc_url, max_in_flight=4) as c:
        c.check_ready()
        yield c


@pytest.mark.integration
def test_ready_and_contract(server, client):
    print(f"tritonserver ready in {server.start_seconds:.1f} s")
    assert client.model_metadata() == contract_json()


@pytest.mark.integration
@pytest.mark.parametrize("b", [1, 3, MAX_BATCH_SIZE])
def test_outputs_match_torchscript(client, b):
    batch = random_batch(b, np.random.default_rng(b))
    got = client.infer(batch)
    assert got.shape == (b, *output_specs()[0].shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, in_process(_scripted(), batch), atol=1e-5, rtol=0)


@pytest.mark.integration
def test_infer_many_keeps_order(client):
    rng = np.random.default_rng(7)
    sizes = [1, MAX_BATCH_SIZE, 2, 5, 1, 9, 3, MAX_BATCH_SIZE, 4, 1, 7, 2]
    batches = [random_batch(b, rng) for b in sizes]
    module = _scripted()
    results = list(client.infer_many(iter(batches)))
    assert [r.shape[0] for r in results] == sizes
    for got, batch in zip(results, batches):
        np.testing.assert_allclose(got, in_process(module, batch), atol=1e-5, rtol=0)


@pytest.mark.integration
def test_contract_mismatch(server):
    with TritonClient(server.grpc_url, model_name=OTHER_MODEL) as c:
        with pytest.raises(ContractMismatchError) as e:
            c.check_ready()
        # The server itself rejects our window length: a permanent error, not retried.
        with pytest.raises(InferenceFailedError):
            c.infer(random_batch(2, np.random.default_rng(0)))
    assert fingerprint(OTHER_P) in str(e.value) and fingerprint() in str(e.value)


@pytest.mark.integration
def test_model_failure_fails_each_request(server, client):
    rng = np.random.default_rng(3)
    with TritonClient(server.grpc_url, model_name=BROKEN_MODEL, max_in_flight=4) as c:
        c.check_ready()
        for b in (1, 4):
            with pytest.raises(InferenceFailedError, match="broken on purpose"):
                c.infer(random_batch(b, rng))
        with pytest.raises(InferenceFailedError, match="broken on purpose"):
            list(c.infer_many(random_batch(b, rng) for b in (1, 2, 3, 4, 5)))
    batch = random_batch(2, rng)  # the server and the good model are unaffected
    np.testing.assert_allclose(client.infer(batch), in_process(_scripted(), batch), atol=1e-5, rtol=0)


@pytest.mark.integration
def test_log_and_stub_environment(server):
    assert server.log_path.is_file() and server.log_path.stat().st_size > 0
    assert MODEL_NAME in server.log_path.read_text(errors="replace")
    stubs = [pid for pid in live_processes(pgid=server.pid)
             if Path(f"/proc/{pid}/comm").read_text().startswith("triton_python")]
    assert len(stubs) >= 2, "one backend stub per model instance, in the server's process group"
    # The stub must run this venv's torch (not some other Python's): its shared libraries show it.
    torch_dir = str(Path(torch.__file__).resolve().parent)
    for pid in stubs:
        assert torch_dir in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.integration
def test_exit_stops_server_and_stubs(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    with EmbeddedTriton(repo, log_path=tmp_path / "server.log", ready_timeout_s=120) as srv:
        pid = srv.pid
        assert len(live_processes(pgid=pid)) >= 2
        log = srv.log_path
    assert srv.pid is None
    assert wait_gone(lambda: live_processes(pgid=pid)) == []
    assert live_processes(cmd_contains=str(repo)) == []
    assert log.is_file() and log.stat().st_size > 0  # kept after stop


@pytest.mark.integration
def test_failed_start_reports_log_tail(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    (repo / MODEL_NAME / "1" / "model.pt").unlink()  # model.py's initialize() fails to load it
    with pytest.raises(ServiceUnavailableError, match="model.pt"):
        EmbeddedTriton(repo, log_path=tmp_path / "server.log", ready_timeout_s=120).start()
    assert wait_gone(lambda: live_processes(cmd_contains=str(repo))) == []


@pytest.mark.integration
def test_port_taken_is_retried(tmp_path: Path, monkeypatch):
    import emoframe.workers.serving.triton_server as ts

    real = ts.free_ports
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        calls = []

        def first_busy(n: int, host: str = ts.HOST) -> list[int]:
            calls.append(n)
            ports = real(n, host)
            return [busy.getsockname()[1]] + ports[1:] if len(calls) == 1 else ports

        monkeypatch.setattr(ts, "free_ports", first_busy)
        log = tmp_path / "server.log"
        with EmbeddedTriton(tmp_path, log_path=log, model_names=()) as srv:  # no models: starts in a second
            assert srv.running and len(calls) == 2
    assert "already in use" in log.read_text()


_CHILD = """
import sys, time
from pathlib import Path
from emoframe.workers.serving.triton_server import EmbeddedTriton
with EmbeddedTriton(Path(sys.argv[1]), log_path=Path(sys.argv[2]), ready_timeout_s=120) as srv:
    print(srv.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_signal_leaves_no_processes(tmp_path: Path, sig: signal.Signals):
    """SIGKILL runs no stop hook: the guard around the server (workers/processes/lifeline.py) takes the group down."""
    repo = make_repo(tmp_path / "repo")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(repo), str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = child.stdout.readline()
        assert line.strip().isdigit(), child.stderr.read()
        server_pid = int(line)
        assert len(live_processes(pgid=server_pid)) >= 2
        assert sum(Path(f"/proc/{pid}/comm").read_text().startswith("triton_python")
                   for pid in live_processes(pgid=server_pid)) >= 1, "a backend stub to be left behind"
        child.send_signal(sig)
        assert child.wait(timeout=60) != 0
    finally:
        if child.poll() is None:
            child.kill()
    assert wait_gone(lambda: live_processes(pgid=server_pid)) == []
    assert live_processes(cmd_contains=str(repo)) == []


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="KIND_GPU instance: needs a CUDA GPU, which these machines and CI do not have")
def test_gpu_instances(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    set_instance_kind(repo / MODEL_NAME, "KIND_GPU")
    batch = random_batch(4, np.random.default_rng(1))
    with EmbeddedTriton(repo, log_path=tmp_path / "server.log") as srv, TritonClient(srv.grpc_url) as c:
        c.check_ready()
        np.testing.assert_allclose(c.infer(batch), in_process(_scripted(), batch), atol=1e-5, rtol=0)


@pytest.mark.integration
def test_emoframe_triton_serves_the_repository_for_triton_url_and_stops_on_sigterm(tmp_path: Path):
    """The command a --triton-url user runs: it serves the repository's latest version on the ports given,
    refuses a taken port with one line (exit 2), and SIGTERM stops it with the server's whole process group."""
    from tests.test_deploy import VENV_BIN, ServiceProcesses, standalone_triton
    from emoframe.workers.spec.model_versions import latest_version

    procs = ServiceProcesses({})
    try:
        with standalone_triton(procs, tmp_path) as (p, url):
            with TritonClient(url) as client:
                assert client.served_version() == latest_version(ROOT / "model_repo" / MODEL_NAME).name
            port = int(url.rsplit(":", 1)[1])
            again = procs.run([str(VENV_BIN / "emoframe"), "triton", "--grpc-port", str(port), "--http-port",
                               str(free_port())], 60)
            assert again.returncode == 2, again.stderr
            assert f"--grpc-port {port}: port {port}" in again.stderr and "Traceback" not in again.stderr
            procs.stop(p, 20)  # SIGTERM, as `kill` or a service manager sends it
            assert p.returncode == 0
            assert "Triton stopped" in (tmp_path / "emoframe-triton.out").read_text()
        assert not procs.wait_gone(15), "tritonserver or a backend stub outlived `emoframe triton`"
        with socket.socket() as s:  # the port is free again, for a new server (which binds as this does)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        procs.end_all()


def test_infer_many_calls_on_wait_while_an_answer_is_awaited(monkeypatch):
    """Unit test of infer_many's waiting (the server's answers faked, slow): ``on_wait`` is the isolation
    watchdog's heartbeat while Triton is slow, called while an answer is awaited, and the answers still
    come in input order."""
    import emoframe.workers.inference.triton_client as tc

    class SlowServer(tc.TritonClient):
        def _validate(self, batch):
            pass

        def _send(self, batch):
            time.sleep(0.3 if batch["i"] == 0 else 0.0)  # the first answer is slow, the others quick
            return batch["i"]

    monkeypatch.setattr(tc, "WAIT_TICK_S", 0.05)
    waits = []
    with SlowServer("127.0.0.1:1", max_in_flight=2) as client:
        out = list(client.infer_many(({"i": i} for i in range(5)), on_wait=lambda: waits.append(1)))
        assert out == [0, 1, 2, 3, 4]
        assert 2 <= len(waits) <= 8  # about 0.3 s / 0.05 s, while the first answer was awaited
        assert list(client.infer_many({"i": i} for i in range(3))) == [0, 1, 2]  # no on_wait: plain waits
