"""The voting sweep (`emoframe tune-voting`): validation macro F1 and label flips for each window stride and
soft-voting span, over one trained model. Both are labelling policy (workers/spec/policy.py), so they are chosen
here without retraining or re-exporting.

With ``--publish`` the sweep is written to docs/voting.json (stamped with the commit, contract fingerprint,
data generator hash and the run's training configuration) and docs/voting.md's table is rendered from it;
tests/test_published_figures.py checks that the policy's defaults are what the rule below picks.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch

from emoframe.training.evaluate import infer_fn, score
from emoframe.training.features import VideoArrays
from emoframe.training.train import load_pipeline
from emoframe.workers.spec.contract import fingerprint
from emoframe.workers.spec.policy import SYNTHETIC_POLICY, LabellingPolicy

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "docs" / "voting.json"
MARKDOWN_PATH = ROOT / "docs" / "voting.md"
START, END = "<!-- voting-sweep:start -->", "<!-- voting-sweep:end -->"
STRIDES = (8, 16, 32)
SPANS = (0.0, 0.2, 0.4, 0.6, 1.0, 1.5, 2.0, 3.0)
# Macro F1 differences smaller than this are not told apart on the 12 validation videos: the seed-to-seed
# spread of the full model in docs/ablation.md is of this order. Set after the first sweep, where the top rows
# were within 0.004 of each other (docs/voting.md says so).
TOLERANCE = 0.005


def sweep(checkpoint: Path, videos: list[VideoArrays], strides=STRIDES, spans=SPANS) -> list[dict]:
    pipeline = load_pipeline(checkpoint).eval()
    infer = infer_fn(pipeline, torch.device("cpu"))  # one reader pass serves every row
    p = pipeline.model.cfg.preprocessing
    rows = []
    for stride in strides:
        for span in spans:
            policy = LabellingPolicy(stride=stride, vote_seconds=span, audio=SYNTHETIC_POLICY.audio)
            m = score(videos, infer, p, policy=policy)
            rows.append({"stride": stride, "vote_seconds": span, "macro_f1": m["macro_f1"],
                         "accuracy": m["accuracy"], "flips_per_minute": m["flips_per_minute"]})
    return rows


def choose(rows: list[dict], tolerance: float = TOLERANCE) -> dict:
    """Among the rows within ``tolerance`` of the best macro F1: the longest stride (each frame is read by
    T/S windows, so a stride half as long costs twice the inference), then its longest span (less jitter)."""
    top = max(r["macro_f1"] for r in rows)
    near = [r for r in rows if r["macro_f1"] >= top - tolerance]
    stride = max(r["stride"] for r in near)
    return max((r for r in near if r["stride"] == stride), key=lambda r: r["vote_seconds"])


def render(doc: dict) -> str:
    pick = choose(doc["rows"])
    lines = ["| stride S | vote span (s) | macro F1 | accuracy | flips/min |", "|---|---|---|---|---|"]
    for r in doc["rows"]:
        cells = [str(r["stride"]), f"{r['vote_seconds']:g}", f"{r['macro_f1']:.4f}", f"{r['accuracy']:.4f}",
                 f"{r['flips_per_minute']:.1f}"]
        if (r["stride"], r["vote_seconds"]) == (pick["stride"], pick["vote_seconds"]):
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    st = doc["stamp"]
    lines += ["", f"The rule picks stride {pick['stride']} and a {pick['vote_seconds']:g} s span (bold). Measured by "
                  f"`emoframe tune-voting --publish` at commit `{st['commit'][:12]}` ({st['date']}) on `{st['data']}` "
                  f"({st['videos']} videos, {st['frames']:,} annotated frames), run `{st['checkpoint']}` (reader "
                  f"`{st['reader']}`, seed {st['seed']}); contract `{st['contract']}`, data generator "
                  f"`{st['generator']}`; audio heard. Figures in `docs/voting.json`."]
    return "\n".join(lines)


def publish(checkpoint: Path, videos: list[VideoArrays], data: Path) -> dict:
    from emoframe.training.recipes import _generator_hash

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    if git("status", "--porcelain", "--untracked-files=no"):
        raise RuntimeError("the tree has uncommitted changes: published figures must come from a commit")
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    rows = sweep(checkpoint, videos)
    doc = {"stamp": {"commit": git("rev-parse", "HEAD"), "date": time.strftime("%Y-%m-%d"), "contract": fingerprint(),
                     "generator": _generator_hash(), "data": str(data), "videos": len(videos),
                     "frames": int(sum((v.labels >= 0).sum() for v in videos)), "checkpoint": str(checkpoint),
                     "reader": ck["train_config"].get("reader"), "seed": ck["train_config"].get("seed")},
           "rows": rows}
    JSON_PATH.write_text(json.dumps(doc, indent=1) + "\n")
    text = MARKDOWN_PATH.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    MARKDOWN_PATH.write_text(text[:a] + "\n" + render(doc) + "\n" + text[b:])
    return doc
