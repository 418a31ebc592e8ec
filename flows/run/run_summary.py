"""What one run did to every file it saw, as counters, text for the terminal, and the exit status.

A run's exit status is 0 only when every video it saw is labelled (now or by an earlier run, unchanged).
It is 1 when a video failed (in this run, or in an earlier one and the file is unchanged), a named source is
missing, a file with a video's name was skipped (not a video, a dangling link ...), or nothing to label
was found at all. Files that are not videos by name (notes.txt, .DS_Store), hidden files and second names
of a labelled file are recorded as skipped and counted, but do not make the run fail: archives hold
thumbnails, notes and macOS's "._clip.mp4" beside their videos.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from emoframe.flows.archive.sources import Skip, is_video_name, skip_code
from emoframe.workers.spec.terminal import shown
from emoframe.workers.spec.contract import CLASSES, NUM_CLASSES
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.spec.schema import STATUS_LABELLED
from emoframe.workers.task.video_job import VideoOutcome

SKIPS_LISTED = 10  # more skipped files than this are summarised by reason
LISTED = 100  # lines kept per kind (labelled, failed, reused ...): the rest are counted, and are in the tables
# Skips that leave a video unlabelled. Not a hidden file (macOS leaves "._clip.mp4" beside every copied
# clip), nor a second name of a file labelled under its first.
PROBLEM_SKIPS = frozenset({Skip.NOT_A_VIDEO, Skip.DANGLING_LINK, Skip.SPECIAL_FILE, Skip.UNREADABLE})


@dataclass(frozen=True)
class Reused:
    uri: str
    from_uri: str
    moved: bool  # the old name is gone (its output was removed); else a copy


@dataclass
class _Kept:
    """A count, and the first ``LISTED`` items for the text: memory does not grow with the archive."""

    n: int = 0
    items: list = field(default_factory=list)

    def add(self, item: object) -> None:
        self.n += 1
        if len(self.items) < LISTED:
            self.items.append(item)

    def more(self) -> int:
        return self.n - len(self.items)


@dataclass
class RunSummary:
    """Running counters of one run, fed as videos finish (``add`` and friends)."""

    run_id: str
    out: str
    model_version: str
    policy: LabellingPolicy = POLICY
    missing: list[str] = field(default_factory=list)  # named sources not found (what the user typed: few)
    excluded: int = 0  # left out by --include / --exclude: counted only
    warnings: list[str] = field(default_factory=list)
    labelled_: _Kept = field(default_factory=_Kept)  # VideoOutcome of labelled videos
    failed_: _Kept = field(default_factory=_Kept)  # VideoOutcome of failed videos
    already_done: int = 0  # labelled earlier, unchanged, same settings
    earlier_failures: _Kept = field(default_factory=_Kept)  # failed earlier, unchanged: their videos rows
    reused: _Kept = field(default_factory=_Kept)  # Reused
    skipped_by_code: Counter = field(default_factory=Counter)
    skipped_listed: dict[str, str] = field(default_factory=dict)  # the first SKIPS_LISTED skips: uri -> why
    skipped_videos: _Kept = field(default_factory=_Kept)  # (uri, why) of skips that count as problems
    class_counts: list[int] = field(default_factory=lambda: [0] * NUM_CLASSES)  # labelled rows, every video

    def add(self, outcome: VideoOutcome) -> None:
        """A video labelled or failed by this run."""
        if outcome.row["status"] == STATUS_LABELLED:
            self.labelled_.add(outcome)
            self.class_counts = [a + b for a, b in zip(self.class_counts, outcome.class_counts)]
        else:
            self.failed_.add(outcome)

    def add_skipped(self, uri: str, why: str) -> None:
        self.skipped_by_code[skip_code(why)] += 1
        if len(self.skipped_listed) < SKIPS_LISTED:
            self.skipped_listed[uri] = why
        if is_video_name(uri) and skip_code(why) in PROBLEM_SKIPS:
            self.skipped_videos.add((uri, why))

    @property
    def labelled(self) -> int:
        return self.labelled_.n

    @property
    def failed(self) -> int:
        return self.failed_.n

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_code.values())

    @property
    def changed(self) -> bool:
        """Whether this run labelled, failed or copied anything (a report to refresh)."""
        return bool(self.labelled or self.failed or self.reused.n)

    @property
    def problems(self) -> int:
        """Failed, missing or skipped videos (this run and unchanged earlier failures); 0 = exit status 0."""
        seen = self.labelled + self.failed + self.already_done + self.earlier_failures.n + self.reused.n
        nothing = 1 if seen == 0 and not self.missing else 0  # nothing to label found at all
        return self.failed + self.earlier_failures.n + len(self.missing) + self.skipped_videos.n + nothing

    def counts(self) -> dict:
        return {"labelled": self.labelled, "failed": self.failed, "already_done": self.already_done,
                "earlier_failed": self.earlier_failures.n, "reused": self.reused.n,
                "skipped": self.skipped, "missing": len(self.missing), "problems": self.problems}

    def table_rows(self) -> list[dict[str, object]]:
        """The counts and the class mix as rows of one table (a Prefect table artifact on the run's page)."""
        rows: list[dict[str, object]] = [{"what": k, "count": v, "share": None} for k, v in self.counts().items()]
        total = sum(self.class_counts)
        rows += [{"what": f"rows labelled {c}", "count": n, "share": round(n / total, 4) if total else None}
                 for c, n in zip(CLASSES, self.class_counts)]
        return rows

    def format(self) -> str:
        c = self.counts()
        lines = [f"run {self.run_id}: {c['labelled']} labelled, {c['failed']} failed, {c['already_done']} already "
                 f"done (unchanged, same settings; --force relabels), {c['earlier_failed']} failed in an earlier run "
                 f"(unchanged), {c['reused']} recognised under a new name, {c['skipped']} skipped, "
                 f"{c['missing']} not found" + (f", {self.excluded} left out by --include/--exclude" if self.excluded
                                                 else "")]
        for o in sorted(self.labelled_.items + self.failed_.items, key=lambda o: o.row["source_uri"]):
            lines += _outcome_lines(o)
        lines += _more(self.labelled_.more(), "labelled")
        lines += _more(self.failed_.more(), "failed", "WHERE status = 'failed'")
        for r in sorted(self.earlier_failures.items, key=lambda r: r["source_uri"]):
            lines.append(f"  FAILED {_name(r['source_uri'])} (in run {r['run_id']}, file unchanged since): "
                         f"{r['error_reason']}: {shown(r['error_message'])}")
        lines += _more(self.earlier_failures.more(), "failed in an earlier run", "WHERE status = 'failed'")
        for r in self.reused.items:
            how = "moved from" if r.moved else "same content as"
            lines.append(f"  REUSED {_name(r.uri)}: {how} {shown(r.from_uri)}; its labels were copied")
        lines += _more(self.reused.more(), "recognised under a new name")
        for m in self.missing:
            lines.append(f"  NOT FOUND {shown(m)}")
        lines += self._skip_lines()
        lines += [f"  WARNING {shown(w)}" for w in self.warnings[:LISTED]]
        lines += _more(len(self.warnings) - LISTED, "warnings (link loops, folders met twice)")
        if self.labelled > LISTED:
            rows = sum(self.class_counts) or 1
            mix = ", ".join(f"{CLASSES[i]} {n / rows:.0%}" for i, n in sorted(enumerate(self.class_counts),
                                                                             key=lambda kv: -kv[1]) if n)
            lines.append(f"class mix over the {self.labelled:,} videos labelled: {mix or 'no label'}")
        lines.append(f"labelling policy: {self.policy.describe()}")
        out = shown(self.out)
        lines.append(f"output: {out}/frames and {out}/videos (model_version={self.model_version})")
        return "\n".join(lines)

    def _skip_lines(self) -> list[str]:
        if self.skipped <= SKIPS_LISTED:
            return [f"  SKIPPED {shown(u)}: {shown(why)}" for u, why in self.skipped_listed.items()]
        listed = ", ".join(f"{n:,} {code}" for code, n in self.skipped_by_code.most_common())
        lines = [f"  SKIPPED {self.skipped:,} files: {listed} (every one is in the videos table: "
                 "emoframe query \"SELECT source_uri, error_reason, error_message FROM videos "
                 "WHERE status = 'skipped'\")"]
        lines += [f"  SKIPPED {shown(u)}: {shown(why)}" for u, why in self.skipped_videos.items[:SKIPS_LISTED]]
        return lines


def _more(n: int, what: str, where: str = "") -> list[str]:
    if n <= 0:
        return []
    query = f" (emoframe query \"SELECT * FROM videos {where}\")" if where else ""
    return [f"  ... and {n:,} more {what}{query}"]


def _name(uri: str) -> str:
    return shown(uri.rsplit("/", 1)[-1])


def _outcome_lines(o: VideoOutcome) -> list[str]:
    r = o.row
    if r["status"] != STATUS_LABELLED:
        return [f"  FAILED {_name(r['source_uri'])}: {r['error_reason']}: {shown(r['error_message'])}"]
    rows = sum(o.class_counts) or 1  # labelled rows: one per face and frame, and audio-only frames
    shares = sorted(((n / rows, CLASSES[i]) for i, n in enumerate(o.class_counts) if n), reverse=True)
    share_txt = ", ".join(f"{cls} {s:.0%}" for s, cls in shares) or "no label (no face, no audio heard)"
    audio = "no audio track" if not r["has_audio"] else f"audio missing {o.audio_missing} frames"
    lines = [f"  {_name(r['source_uri'])}: {r['frame_count']} frames, {r['duration_s']:.1f} s | {share_txt} | "
             f"{o.tracks} face track(s), no face in {o.face_missing} frames, {audio}"]
    if o.warning:
        lines.append(f"    WARNING {shown(o.warning)}")
    return lines
