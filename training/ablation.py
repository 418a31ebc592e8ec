"""The ablation (`emoframe ablate`): the paper's parts taken out one at a time, each variant trained with
several seeds, measured on the held-out synthetic test set, and the paper's claims judged against the
spread between seeds. A difference counts only where it exceeds that spread.

Runs are kept under ``runs/ablation/<variant>/seed<k>`` with their evaluation, so an interrupted ablation
resumes where it stopped (a run is reused only when its configuration and the training/evaluation code are
the ones at HEAD). docs/ablation.json holds every seed's figures, stamped with the commit, the contract
fingerprint and the data generator's hash; docs/ablation.md is rendered from it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from emoframe.training.evaluate import score
from emoframe.training.features import VideoArrays
from emoframe.training.recipes import DataRecipe, ensure_synth, load_splits, train_or_reuse
from emoframe.training.train import TrainConfig, load_pipeline
from emoframe.workers.spec.contract import CLASSES, fingerprint
from emoframe.workers.spec.policy import SYNTHETIC_POLICY

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "docs" / "ablation.json"
MARKDOWN_PATH = ROOT / "docs" / "ablation.md"
SEEDS = (0, 1, 2)
CONDITIONS = ("full", "faces_hidden_50", "audio_hidden_50")
RARE = ("Fear", "Disgust")
RUN_NAMES = {"full model": "full", "no modality dropout": "no_dropout", "cross-entropy (no focal loss)": "ce",
             "late fusion (no cross-attention)": "late", "visual branch only": "visual_only",
             "audio branch only": "audio_only"}


def variants(base: TrainConfig) -> dict[str, TrainConfig]:
    m = base.model
    return {
        "full model": base,
        "no modality dropout": dataclasses.replace(base, modality_drop=0.0, frame_drop=0.0),
        "cross-entropy (no focal loss)": dataclasses.replace(base, loss="ce"),
        "late fusion (no cross-attention)": dataclasses.replace(base, model=dataclasses.replace(m, fusion="late")),
        "visual branch only": dataclasses.replace(base, model=dataclasses.replace(m, modalities=("visual",))),
        "audio branch only": dataclasses.replace(base, model=dataclasses.replace(m, modalities=("audio",))),
    }


def code_version() -> dict:
    """Git tree ids of training/ and workers/ at HEAD, and whether either differs from HEAD: what a kept run
    or evaluation must match to be reused."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    return {"head": git("rev-parse", "HEAD"), "training": git("rev-parse", "HEAD:training"),
            "workers": git("rev-parse", "HEAD:workers"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", "training", "workers"))}


def _share_reader(cfg: TrainConfig, run_dir: Path, runs: Path) -> None:
    """The drawn-face readers depend on the seed and the data only, not on the fusion variant: a variant starts
    from another variant's readers of the same seed (train.prepare_reader checks their key and retrains on a
    mismatch; training reseeds after the readers, so the fusion model trains exactly as if it had made them)."""
    target = run_dir / "reader.pt"
    if cfg.reader != "drawn" or target.exists():
        return
    for other in sorted(runs.glob(f"ablation/*/seed{cfg.seed}/reader.pt")) + \
            ([runs / "full" / "reader.pt"] if cfg.seed == 0 else []):
        if other.exists() and other != target:
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(other, target)
            return


def _measure(cfg: TrainConfig, data: dict[str, list[VideoArrays]], run_dir: Path, runs: Path, code: dict) -> dict:
    """One variant and seed: train (or reuse), then voting on in every condition and voting off on full data."""
    key = {"config": cfg.to_dict(), "code": {k: code[k] for k in ("training", "workers")},
           "conditions": list(CONDITIONS), "policy": SYNTHETIC_POLICY.to_dict()}
    kept = run_dir / "ablation_eval.json"
    if kept.exists() and not code["dirty"]:
        saved = json.loads(kept.read_text())
        if saved["key"] == key:
            return saved["metrics"]
    trained_with = run_dir / "code.json"
    if trained_with.exists() and json.loads(trained_with.read_text()) != key["code"]:
        (run_dir / "history.json").unlink(missing_ok=True)  # trained by other code: train again
    _share_reader(cfg, run_dir, runs)
    best = train_or_reuse(cfg, data, run_dir)
    trained_with.write_text(json.dumps(key["code"]) + "\n")
    from emoframe.training.evaluate import infer_fn
    import torch

    pipeline = load_pipeline(best).eval()
    infer = infer_fn(pipeline, torch.device("cpu"))
    p = pipeline.model.cfg.preprocessing
    metrics = {cond: score(data["test"], infer, p, condition=cond, policy=SYNTHETIC_POLICY) for cond in CONDITIONS}
    metrics["full_no_voting"] = score(data["test"], infer, p, voting=False, policy=SYNTHETIC_POLICY)
    if not code["dirty"]:
        kept.write_text(json.dumps({"key": key, "metrics": metrics}) + "\n")
    return metrics


def run(recipe: DataRecipe, runs: Path, base: TrainConfig, seeds: tuple[int, ...] = SEEDS,
        only: list[str] | None = None) -> dict:
    """Every variant (or those named in ``only``) x seed. Returns the JSON document (not yet written)."""
    code = code_version()
    splits = ensure_synth(recipe)
    data = load_splits(splits, runs / "cache")
    results: dict[str, dict[str, dict]] = {}
    for name, cfg in variants(base).items():
        if only and name not in only and RUN_NAMES[name] not in only:
            continue
        for seed in seeds:
            seeded = dataclasses.replace(cfg, seed=seed)
            # The full model's seed is build-model's run: the same configuration, trained once.
            run_dir = runs / "full" if (name == "full model" and seeded == base) else \
                runs / "ablation" / RUN_NAMES[name] / f"seed{seed}"
            started = time.time()
            results.setdefault(name, {})[str(seed)] = _measure(seeded, data, run_dir, runs, code)
            print(f"{name}, seed {seed}: macro F1 {results[name][str(seed)]['full']['macro_f1']:.4f} "
                  f"({time.time() - started:.0f} s)", flush=True)
    n_frames = next(iter(next(iter(results.values())).values()))["full"]["frames"]
    return {"stamp": {"commit": code["head"], "dirty": code["dirty"], "date": time.strftime("%Y-%m-%d"),
                      "contract": fingerprint(), "data": recipe.describe(), "seeds": list(seeds),
                      "base_config": base.to_dict(), "policy": SYNTHETIC_POLICY.to_dict(), "test_frames": n_frames},
            "results": results}


def _rare(m: dict) -> float:
    return float(np.mean([m["per_class_f1"][CLASSES.index(c)] for c in RARE]))


def cell(doc: dict, variant: str, cond: str, metric: str = "macro_f1") -> np.ndarray:
    """One figure over the seeds: ``metric`` is a metrics key, or "rare_f1"."""
    per_seed = doc["results"][variant].values()
    return np.array([_rare(m[cond]) if metric == "rare_f1" else m[cond][metric] for m in per_seed])


def _ms(x: np.ndarray) -> str:
    return f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" if len(x) > 1 else f"{x.mean():.3f}"


# (claim, (variant, condition, metric) that should be higher, (variant, condition, metric) it should beat)
CLAIMS = (
    ("fusion beats the visual branch alone", ("full model", "full", "macro_f1"),
     ("visual branch only", "full", "macro_f1")),
    ("fusion beats the audio branch alone", ("full model", "full", "macro_f1"),
     ("audio branch only", "full", "macro_f1")),
    ("cross-attention beats late fusion", ("full model", "full", "macro_f1"),
     ("late fusion (no cross-attention)", "full", "macro_f1")),
    ("cross-attention beats late fusion with faces missing", ("full model", "faces_hidden_50", "macro_f1"),
     ("late fusion (no cross-attention)", "faces_hidden_50", "macro_f1")),
    ("modality dropout helps with faces missing", ("full model", "faces_hidden_50", "macro_f1"),
     ("no modality dropout", "faces_hidden_50", "macro_f1")),
    ("modality dropout helps with audio missing", ("full model", "audio_hidden_50", "macro_f1"),
     ("no modality dropout", "audio_hidden_50", "macro_f1")),
    ("focal loss helps the rare classes", ("full model", "full", "rare_f1"),
     ("cross-entropy (no focal loss)", "full", "rare_f1")),
    ("soft voting beats per-window labels", ("full model", "full", "macro_f1"),
     ("full model", "full_no_voting", "macro_f1")),
)


def judge(doc: dict) -> list[dict]:
    """Each claim: difference of the means and the spread (standard deviation of a difference of two
    single-seed figures); it holds where the difference exceeds the spread, is contradicted where it is
    below minus the spread, and is not shown otherwise."""
    out = []
    for claim, a, b in CLAIMS:
        if a[0] not in doc["results"] or b[0] not in doc["results"]:
            continue
        x, y = cell(doc, *a), cell(doc, *b)
        diff = float(x.mean() - y.mean())
        spread = float(np.sqrt(x.var(ddof=1) + y.var(ddof=1))) if min(len(x), len(y)) > 1 else float("nan")
        verdict = ("holds" if diff > spread else "contradicted" if diff < -spread else "not shown") \
            if spread == spread else "one seed: not judged"
        out.append({"claim": claim, "diff": diff, "spread": spread, "verdict": verdict})
    return out


def render(doc: dict) -> str:
    st = doc["stamp"]
    tc, data = st["base_config"], st["data"]
    lines = [
        "# Ablation on the held-out synthetic test set",
        "",
        f"Produced by `emoframe ablate` at commit `{st['commit'][:12]}` ({st['date']}); contract "
        f"`{st['contract']}`, data generator `{data['generator_sha256_16']}` (test: {data['test_videos']} videos, "
        f"seed {data['seeds'][2]}, {st['test_frames']:,} annotated frames). Each variant is trained with seeds "
        f"{', '.join(map(str, st['seeds']))} ({tc['epochs']} epochs x {tc['steps_per_epoch']} steps of "
        f"{tc['batch_size']} windows, face reader `{tc['reader']}`); figures are mean ± standard deviation over "
        "the seeds. Macro F1 is the ABAW metric (mean F1 over the 8 classes); the model hears the audio "
        "(the synthetic tones are what it learned). Faces/audio hidden = masks cleared on about 50% of frames "
        f"in 0.5-2 s stretches. Rare F1 = mean F1 of {' and '.join(RARE)}. Voting = sliding-window soft "
        "voting (0.6 s); raw = back-to-back windows, each frame's own prediction. Figures in "
        "`docs/ablation.json`.",
        "",
        "| variant | full data | faces hidden 50% | audio hidden 50% | full data, raw | rare F1 | flips/min |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in doc["results"]:
        lines.append(f"| {name} | {_ms(cell(doc, name, 'full'))} | {_ms(cell(doc, name, 'faces_hidden_50'))} | "
                     f"{_ms(cell(doc, name, 'audio_hidden_50'))} | {_ms(cell(doc, name, 'full_no_voting'))} | "
                     f"{_ms(cell(doc, name, 'full', 'rare_f1'))} | "
                     f"{cell(doc, name, 'full', 'flips_per_minute').mean():.1f} |")
    lines += ["", "The paper's claims, judged here: a claim holds where the difference of the means exceeds the "
                  "spread (the standard deviation of a difference between two single-seed figures).", "",
              "| claim | difference | spread | verdict |", "|---|---|---|---|"]
    for c in judge(doc):
        lines.append(f"| {c['claim']} | {c['diff']:+.3f} | {c['spread']:.3f} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def ablate(recipe: DataRecipe, runs: Path, base: TrainConfig, seeds: tuple[int, ...] = SEEDS,
           only: list[str] | None = None, json_path: Path = JSON_PATH, md_path: Path = MARKDOWN_PATH) -> str:
    """Measure and, from a clean tree with every variant, write docs/ablation.json and docs/ablation.md."""
    doc = run(recipe, runs, base, seeds, only)
    table = render(doc)
    if doc["stamp"]["dirty"]:
        print("training/ or workers/ has uncommitted changes: figures printed, not written (commit first)")
    elif only:
        print("a subset of the variants: figures printed, not written")
    else:
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
        md_path.write_text(table)
    return table
