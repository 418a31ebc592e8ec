"""Deciding what a run labels, in the driver, without heavy imports (no torch, Prefect or Ray): the ledger
check, labels reused for moved files, skipped files recorded, and a run with nothing to label answered from
the output alone, before any service starts."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

from emoframe.flows.archive.ledger import DoneKey, Ledger, read_ledger
from emoframe.flows.archive.moves import adopt_labels, fingerprinted, remove_moved
from emoframe.flows.run.records import record_skipped
from emoframe.flows.run.run_summary import Reused, RunSummary
from emoframe.flows.archive.sources import Listing, iter_sources
from emoframe.workers.spec.terminal import shown
from emoframe.workers.spec.contract import MODEL_NAME, PREPROCESSING, FaceMode, fingerprint
from emoframe.workers.spec.model_versions import default_model_repo, latest_version
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.output.rows import evict
from emoframe.workers.output.storage import filesystem_for, is_remote
from emoframe.workers.output.state import run_lease
from emoframe.workers.task.video_job import LabelConfig, Source

DEFAULT_MODEL_REPO = default_model_repo()  # EMOFRAME_MODEL_REPO, else the checkout's model_repo/


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


class Planner:
    """What a run must label, batch by batch, after the ledger (read once): done and earlier failures are
    counted in the summary, files seen and not labelled get their "skipped" rows, and a file whose content
    matches a labelled one under another name gets its labels copied."""

    def __init__(self, cfg: LabelConfig, force: bool, summary: RunSummary):
        self.cfg = cfg
        self.force = force
        self.summary = summary
        self.key = DoneKey(cfg.face_mode, cfg.policy, fingerprint(PREPROCESSING))
        self.ledger = Ledger() if force else read_ledger(cfg.out, cfg.model_version)
        self._said_done = False

    def plan(self, sources: list[Source]) -> list[Source]:
        """The sources of this batch to label (with content fingerprints)."""
        todo = []
        for s in sources:
            if self.ledger.is_done(s, self.key):
                failure = self.ledger.earlier_failure(s, self.key)
                if failure:
                    self.summary.earlier_failures.add(failure)
                else:
                    self.summary.already_done += 1
            else:
                todo.append(s)
        if self.summary.already_done and not self._said_done:
            self._said_done = True
            print(f"videos already labelled by model version {self.cfg.model_version} with these settings (face "
                  "mode, labelling policy) and unchanged are skipped (--force relabels them)")
        todo = fingerprinted(todo)
        # Rows of videos to (re)label leave the compacted files before any new row of theirs lands, so no
        # reader sees a video twice (workers/output/rows.py).
        fs, base = filesystem_for(self.cfg.out)
        evict(fs, base, self.cfg.model_version, [s.uri for s in todo], on_wait=print)
        left: list[Source] = []
        moved_away: list[str] = []
        for s in todo:
            same = None if self.force else self.ledger.same_content(s.content_hash, self.key, s.uri)
            moved = None if same is None else adopt_labels(self.cfg.out, self.cfg.model_version, same, s,
                                                           self.cfg.run_id, moved_away)
            if moved is None:
                left.append(s)
            else:
                self.summary.reused.add(Reused(s.uri, cast(dict, same)["source_uri"], moved))  # moved: from same
        remove_moved(self.cfg.out, self.cfg.model_version, moved_away)  # one rewrite of a compacted file
        return left

    def record_skipped(self, listing: Listing) -> None:
        """Rows for the files the listing skipped since the last call, then forgotten. Called after the batch
        is planned: a name skipped now (a duplicate of a new first name) may be what labels came from."""
        skipped, listing.skipped = listing.skipped, {}
        for uri, why in skipped.items():
            self.summary.add_skipped(uri, why)
        cfg = self.cfg
        record_skipped(skipped, self.ledger, cfg.out, cfg.model_version, cfg.model_name, cfg.run_id)


def write_run_report(out: str, summary: RunSummary) -> None:
    """The HTML report beside local output: the archive page and pages for the videos this run labelled, and
    for as many as the report had before (the most recent ones; `emoframe report --max-videos` makes more). A
    run that changed nothing leaves the report as it is. A report that cannot be written is said, not fatal:
    the labels are on disk."""
    from emoframe.flows.analysis.report import DEFAULT_MAX_VIDEOS, PAGES, ReportError, default_dest, write_report

    if is_remote(out):
        print(f"report: not written for output in a bucket; `emoframe report {shown(out)} --to DIR` writes one")
        return
    dest = Path(default_dest(out))
    if not summary.changed and (dest / "index.html").exists():
        return
    had = sum(1 for _ in (dest / PAGES).rglob("*.html")) if (dest / PAGES).is_dir() else 0
    try:
        index = write_report(out, max_videos=min(max(summary.labelled, had), DEFAULT_MAX_VIDEOS))
    except (ReportError, OSError) as exc:
        print(f"report: not written ({shown(str(exc))})")
        return
    print(f"report: {index}")


def nothing_to_do(sources: list[str], out: str, *, triton_url: str | None = None, face_mode: str = "detect",
                  include: list[str] | None = None, exclude: list[str] | None = None, model_repo: str | None = None,
                  force: bool = False, stride: int = POLICY.stride, vote_seconds: float = POLICY.vote_seconds,
                  audio: bool = POLICY.audio, report: bool = True, **_: object) -> dict | None:
    """The run's summary when every video found is already done (labelled or failed for good, unchanged,
    same settings), worked out without starting Prefect, Ray or Triton: a rerun with nothing new answers in
    seconds. None as soon as one video needs labelling (then the flow runs). The model version is the one
    the embedded server would serve (workers/spec/model_versions.py), or what ``triton_url`` serves."""
    if force:
        return None
    if triton_url:
        from emoframe.workers.inference.triton_client import TritonClient

        with TritonClient(triton_url) as client:
            version = client.served_version()
    else:
        vdir = latest_version((Path(model_repo) if model_repo else DEFAULT_MODEL_REPO) / MODEL_NAME)
        if vdir is None:
            return None  # the server will say what is wrong with the repository
        version = vdir.name
    policy = LabellingPolicy(stride=stride, vote_seconds=vote_seconds, audio=audio)
    run_id = new_run_id()
    cfg = LabelConfig(out=out, run_id=run_id, triton_url=triton_url or "", model_version=version,
                      face_mode=cast(FaceMode, face_mode), policy=policy)  # checked where the faces are read
    _, out_base = filesystem_for(out)
    summary = RunSummary(run_id, out if is_remote(out) else out_base, version, policy)
    planner = Planner(cfg, False, summary)
    listing = Listing()
    for batch in iter_sources(sources, listing, tuple(include or ()), tuple(exclude or ()), exclude_roots=(out,)):
        if not all(planner.ledger.is_done(s, planner.key) for s in batch):
            return None
        planner.plan(batch)  # only counts: every source in it is done
    if listing.skipped:  # rows to write: under a run lease, as a run's writes are (workers/output/state.py)
        with run_lease(out, f"label run {run_id} (nothing to label)"):
            planner.record_skipped(listing)
    summary.missing, summary.excluded, summary.warnings = listing.missing, listing.excluded, listing.warnings
    text = summary.format()
    print(f"nothing to label (no service started):\n{text}")
    if report:
        write_run_report(out, summary)
    return {"run_id": run_id, "out": summary.out, "model_version": version, **summary.counts(),
            "missing": [], "text": text, "services_started": False}
