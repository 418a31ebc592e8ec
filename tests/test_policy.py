"""The labelling policy (stride, voting span, audio on/off): what it changes, what it must not change, and
how a run records and reuses it."""

from __future__ import annotations

import numpy as np
import pytest

from emoframe.workers.spec.contract import NUM_CLASSES, PREPROCESSING, Preprocessing, fingerprint
from emoframe.workers.inference.labeling import predict_video
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.media.preprocess import FaceRows, InputChunk


def _chunks(n: int, face_frames: np.ndarray, audio: np.ndarray, size: int = 50) -> list[InputChunk]:
    """One face (track 0) on ``face_frames``, nothing elsewhere; sound where ``audio``."""
    out = []
    for s in range(0, n, size):
        e = min(n, s + size)
        f = np.flatnonzero(face_frames[s:e])
        m = len(f)
        rows = FaceRows(f.astype(np.int32), np.zeros(m, np.int32), np.ones(m, bool), np.zeros((m, 4), np.float32),
                        np.ones(m, np.float32), np.full((m, 4, 4, 3), 128, np.uint8))
        out.append(InputChunk(s, np.zeros((e - s, 2, 2), np.float32), audio[s:e].copy(), rows))
    return out


class Recorder:
    """An ``infer_many`` that keeps every batch it is sent and answers with fixed per-frame probabilities:
    class 4 on a face frame, class 1 on a frame the model hears without a face, class 0 otherwise."""

    def __init__(self):
        self.batches: list[dict[str, np.ndarray]] = []

    def __call__(self, batches):
        for b in batches:
            self.batches.append(b)
            probs = np.full(b["face_mask"].shape + (NUM_CLASSES,), 0.01, np.float32)
            cls = np.where(b["face_mask"], 4, np.where(b["audio_mask"], 1, 0))
            np.put_along_axis(probs, cls[..., None], 0.93, axis=-1)
            yield probs


def _run(policy: LabellingPolicy, n: int = 120, voting: bool = True):
    face = np.zeros(n, bool)
    face[:60] = True  # a face for the first half
    audio = np.ones(n, bool)
    audio[100:] = False  # sound until frame 100
    rec = Recorder()
    pred = predict_video(_chunks(n, face, audio), n, 25.0, rec, voting=voting, policy=policy)
    return pred, rec


def test_audio_off_sends_the_model_no_audio_and_leaves_faceless_frames_without_evidence():
    pred, rec = _run(LabellingPolicy(audio=False))
    assert rec.batches and not any(b["audio_mask"].any() for b in rec.batches)
    faceless = ~pred.face_present
    # audio_present stays the fact about the video, whatever the model heard
    np.testing.assert_array_equal(pred.audio_present, pred.frame < 100)
    np.testing.assert_array_equal(pred.evidence, pred.face_present)
    assert (pred.labels[pred.face_present] == 4).all()
    assert faceless.sum() == 60 and not pred.evidence[faceless].any()


def test_audio_on_lets_the_model_hear_and_faceless_frames_with_sound_carry_evidence():
    pred, rec = _run(LabellingPolicy(audio=True))
    assert any(b["audio_mask"].any() for b in rec.batches)
    heard = ~pred.face_present & pred.audio_present
    assert heard.sum() == 40 and pred.evidence[heard].all()
    assert (pred.labels[heard & (pred.frame >= 65) & (pred.frame < 95)] == 1).all()  # away from voting's edges
    assert not pred.evidence[~pred.face_present & ~pred.audio_present].any()


def test_stride_and_voting_span_change_the_labelling_not_the_model_inputs():
    _, dense = _run(LabellingPolicy(stride=4))
    _, sparse = _run(LabellingPolicy(stride=16))
    windows = lambda rec: sum(len(b["face_mask"]) for b in rec.batches)  # noqa: E731
    assert windows(dense) > 2 * windows(sparse)
    assert dense.batches[0]["face"].shape[1:] == sparse.batches[0]["face"].shape[1:]  # same contract tensors
    flicker = LabellingPolicy(vote_seconds=0.0)

    def flips(policy):  # a model that says class 4, but class 5 on one frame in four (windows start at x4)
        def infer(batches):
            for b in batches:
                probs = np.full(b["face_mask"].shape + (NUM_CLASSES,), 0.01, np.float32)
                probs[:, :, 4] = 0.6
                probs[:, 0::4, 4], probs[:, 0::4, 5] = 0.01, 0.9
                yield probs
        n = 64
        pred = predict_video(_chunks(n, np.ones(n, bool), np.zeros(n, bool)), n, 25.0, infer, policy=policy)
        return int(np.count_nonzero(np.diff(pred.labels)))
    assert flips(flicker) >= 30 and flips(POLICY) == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"stride": 0}, "stride must be"), ({"stride": True}, "stride must be"), ({"stride": 2.5}, "stride must be"),
    ({"vote_seconds": -1.0}, "vote_seconds must be"), ({"vote_seconds": float("nan")}, "vote_seconds must be"),
])
def test_bad_policy_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabellingPolicy(**kwargs)


def test_a_stride_longer_than_the_window_is_refused_before_any_inference():
    rec = Recorder()
    n = 80
    with pytest.raises(ValueError, match=f"longer than the model's window of {PREPROCESSING.window}"):
        predict_video(_chunks(n, np.ones(n, bool), np.ones(n, bool)), n, 25.0, rec,
                      policy=LabellingPolicy(stride=PREPROCESSING.window + 1))
    assert rec.batches == []


def test_cli_reports_a_bad_stride_without_a_traceback(capsys):
    from emoframe.flows.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["label", "x.mp4", "--stride", "500"])
    assert exc.value.code == 2
    assert "emoframe label: stride 500 is longer than the model's window" in capsys.readouterr().err


def test_checkpoints_from_before_the_split_load_and_keep_the_contract():
    """Old checkpoints carry stride and vote_seconds in their preprocessing; they never shaped a tensor."""
    legacy = {**PREPROCESSING.to_dict(), "stride": 16, "vote_seconds": 0.6}
    assert Preprocessing.from_dict(legacy) == PREPROCESSING
    assert fingerprint(Preprocessing.from_dict(legacy)) == fingerprint()
    with pytest.raises(TypeError):
        Preprocessing.from_dict({**PREPROCESSING.to_dict(), "crop_sise": 64})  # a real unknown key still fails


def test_each_command_gets_its_own_audio_default_from_one_parser():
    """label and serve do not hear the audio unless asked; evaluate does. The flag is shared, so a default set
    for evaluate once leaked into label (every CLI run heard the audio)."""
    from emoframe.flows.cli.main import _policy_kwargs, build_parser

    ap = build_parser("label")
    assert _policy_kwargs(ap.parse_args(["label", "x.mp4"]), "label")["audio"] is False
    assert _policy_kwargs(ap.parse_args(["serve", "x", "--out", "o", "--cron", "0 2 * * *"]), "serve")["audio"] \
        is False
    assert _policy_kwargs(ap.parse_args(["evaluate", "m.pt"]), "evaluate")["audio"] is True
    assert _policy_kwargs(ap.parse_args(["label", "x.mp4", "--audio", "on"]), "label")["audio"] is True
    assert _policy_kwargs(ap.parse_args(["evaluate", "m.pt", "--audio", "off"]), "evaluate")["audio"] is False
