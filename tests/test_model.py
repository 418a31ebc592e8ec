import dataclasses
import math

import pytest
import torch

from emoframe.training.export import example_inputs
from emoframe.training.model import ExportWrapper, FusionModel, ModelConfig, safe_attention
from emoframe.training.readers import EVIDENCE_FLOOR, FER_OTHER_MASS, DrawnFaceReader, FerReader
from emoframe.training.train import focal_loss, modality_dropout
from emoframe.workers.spec.contract import CLASSES, NUM_CLASSES, PREPROCESSING

T = PREPROCESSING.window


def model(**kw) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(ModelConfig(**kw))


def fusion_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The fusion model's inputs: a reader's evidence (log-probabilities) in the face tensor's place."""
    _, fm, mel, am = example_inputs(batch, seed)
    g = torch.Generator().manual_seed(seed)
    evidence = torch.log_softmax(torch.randn(batch, T, NUM_CLASSES, generator=g) * 3, -1).clamp_min(EVIDENCE_FLOOR)
    return evidence, fm, mel, am


def test_safe_attention_with_every_key_masked_is_zero_and_finite():
    q, k = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 7, 8, requires_grad=True)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    out = safe_attention(q, k, k, mask, heads=2)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


@pytest.mark.parametrize("missing", ["face_mask", "audio_mask", "both"])
def test_window_with_a_modality_entirely_missing_gives_finite_outputs_and_gradients(missing):
    m = model().train()
    face, fm, mel, am = fusion_inputs(3)
    if missing in ("face_mask", "both"):
        fm = torch.zeros_like(fm)
    if missing in ("audio_mask", "both"):
        am = torch.zeros_like(am)
    out = m(face, fm, mel, am)
    assert out.shape == (3, T, NUM_CLASSES) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_every_parameter_gets_a_gradient_with_both_modalities_present():
    m = model().train()
    face, fm, mel, am = fusion_inputs(2)
    m(face, fm, mel, am).square().mean().backward()  # some frames of each modality absent: missing tokens used
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize("fusion", ["cross", "late"])
def test_content_of_masked_frames_never_changes_the_output(fusion):
    m = model(fusion=fusion).eval()
    face, fm, mel, am = fusion_inputs(2, seed=3)
    fm[:, ::3] = False
    am[:, 1::4] = False
    am[1] = False  # one window with no audio at all
    base = m(face, fm, mel, am)
    face2, mel2 = face.clone(), mel.clone()
    face2[~fm] = torch.nan
    mel2[~am] = torch.nan  # even NaN in masked frames must not leak
    torch.testing.assert_close(m(face2, fm, mel2, am), base, rtol=0, atol=0)


def test_attending_branch_falls_back_on_itself_when_the_other_is_absent():
    """With no audio at all, the cross-attention adds nothing: same as a model whose cross blocks are removed."""
    m = model().eval()
    face, fm, mel, am = fusion_inputs(2, seed=4)
    am[:] = False
    with torch.no_grad():
        v = m.visual(m.visual_enc(face), fm)
        a = m.audio(m.audio_enc(mel), am)
        for v_blk, a_blk in zip(m.v_from_a, m.a_from_v):
            # visual attention reads only absent audio keys -> exactly zero; only its MLP residual remains
            v, a = v + v_blk.mlp(v_blk.norm_mlp(v)), a_blk(a, v, fm)
        expected = m.head(torch.cat([v, a], -1))
    torch.testing.assert_close(m(face, fm, mel, am), expected)


def test_evidence_skip_adds_the_face_evidence_to_the_logits_where_a_face_is():
    """With the skip, a frame's logits are the network's correction plus the reader's evidence; without it,
    the network alone. Masked frames get no evidence either way."""
    with_skip = model(evidence_skip=True).eval()
    without = FusionModel(dataclasses.replace(with_skip.cfg, evidence_skip=False)).eval()
    without.load_state_dict(with_skip.state_dict())
    ev, fm, mel, am = fusion_inputs(2, seed=6)
    fm[:, ::2] = False
    diff = with_skip(ev, fm, mel, am) - without(ev, fm, mel, am)
    torch.testing.assert_close(diff[fm], ev[fm])
    torch.testing.assert_close(diff[~fm], torch.zeros_like(diff[~fm]))


