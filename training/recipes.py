"""The documented recipe of the deployed model (`emoframe build-model`) and the data it shares with the
ablation (training/ablation.py): the same seeded synthetic splits, so anyone can rerun them and get the same
data; the ablation's full model at seed 0 is the deployed model's run and is not trained twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict


from emoframe.training import model_card
from emoframe.training.datasets import load_items, synth_split
from emoframe.training.evaluate import evaluate
from emoframe.training.export import export
from emoframe.training.features import VideoArrays
from emoframe.training.train import TrainConfig, load_pipeline, train
from emoframe.workers.spec.policy import SYNTHETIC_POLICY


@dataclass(frozen=True)
class DataRecipe:
    root: Path = Path("data/synth")
    train_videos: int = 64
    val_videos: int = 12
    test_videos: int = 40  # rare classes are ~4% of frames: enough videos for their F1 to mean something
    seeds: tuple[int, int, int] = (101, 202, 303)  # train, val, test: disjoint, so test is held out
    min_seconds: float = 20.0
    max_seconds: float = 40.0

    def describe(self) -> dict:
        return {"dataset": "emoframe synthetic audio-visual expressions (training/synth.py)",
                "generator_sha256_16": _generator_hash(),
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}}


def _generator_hash() -> str:
    """Hash of the generator's source: data made by an older generator is regenerated, never reused."""
    import emoframe.training.synth

    return hashlib.sha256(Path(emoframe.training.synth.__file__).read_bytes()).hexdigest()[:16]


def ensure_synth(recipe: DataRecipe) -> dict[str, Path]:
    from emoframe.training.synth import generate  # imported here: synth needs PyAV and cv2 drawing, nothing else does

    splits = {}
    for name, n, seed in zip(("train", "val", "test"), (recipe.train_videos, recipe.val_videos, recipe.test_videos),
                             recipe.seeds):
        root = recipe.root / name
        stamp = {"videos": n, "seed": seed, "min_seconds": recipe.min_seconds, "max_seconds": recipe.max_seconds,
                 "generator": _generator_hash()}
        stamp_file = root / "recipe.json"
        if not stamp_file.exists() or json.loads(stamp_file.read_text()) != stamp:
            if root.exists():
                shutil.rmtree(root)
            generate(root, n, seed, min_seconds=recipe.min_seconds, max_seconds=recipe.max_seconds, progress=True)
            stamp_file.write_text(json.dumps(stamp, indent=1))
        splits[name] = root
    return splits


def load_splits(splits: dict[str, Path], cache: Path) -> dict[str, list[VideoArrays]]:
    return {name: load_items(synth_split(root), cache, desc=f"{name} features") for name, root in splits.items()}


def train_or_reuse(cfg: TrainConfig, data: dict[str, list[VideoArrays]], run_dir: Path) -> Path:
    """Train unless run_dir already holds a finished run of exactly this configuration."""
    hist = run_dir / "history.json"
    if hist.exists() and json.loads(hist.read_text())["config"] == cfg.to_dict() and (run_dir / "best.pt").exists():
        print(f"reusing finished run {run_dir}")
    else:
        train(cfg, data["train"], data["val"], run_dir, resume=True)
    return run_dir / "best.pt"


# The synthetic recipes train the fusion model on the drawn-face reader's evidence (FER cannot read drawings).
SYNTH_TRAIN = TrainConfig(reader="drawn")
# `make model` reproduces the committed model's test figures within this (macro F1, same seed, same data).
REPRODUCE_TOLERANCE = 0.02


def build_model(recipe: DataRecipe, runs: Path, repo: Path, cfg: TrainConfig = SYNTH_TRAIN,
                version: int | None = None) -> tuple[dict, Path | None]:
    """Train (or reuse) the recipe's run and measure it: the fusion model with the drawn-face reader on the
    synthetic test set (where fusion, missing modalities and voting are measured) and the deployed pipeline
    (FER reader) on the same set. Exports to ``version`` only when one is given: a new model version is an
    explicit choice. Returns the metrics and the version folder (None when nothing was exported)."""
    splits = ensure_synth(recipe)
    data = load_splits(splits, runs / "cache")
    best = train_or_reuse(cfg, data, runs / "full")
    metrics = {
        "synthetic": evaluate(load_pipeline(best), data["test"]),
        "deployed_on_synthetic": evaluate(load_pipeline(best, reader="fer"), data["test"], ("full",)),
        "test_set": str(splits["test"]),
        "labelling_policy": SYNTHETIC_POLICY.to_dict(),  # audio on: the synthetic tones are what it learned
    }
    (runs / "full" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if version is None:
        return metrics, None
    vdir = export(load_pipeline(best, reader="fer"), repo, version=version, metrics={"test_set": str(splits["test"])},
                  data=recipe.describe(), train_config=cfg.to_dict())
    metrics["ci_check"] = ci_check(vdir, runs / "ci_check")
    (vdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if repo.resolve() == (model_card.ROOT / "model_repo").resolve():
        model_card.write(vdir)  # docs/model.md shows the deployed version's figures
    return metrics, vdir


def compare_with(recorded: dict, measured: dict, tolerance: float = REPRODUCE_TOLERANCE) -> list[str]:
    """Lines naming each synthetic-test figure (macro F1 per condition, voting on) that moved by more than
    ``tolerance``; empty when the run reproduces the recorded model."""
    out = []
    for cond, by_vote in recorded.get("synthetic", {}).items():
        was, now = by_vote["voting"]["macro_f1"], measured["synthetic"][cond]["voting"]["macro_f1"]
        if abs(now - was) > tolerance:
            out.append(f"{cond}: macro F1 {now:.4f}, recorded {was:.4f} (tolerance {tolerance})")
    return out


class CICheck(TypedDict):
    """synth.generate's arguments for the CI check set."""

    videos: int
    seed: int
    min_seconds: float
    max_seconds: float


# A small set CI regenerates (same generator, same seed) to check the committed model still scores
# what it scored when it was exported.
CI_CHECK: CICheck = {"videos": 8, "seed": 404, "min_seconds": 20.0, "max_seconds": 30.0}


def ci_check(vdir: Path, work: Path) -> dict:
    """Macro F1 / accuracy of the exported TorchScript (voting on) on the freshly generated CI_CHECK set."""
    import torch

    from emoframe.training.evaluate import score, scripted_infer
    from emoframe.training.synth import generate

    generate(work, CI_CHECK["videos"], CI_CHECK["seed"], min_seconds=CI_CHECK["min_seconds"],
             max_seconds=CI_CHECK["max_seconds"])
    videos = load_items(synth_split(work), None, desc="ci-check features")
    m = score(videos, scripted_infer(torch.jit.load(str(vdir / "model.pt"))))
    return {**CI_CHECK, "macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "frames": m["frames"]}
