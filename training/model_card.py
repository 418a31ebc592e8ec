"""docs/model.md's figures, rendered from the deployed version's metrics.json (written by `emoframe build-model
--version N`), so the page cannot drift from what was measured. tests/test_published_figures.py re-renders
and compares.

    .venv/bin/python -m emoframe.training.model_card      # re-render docs/model.md from the deployed version's files
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from emoframe.training.export import latest_version
from emoframe.workers.spec.contract import CLASSES, MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
MODEL_CARD = ROOT / "docs" / "model.md"
START, END = "<!-- model-figures:start -->", "<!-- model-figures:end -->"
CONDITION_NAMES = {"full": "full data", "faces_hidden_50": "faces hidden in 50% of frames",
                   "audio_hidden_50": "audio hidden in 50% of frames", "no_audio_track": "no audio track"}


def deployed_version(repo: Path = ROOT / "model_repo") -> Path:
    vdir = latest_version(repo / MODEL_NAME)
    if vdir is None:
        raise FileNotFoundError(f"no exported model under {repo / MODEL_NAME}")
    return vdir


def _table(result: dict) -> list[str]:
    head = " | ".join(c[:3] for c in CLASSES)
    lines = [f"| condition | voting | macro F1 | accuracy | flips/min | F1 {head} |",
             "|" + "---|" * (5 + len(CLASSES))]
    for cond, by_vote in result.items():
        for key, m in by_vote.items():
            f1 = " | ".join(f"{x:.2f}" for x in m["per_class_f1"])
            lines.append(f"| {CONDITION_NAMES.get(cond, cond)} | {'on' if key == 'voting' else 'off'} | "
                         f"{m['macro_f1']:.3f} | {m['accuracy']:.3f} | {m['flips_per_minute']:.1f} | {f1} |")
    return lines


def _policy_note(metrics: dict) -> str:
    pol = metrics.get("labelling_policy")
    if not pol:
        return ""
    return (f", labelled with stride {pol['stride']}, {pol['vote_seconds']:g} s voting and the audio "
            f"{'heard' if pol['audio'] else 'not heard'} (the synthetic tones are what the audio branch learned)")


def render(vdir: Path) -> str:
    metrics = json.loads((vdir / "metrics.json").read_text())
    meta = json.loads((vdir / "metadata.json").read_text())
    tc, data = meta["train_config"], meta["data"]
    frames = metrics["synthetic"]["full"]["voting"]["frames"]
    ci = metrics["ci_check"]
    lines = [
        f"Version {meta['version']}, exported from commit `{meta['commit'][:12]}` ({meta['exported_at'][:10]}, torch "
        f"{meta['torch']}); contract `{meta['contract_fingerprint']}`; {meta['parameters']:,} parameters, of which "
        f"{meta['trained_parameters']:,} trained (the rest is the frozen FER2013 network). Training: reader "
        f"`{tc['reader']}` ({tc['reader_epochs']} epochs), then {tc['epochs']} epochs x {tc['steps_per_epoch']} steps "
        f"of {tc['batch_size']} windows, {tc['loss']} loss, seed {tc['seed']}. Data: generator "
        f"`{data['generator_sha256_16']}`, seeds {data['seeds']} for train / val / test ({data['train_videos']} / "
        f"{data['val_videos']} / {data['test_videos']} videos).",
        "",
        f"**Synthetic test set, fusion model with the drawn-face reader** ({frames:,} annotated frames): where "
        "fusion, missing modalities and voting are measured" + _policy_note(metrics) + ".",
        "",
        *_table(metrics["synthetic"]),
        "",
        "**Synthetic test set, the deployed pipeline (FER reader)**: what the served model does on drawn faces.",
        "",
        *_table(metrics["deployed_on_synthetic"]),
        "",
        "CI check (`tests/test_deployed_model.py`): the exported TorchScript file "
        f"on a regenerated {ci['videos']}-video set (seed {ci['seed']}) scored macro F1 {ci['macro_f1']:.3f} "
        "at export; CI requires the same within 0.02.",
    ]
    return "\n".join(lines)


def write(vdir: Path | None = None, card: Path = MODEL_CARD) -> None:
    text = card.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    card.write_text(text[:a] + "\n" + render(vdir or deployed_version()).strip() + "\n" + text[b:])


if __name__ == "__main__":
    write()
    sys.exit(0)