@pytest.mark.parametrize("modalities", [("visual",), ("audio",)])
def test_single_branch_models_ignore_the_other_input(modalities):
    m = model(modalities=modalities).eval()
    face, fm, mel, am = fusion_inputs(2)
    out = m(face, fm, mel, am)
    if modalities == ("visual",):
        other = m(face, fm, mel * 0 + 7, ~am)
    else:
        other = m(-face, ~fm, mel, am)
    torch.testing.assert_close(out, other, rtol=0, atol=0)


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_ignores_unannotated():
    logits = torch.randn(10, NUM_CLASSES)
    target = torch.randint(0, NUM_CLASSES, (10,))
    target[3] = -1
    keep = target != -1
    ce = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(focal_loss(logits, target, 0.0, None), ce)
    # gamma > 0 down-weights easy frames: loss strictly smaller than CE
    assert focal_loss(logits, target, 2.0, None) < ce


def test_modality_dropout_only_removes():
    g = torch.Generator().manual_seed(0)
    fm = torch.rand(64, T, generator=g) > 0.5
    am = torch.rand(64, T, generator=g) > 0.5
    fm2, am2 = modality_dropout(fm, am, 0.5, 0.3, g)
    assert not (fm2 & ~fm).any() and not (am2 & ~am).any()
    fully_hidden_v = (~fm2).all(1) & fm.any(1)
    fully_hidden_a = (~am2).all(1) & am.any(1)
    assert fully_hidden_v.any() and fully_hidden_a.any()
    assert not (fully_hidden_v & fully_hidden_a & (fm2 != fm).any(1) & (am2 != am).all(1)).any()


def test_config_round_trip_and_validation():
    cfg = ModelConfig(fusion="late", modalities=("audio",))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig(fusion="sum")
    with pytest.raises(ValueError, match="modalities"):
        dataclasses.replace(cfg, modalities=())


def test_fer_reader_gives_log_probabilities_with_other_fixed_and_stays_frozen():
    reader = FerReader()  # random weights suffice for the structure; the real file is tested elsewhere
    reader.train()  # must not switch BatchNorm to batch statistics
    assert not reader.net.training and not any(p.requires_grad for p in reader.parameters())
    face = example_inputs(3)[0].reshape(-1, *example_inputs(3)[0].shape[2:])
    ev = reader(face)
    assert ev.shape == (len(face), NUM_CLASSES) and ev.min() >= EVIDENCE_FLOOR
    torch.testing.assert_close(ev.exp().sum(-1), torch.ones(len(face)), atol=1e-3, rtol=0)
    torch.testing.assert_close(ev[:, CLASSES.index("Other")], torch.full((len(face),), math.log(FER_OTHER_MASS)))
    torch.testing.assert_close(reader(face[:5]), ev[:5])  # per frame: no statistics shared across the batch


@pytest.mark.parametrize("reader", [DrawnFaceReader, FerReader])
def test_exported_pipeline_ignores_the_pixels_of_masked_faces(reader):
    torch.manual_seed(0)
    pipe = ExportWrapper(reader(), model()).eval()
    face, fm, mel, am = example_inputs(2, seed=5)
    fm[:, ::2] = False
    base = pipe(face, fm, mel, am)
    assert base.shape == (2, T, NUM_CLASSES)
    torch.testing.assert_close(base.sum(-1), torch.ones(2, T))
    face2 = face.clone()
    face2[~fm] = 255 - face2[~fm]
    torch.testing.assert_close(pipe(face2, fm, mel, am), base, rtol=0, atol=0)
    face2[fm] = 255 - face2[fm]
    assert not torch.allclose(pipe(face2, fm, mel, am), base)  # present faces do matter
