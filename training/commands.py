"""The training commands of `emoframe` (synth, train, evaluate, tune-voting, export, build-model, ablate):
their flags and what each runs. The CLI (flows/cli/main.py) adds them to its parser; torch and the training
modules are imported only when one of them runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

TRAINING_COMMANDS = frozenset({"train", "build-model", "ablate"})
# Every command here but synth runs torch: not in a worker install (pyproject.toml's `full` extra).
TORCH_COMMANDS = frozenset({"train", "evaluate", "tune-voting", "export", "build-model", "ablate"})


def add_train_flags(p: argparse.ArgumentParser, reader: str = "fer") -> None:
    from emoframe.training.train import TrainConfig  # imports torch: only for the training commands

    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per step")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--loss", choices=("focal", "ce"), default=d.loss)
    p.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    p.add_argument("--class-weights", default=d.class_weights, help="auto | none | 8 comma-separated numbers")
    p.add_argument("--modality-drop", type=float, default=d.modality_drop,
                   help="probability of hiding a whole modality in a training window")
    p.add_argument("--frame-drop", type=float, default=d.frame_drop, help="probability of hiding a frame's modality")
    p.add_argument("--fusion", choices=("cross", "late"), default=d.model.fusion)
    p.add_argument("--modalities", default=",".join(d.model.modalities), help="visual,audio | visual | audio")
    p.add_argument("--device", default=d.device, help="auto (CUDA when present) | cpu | cuda")
    p.add_argument("--reader", choices=("fer", "drawn"), default=reader,
                   help="face reader whose evidence the fusion model learns from: fer (real faces, frozen FER2013 "
                        "network) or drawn (trained first on the synthetic set's drawn faces)")
    p.add_argument("--reader-epochs", type=int, default=d.reader_epochs)


def _train_config(a: argparse.Namespace):
    from emoframe.training.model import ModelConfig
    from emoframe.training.train import TrainConfig

    model = ModelConfig(fusion=a.fusion, modalities=tuple(m.strip() for m in a.modalities.split(",")))
    return TrainConfig(epochs=a.epochs, steps_per_epoch=a.steps_per_epoch, batch_size=a.batch_size, lr=a.lr,
                       seed=a.seed, loss=a.loss, focal_gamma=a.focal_gamma, class_weights=a.class_weights,
                       modality_drop=a.modality_drop, frame_drop=a.frame_drop, device=a.device, reader=a.reader,
                       reader_epochs=a.reader_epochs, model=model)


def cmd_synth(a: argparse.Namespace) -> int:
    from emoframe.training.synth import generate

    videos = generate(a.out, a.videos, a.seed, min_seconds=a.min_seconds, max_seconds=a.max_seconds, progress=True)
    print(f"wrote {len(videos)} videos and ABAW annotation files to {a.out}")
    return 0


def _dataset(root: Path, annotations: Path | None, videos: Path | None, cropped: Path | None):
    from emoframe.training.datasets import discover, synth_split

    if annotations or videos:
        if not (annotations and videos):
            raise SystemExit("give both --annotations and --videos (ABAW layout), or a synth folder")
        return discover(annotations, videos, cropped)
    return synth_split(root)


def cmd_train(a: argparse.Namespace) -> int:
    from emoframe.training.datasets import load_items
    from emoframe.training.train import train

    cfg = _train_config(a)
    train_items = load_items(_dataset(a.train, a.annotations, a.videos, a.cropped), a.cache, "train features")
    val_items = load_items(_dataset(a.val, None, None, None), a.cache, "val features") if a.val else []
    best = train(cfg, train_items, val_items, a.out, resume=a.resume, backbone=a.backbone)
    print(f"best epoch {best['epoch'] + 1}: val macro F1 {best['macro_f1']:.4f}; checkpoints in {a.out}")
    return 0


def cmd_evaluate(a: argparse.Namespace, policy_kwargs: dict) -> int:
    from emoframe.training.datasets import load_items
    from emoframe.training.evaluate import (CONDITIONS, ModelFileError, evaluate_infer, format_report,
                                            load_for_evaluation)

    try:
        infer_many, what = load_for_evaluation(a.model)
    except ModelFileError as exc:
        raise SystemExit(f"emoframe evaluate: {exc}") from None
    conditions = a.conditions.split(",") if a.conditions else CONDITIONS
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise SystemExit(f"emoframe evaluate: unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
    from emoframe.workers.spec.policy import LabellingPolicy

    policy = LabellingPolicy(**policy_kwargs)
    videos = load_items(_dataset(a.data, a.annotations, a.videos, a.cropped), a.cache, "features")
    print(f"scoring {what} on {len(videos)} videos ({policy.describe()})")
    result = evaluate_infer(infer_many, videos, conditions=conditions, policy=policy)
    print(format_report(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_tune_voting(a: argparse.Namespace) -> int:
    from emoframe.training.datasets import load_items
    from emoframe.training.voting_sweep import choose, publish, sweep

    videos = load_items(_dataset(a.data, a.annotations, a.videos, a.cropped), a.cache, "features")
    if a.publish:
        try:
            rows = publish(a.checkpoint, videos, a.data)["rows"]
        except RuntimeError as exc:
            raise SystemExit(f"emoframe tune-voting: {exc}") from None
    else:
        rows = sweep(a.checkpoint, videos, [int(x) for x in a.strides.split(",")],
                     [float(x) for x in a.vote_seconds.split(",")])
    print("| stride S | vote span (s) | macro F1 | accuracy | flips/min |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stride']} | {r['vote_seconds']:g} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | "
              f"{r['flips_per_minute']:.1f} |")
    pick = choose(rows)
    print(f"rule: stride {pick['stride']}, span {pick['vote_seconds']:g} s")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from emoframe.training.export import export
    from emoframe.training.train import load_pipeline

    metrics = json.loads(a.metrics.read_text()) if a.metrics else {}
    # What serves real footage reads faces with the FER reader, whichever reader the run learned from.
    vdir = export(load_pipeline(a.checkpoint, reader="fer"), a.repo, version=a.version, metrics=metrics)
    print(f"exported to {vdir}")
    return 0


def cmd_build_model(a: argparse.Namespace) -> int:
    from emoframe.training.evaluate import format_report
    from emoframe.training.export import latest_version
    from emoframe.training.recipes import REPRODUCE_TOLERANCE, DataRecipe, build_model, compare_with
    from emoframe.workers.spec.contract import MODEL_NAME

    metrics, vdir = build_model(DataRecipe(root=a.data), a.runs, a.repo, _train_config(a), version=a.version)
    print("synthetic test set, fusion model with the drawn-face reader:")
    print(format_report(metrics["synthetic"]))
    print("synthetic test set, deployed pipeline (FER reader):")
    print(format_report(metrics["deployed_on_synthetic"]))
    if vdir is not None:
        print(f"new model version written to {vdir} (metrics in {vdir / 'metrics.json'})")
        return 0
    deployed = latest_version(a.repo / MODEL_NAME)
    if deployed is None:
        print("no deployed model to compare with; export this run with --version 1")
        return 0
    recorded = json.loads((deployed / "metrics.json").read_text())
    moved = compare_with(recorded, metrics)
    if moved:
        print(f"this run does NOT reproduce {deployed}:\n  " + "\n  ".join(moved))
        return 1
    print(f"this run reproduces {deployed} (every synthetic macro F1 within {REPRODUCE_TOLERANCE}); nothing "
          f"exported: pass --version N to write a new model version")
    return 0


def cmd_ablate(a: argparse.Namespace) -> int:
    from emoframe.training.ablation import ablate
    from emoframe.training.recipes import DataRecipe

    try:
        seeds = tuple(int(x) for x in a.seeds.split(","))
    except ValueError:
        raise SystemExit(f"emoframe ablate: --seeds takes comma-separated whole numbers, not {a.seeds!r}") from None
    print(ablate(DataRecipe(root=a.data), a.runs, _train_config(a), seeds, a.only or None))
    return 0


def add_training_commands(sub: argparse._SubParsersAction, policy_flags: argparse.ArgumentParser,
                          policy_kwargs: Callable[[argparse.Namespace, str], dict], model_repo: Path, *,
                          with_train_flags: bool) -> None:
    """Add the training subcommands to ``sub``. The training flags take their defaults from TrainConfig (which
    imports torch): they are added only when ``with_train_flags`` (the command line names a training command)."""
    train_flags = add_train_flags if with_train_flags else (lambda p, reader="fer": None)

    p = sub.add_parser("synth", help="write the synthetic audio-visual expression set (MP4 + ABAW annotations)")
    p.add_argument("out", type=Path)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-seconds", type=float, default=20.0)
    p.add_argument("--max-seconds", type=float, default=40.0)
    p.set_defaults(fn=cmd_synth)

    data_flags = argparse.ArgumentParser(add_help=False)
    data_flags.add_argument("--annotations", type=Path, help="ABAW annotation folder (instead of a synth folder)")
    data_flags.add_argument("--videos", type=Path, help="ABAW video folder")
    data_flags.add_argument("--cropped", type=Path, help="ABAW cropped_aligned folder (optional)")
    data_flags.add_argument("--cache", type=Path, default=Path("runs/cache"), help="preprocessed-feature cache")

    p = sub.add_parser("train", parents=[data_flags], help="train the fusion model")
    p.add_argument("--train", type=Path, default=Path("data/synth/train"), help="synth folder to train on")
    p.add_argument("--val", type=Path, default=Path("data/synth/val"), help="synth folder for per-epoch validation")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--backbone", type=Path, help="local file of pretrained encoder weights (visual_enc.*/audio_enc.*)")
    train_flags(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", parents=[data_flags, policy_flags],
                       help="ABAW metric with/without voting, missing modalities")
    p.add_argument("model", type=Path, help="a deployed model (model_repo/expression_fusion/<version> or its "
                                            "model.pt) or a training checkpoint (runs/.../best.pt)")
    p.add_argument("--data", type=Path, default=Path("data/synth/test"))
    p.add_argument("--conditions", default="", help="comma-separated subset of the conditions")
    p.add_argument("--json", type=Path, help="also write the full result as JSON here")
    # Evaluation data is annotated audio-visual data (the synthetic set by default): the missing-modality
    # conditions need the audio heard. --audio off scores what `emoframe label` does by default.
    p.set_defaults(fn=lambda a: cmd_evaluate(a, policy_kwargs(a, "evaluate")))

    p = sub.add_parser("tune-voting", parents=[data_flags], help="validation sweep of the soft-voting span and stride")
    p.add_argument("checkpoint", type=Path, nargs="?", default=Path("runs/full/best.pt"),
                   help="training run to sweep (default: build-model's run)")
    p.add_argument("--data", type=Path, default=Path("data/synth/val"))
    p.add_argument("--vote-seconds", default="0,0.2,0.4,0.6,1,1.5,2,3")
    p.add_argument("--strides", default="8,16,32")
    p.add_argument("--publish", action="store_true",
                   help="the default grid, written to docs/voting.json and docs/voting.md (needs a clean tree)")
    p.set_defaults(fn=cmd_tune_voting)

    p = sub.add_parser("export", help="export a checkpoint to model_repo/expression_fusion/<version>/")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--repo", type=Path, default=model_repo)
    p.add_argument("--version", type=int)
    p.add_argument("--metrics", type=Path, help="JSON file of metrics to record in metadata.json")
    p.set_defaults(fn=cmd_export)

    for name, fn, helptext in (("build-model", cmd_build_model, "synth data, train and evaluate the deployed model's "
                                                                "recipe; compare with the committed model, or "
                                                                "export with --version N"),
                               ("ablate", cmd_ablate, "train the ablation variants and write the table")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--data", type=Path, default=Path("data/synth"))
        p.add_argument("--runs", type=Path, default=Path("runs"))
        if name == "build-model":
            p.add_argument("--repo", type=Path, default=model_repo)
            p.add_argument("--version", type=int, help="export the run as this new model version (never "
                                                        "overwrites); without it nothing is exported")
        else:
            p.add_argument("--seeds", default="0,1,2", help="training seeds of every variant (comma-separated)")
            p.add_argument("--only", action="append", default=[],
                           help="measure only this variant (repeatable; e.g. full, late, ce): printed, not written")
        train_flags(p, reader="drawn")  # the synthetic recipes: FER cannot read drawn faces
        p.set_defaults(fn=fn)
