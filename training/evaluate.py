"""Evaluation: the ABAW metric (macro F1 over 8 classes, -1 excluded), accuracy, per-class F1 and the
confusion matrix, with soft voting on and off, under missing-modality conditions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from emoframe.training.features import VideoArrays
from emoframe.training.metrics import summarize
from emoframe.training.model import ExportWrapper
from emoframe.workers.spec.contract import CLASSES, INPUT_NAMES, PREPROCESSING, Preprocessing, fingerprint
from emoframe.workers.inference.labeling import InferMany, arrays_to_chunks, predict_video
from emoframe.workers.spec.policy import SYNTHETIC_POLICY, LabellingPolicy
from emoframe.workers.inference.voting import label_flips

CONDITIONS = ("full", "faces_hidden_50", "audio_hidden_50", "no_audio_track")


def hidden_stretches(n: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """True on about half of the frames, in alternating stretches of 0.5-2 s (occlusions, silences)."""
    hide = np.zeros(n, bool)
    pos, hidden = int(rng.integers(0, max(1, int(fps)))), bool(rng.integers(0, 2))
    while pos < n:
        length = int(rng.uniform(0.5, 2.0) * fps) + 1
        hide[pos : pos + length] = hidden
        pos, hidden = pos + length, not hidden
    return hide


def apply_condition(v: VideoArrays, condition: str, seed: int) -> dict[str, np.ndarray]:
    """The video's inputs with a modality hidden as ``condition`` says. Hidden = mask False."""
    arrays = {"face": v.face, "face_mask": v.face_mask.copy(), "mel": v.mel, "audio_mask": v.audio_mask.copy()}
    rng = np.random.default_rng([seed, len(v)])
    if condition == "faces_hidden_50":
        arrays["face_mask"] &= ~hidden_stretches(len(v), v.fps, rng)
    elif condition == "audio_hidden_50":
        arrays["audio_mask"] &= ~hidden_stretches(len(v), v.fps, rng)
    elif condition == "no_audio_track":
        arrays["audio_mask"][:] = False
        arrays["mel"] = np.zeros_like(v.mel)
    elif condition != "full":
        raise ValueError(f"unknown condition {condition!r}; choose from {CONDITIONS}")
    return arrays


def infer_fn(pipeline: ExportWrapper, device: torch.device) -> InferMany:
    """``infer_many`` for ``predict_video`` from a reader + fusion model: numpy batches -> probabilities.

    The same as calling the pipeline, but each distinct face crop is read once: the reader is per frame and
    is most of the cost, and overlapping windows, voting on and off and the missing-modality conditions
    show it the same crops again (7 times per frame in the ablation). Crops are keyed by a hash of their
    pixels, so a cached answer is only ever reused for an identical crop."""
    memo: dict[bytes, np.ndarray] = {}

    def infer_many(batches):
        pipeline.eval()
        with torch.inference_mode():
            for b in batches:
                face = b["face"]
                flat = face.reshape(-1, *face.shape[2:])
                keys = [hashlib.blake2b(c.tobytes(), digest_size=16).digest() for c in flat]
                todo = {k: i for i, k in enumerate(keys) if k not in memo}
                if todo:
                    new = pipeline.reader(torch.from_numpy(flat[list(todo.values())]).to(device)).cpu().numpy()
                    memo.update(zip(todo, new))
                evidence = torch.from_numpy(np.stack([memo[k] for k in keys]).reshape(*face.shape[:2], -1))
                rest = [torch.from_numpy(b[k]).to(device) for k in INPUT_NAMES[1:]]
                yield pipeline.fuse(evidence.to(device), *rest).cpu().numpy()

    return infer_many


def scripted_infer(module: torch.jit.ScriptModule) -> InferMany:
    """``infer_many`` from an exported model (it already returns probabilities)."""

    def infer_many(batches):
        with torch.inference_mode():
            for b in batches:
                yield module(*[torch.from_numpy(b[k]) for k in INPUT_NAMES]).numpy()

    return infer_many


