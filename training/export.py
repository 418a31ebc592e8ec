"""Export a trained model to model_repo/expression_fusion/<version>/ for Triton's Python backend.

    <version>/model.pt        TorchScript (loaded with torch alone; model.py imports nothing of emoframe)
    <version>/metadata.json   classes, preprocessing, contract fingerprint, model/training config, data, metrics, commit
    config.pbtxt              generated from emoframe.workers.spec.contract
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import torch

from emoframe.training.model import ExportWrapper
from emoframe.workers.spec.model_versions import MODEL_FILE, latest_version
from emoframe.workers.spec.contract import CLASSES, MODEL_NAME, contract_dict, fingerprint, input_specs
from emoframe.workers.serving import triton_config
from emoframe.workers.serving.triton_config import write_config

METADATA_FILE = "metadata.json"
# The Python backend's source; each exported version gets a copy as model.py (Triton wants one in each).
BACKEND_SOURCE = Path(triton_config.__file__).resolve().parent / "triton_backend.py"


def git_commit() -> str:
    """The commit the model was trained from; '+dirty' when the tree had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "workers"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def example_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs with the contract's shapes and dtypes, both masks partly False."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for spec in input_specs():
        shape = (batch, *spec.shape)
        if spec.dtype == "UINT8":
            out.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=g))
        elif spec.dtype == "BOOL":
            out.append(torch.rand(shape, generator=g) > 0.3)
        else:
            out.append(torch.randn(shape, generator=g) * 3 - 5)
    return tuple(out)


def to_torchscript(pipeline: ExportWrapper) -> torch.jit.ScriptModule:
    """Traced ``forward`` and ``fuse``: with ``fuse`` (and the ``reader`` submodule) the Triton backend reads
    each distinct face crop of a batch once (workers/serving/triton_backend.py)."""
    wrapper = pipeline.eval().cpu()

    def methods(batch: int, seed: int) -> dict[str, tuple[torch.Tensor, ...]]:
        face, *rest = example_inputs(batch, seed)
        evidence = wrapper.reader(face.reshape(-1, *face.shape[2:])).view(*face.shape[:2], -1)
        return {"forward": (face, *rest), "fuse": (evidence, *rest)}

    with torch.no_grad():
        return torch.jit.trace_module(wrapper, methods(2, 0), check_inputs=[methods(3, 1), methods(1, 2)])


def next_version(model_dir: Path) -> int:
    latest = latest_version(model_dir)
    return int(latest.name) + 1 if latest else 1


def export(pipeline: ExportWrapper, repo: Path, *, version: int | None = None, metrics: dict | None = None,
           data: dict | None = None, train_config: dict | None = None, kind: str = "KIND_CPU") -> Path:
    """Write a new model version (face reader + fusion model); returns its folder. An existing version is never
    overwritten."""
    model = pipeline.model
    model_dir = repo / MODEL_NAME
    version = version or next_version(model_dir)
    vdir = model_dir / str(version)
    if (vdir / MODEL_FILE).exists():
        raise FileExistsError(f"{vdir / MODEL_FILE} exists; export to a new version (omit --version)")
    vdir.mkdir(parents=True, exist_ok=True)
    scripted = to_torchscript(pipeline)
    scripted.save(str(vdir / MODEL_FILE))
    shutil.copyfile(BACKEND_SOURCE, vdir / "model.py")
    meta = {
        "model_name": MODEL_NAME,
        "version": version,
        "classes": list(CLASSES),
        "contract_fingerprint": fingerprint(model.cfg.preprocessing),
        "contract": contract_dict(model.cfg.preprocessing),
        "model_config": model.cfg.to_dict(),
        "reader": type(pipeline.reader).__name__,
        "reader_zoom": getattr(pipeline.reader, "zoom", 1.0),
        "train_config": train_config or {},
        "data": data or {},
        "metrics": metrics or {},
        "commit": git_commit(),
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in pipeline.parameters()),
        "trained_parameters": sum(p.numel() for p in model.parameters()),
    }
    (vdir / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    write_config(model_dir, kind=kind)
    return vdir


def read_metadata(vdir: Path) -> dict:
    return json.loads((vdir / METADATA_FILE).read_text())
