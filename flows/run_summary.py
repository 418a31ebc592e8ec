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

from flows.sources import Skip, is_video_name, skip_code
from flows.terminal import shown
from workers.contract import CLASSES
from workers.policy import POLICY, LabellingPolicy
from workers.schema import STATUS_FAILED, STATUS_LABELLED
from workers.video_task import VideoOutcome

SKIPS_LISTED = 10  # more skipped files than this are summarised by reason
# Skips that leave a video unlabelled. Not a hidden file (macOS leaves "._clip.mp4" beside every copied
# clip), nor a second name of a file labelled under its first.
PROBLEM_SKIPS = frozenset({Skip.NOT_A_VIDEO, Skip.DANGLING_LINK, Skip.SPECIAL_FILE, Skip.UNREADABLE})


@dataclass(frozen=True)
class Reused:
    uri: str
    from_uri: str
    moved: bool  # the old name is gone (its output was removed); else a copy


@dataclass
class RunSummary:
    run_id: str
    out: str
    model_version: str
    policy: LabellingPolicy = POLICY
    outcomes: list[VideoOutcome] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)  # labelled earlier, unchanged, same settings
    earlier_failures: list[dict] = field(default_factory=list)  # failed earlier, unchanged: their videos rows
    reused: list[Reused] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # uri -> "code: detail"
    excluded: int = 0  # left out by --include / --exclude: counted only
    warnings: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return sum(o.row["status"] == STATUS_LABELLED for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(o.row["status"] == STATUS_FAILED for o in self.outcomes)

    @property
    def skipped_videos(self) -> list[str]:
        """Skipped files named like videos: what the user meant as input, and did not get labelled."""
        return [u for u, why in self.skipped.items() if is_video_name(u) and skip_code(why) in PROBLEM_SKIPS]

    @property
    def problems(self) -> int:
        """Failed, missing or skipped videos (this run and unchanged earlier failures); 0 = exit status 0."""
        seen = len(self.outcomes) + len(self.already_done) + len(self.earlier_failures) + len(self.reused)
        nothing = 1 if seen == 0 and not self.missing else 0  # nothing to label found at all
        return self.failed + len(self.earlier_failures) + len(self.missing) + len(self.skipped_videos) + nothing

    def counts(self) -> dict:
        return {"labelled": self.labelled, "failed": self.failed, "already_done": len(self.already_done),
                "earlier_failed": len(self.earlier_failures), "reused": len(self.reused),
                "skipped": len(self.skipped), "missing": len(self.missing), "problems": self.problems}

    def format(self) -> str:
        c = self.counts()
        lines = [f"run {self.run_id}: {c['labelled']} labelled, {c['failed']} failed, {c['already_done']} already "
                 f"done (unchanged, same settings; --force relabels), {c['earlier_failed']} failed in an earlier run "
                 f"(unchanged), {c['reused']} recognised under a new name, {c['skipped']} skipped, "
                 f"{c['missing']} not found" + (f", {self.excluded} left out by --include/--exclude" if self.excluded
                                                 else "")]
        for o in sorted(self.outcomes, key=lambda o: o.row["source_uri"]):
            lines += _outcome_lines(o)
        for r in sorted(self.earlier_failures, key=lambda r: r["source_uri"]):
            lines.append(f"  FAILED {_name(r['source_uri'])} (in run {r['run_id']}, file unchanged since): "
                         f"{r['error_reason']}: {shown(r['error_message'])}")
        for r in self.reused:
            how = "moved from" if r.moved else "same content as"
            lines.append(f"  REUSED {_name(r.uri)}: {how} {shown(r.from_uri)}; its labels were copied")
        for m in self.missing:
            lines.append(f"  NOT FOUND {shown(m)}")
        lines += self._skip_lines()
        lines += [f"  WARNING {shown(w)}" for w in self.warnings]
        lines.append(f"labelling policy: {self.policy.describe()}")
        out = shown(self.out)
        lines.append(f"output: {out}/frames and {out}/videos (model_version={self.model_version})")
        return "\n".join(lines)

    def _skip_lines(self) -> list[str]:
        if len(self.skipped) <= SKIPS_LISTED:
            return [f"  SKIPPED {shown(u)}: {shown(why)}" for u, why in self.skipped.items()]
        by_code = Counter(skip_code(why) for why in self.skipped.values())  # as Listing.skip_counts
        listed = ", ".join(f"{n:,} {code}" for code, n in by_code.most_common())
        lines = [f"  SKIPPED {len(self.skipped):,} files: {listed} (every one is in the videos table: "
                 "emoframe query \"SELECT source_uri, error_reason, error_message FROM videos "
                 "WHERE status = 'skipped'\")"]
        lines += [f"  SKIPPED {shown(u)}: {shown(self.skipped[u])}" for u in self.skipped_videos[:SKIPS_LISTED]]
        return lines


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