def score(videos: list[VideoArrays], infer_many: InferMany, p: Preprocessing = PREPROCESSING, *,
          voting: bool = True, condition: str = "full", seed: int = 0,
          policy: LabellingPolicy = SYNTHETIC_POLICY) -> dict:
    """Run the serving labelling path over whole videos; ABAW metrics plus label flips per minute. The
    policy defaults to the synthetic set's (audio on: its tones are what the audio branch learned)."""
    preds, labels, flips, minutes = [], [], 0, 0.0
    for v in videos:
        arrays = apply_condition(v, condition, seed)
        pred = predict_video(arrays_to_chunks(arrays), len(v), v.fps, infer_many, voting=voting, p=p, policy=policy)
        preds.append(pred.labels.astype(np.int64))
        labels.append(v.labels)
        flips += label_flips(pred.labels)
        minutes += len(v) / v.fps / 60.0
    m = summarize(np.concatenate(labels), np.concatenate(preds))
    m["flips_per_minute"] = flips / minutes if minutes else 0.0
    return m


def evaluate(pipeline: ExportWrapper, videos: list[VideoArrays], conditions=CONDITIONS, seed: int = 0,
             device: str = "cpu", policy: LabellingPolicy = SYNTHETIC_POLICY) -> dict:
    """{condition: {"voting": metrics, "no_voting": metrics}}; metrics include label flips per minute."""
    dev = torch.device(device)
    pipeline = pipeline.to(dev).eval()
    return evaluate_infer(infer_fn(pipeline, dev), videos, pipeline.model.cfg.preprocessing, conditions, seed, policy)


def evaluate_infer(infer_many: InferMany, videos: list[VideoArrays], p: Preprocessing = PREPROCESSING,
                   conditions=CONDITIONS, seed: int = 0, policy: LabellingPolicy = SYNTHETIC_POLICY) -> dict:
    """``evaluate`` for any model behind an ``infer_many`` (a training model, an exported TorchScript file)."""
    return {cond: {("voting" if voting else "no_voting"): score(videos, infer_many, p, voting=voting, condition=cond,
                                                                seed=seed, policy=policy)
                   for voting in (True, False)}
            for cond in conditions}


class ModelFileError(ValueError):
    """A model path that cannot be evaluated; the message says what to give instead."""


def load_for_evaluation(path: Path) -> tuple[InferMany, str]:
    """What ``emoframe evaluate`` scores: a training checkpoint (``best.pt``), an exported TorchScript file
    (``model.pt``) or a model-repository version folder (``model_repo/expression_fusion/1``). Exported models
    must carry this code's contract fingerprint: their inputs would otherwise be built differently."""
    from emoframe.training.export import MODEL_FILE, METADATA_FILE, read_metadata

    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise ModelFileError(f"{path} has no {MODEL_FILE}: give a model-repository version folder "
                                 f"(model_repo/expression_fusion/<version>), a model.pt or a training checkpoint")
        path = path / MODEL_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        module = None  # not TorchScript: a training checkpoint
    if module is None:
        from emoframe.training.train import load_pipeline

        try:
            pipeline = load_pipeline(path)
        except Exception as exc:
            raise ModelFileError(f"{path} is neither an exported TorchScript model nor a training checkpoint "
                                 f"({type(exc).__name__}: {exc})") from None
        if fingerprint(pipeline.model.cfg.preprocessing) != fingerprint():
            raise ModelFileError(f"{path} was trained with another preprocessing contract than this code's")
        return infer_fn(pipeline, torch.device("cpu")), f"checkpoint {path}"
    meta_file = path.parent / METADATA_FILE
    if not meta_file.is_file():
        raise ModelFileError(f"{path} has no {METADATA_FILE} beside it: its contract cannot be checked "
                             f"(evaluate the model-repository version folder it was exported to)")
    meta = read_metadata(path.parent)
    if meta.get("contract_fingerprint") != fingerprint():
        raise ModelFileError(f"{path} was exported with contract {meta.get('contract_fingerprint')}, this code "
                             f"builds inputs for {fingerprint()}: evaluate it with the emoframe version that "
                             f"exported it (commit {meta.get('commit', 'unknown')})")
    return scripted_infer(module.eval()), f"exported model {path} (version {meta.get('version')})"


def format_report(result: dict) -> str:
    lines = ["condition          voting  macroF1  acc     flips/min  per-class F1 ("
             + " ".join(c[:3] for c in CLASSES) + ")"]
    for cond, by_vote in result.items():
        for key, m in by_vote.items():
            pcf = " ".join(f"{x:.2f}" for x in m["per_class_f1"])
            lines.append(f"{cond:<18} {'on' if key == 'voting' else 'off':<7} {m['macro_f1']:.4f}   "
                         f"{m['accuracy']:.4f}  {m['flips_per_minute']:9.1f}  {pcf}")
    return "\n".join(lines)
