"""File names and messages reach the terminal escaped: no escape sequence obeyed, no line split or forged."""

from __future__ import annotations

from datetime import datetime, timezone

from emoframe.flows.run.run_summary import RunSummary
from emoframe.workers.spec.terminal import shown
from emoframe.workers.output.sink import video_row
from emoframe.workers.task.video_job import VideoOutcome


def summary(outcomes=(), skipped=None, missing=(), earlier_failures=()) -> RunSummary:
    """A RunSummary fed the way the flow feeds it."""
    s = RunSummary("r", "/out", "3", missing=list(missing))
    for o in outcomes:
        s.add(o)
    for uri, why in (skipped or {}).items():
        s.add_skipped(uri, why)
    for row in earlier_failures:
        s.earlier_failures.add(row)
    return s


def test_non_printable_characters_are_escaped_and_the_rest_left_alone():
    assert shown("clip.mp4") == "clip.mp4"
    assert shown("café ünïcode 表情.mp4") == "café ünïcode 表情.mp4"
    assert shown("a\x1b[31mred.mp4") == "a\\x1b[31mred.mp4"
    assert shown("two\nlines\r.mp4") == "two\\nlines\\r.mp4"
    assert shown("sep\u2028x") == "sep\\u2028x"


def test_a_hostile_file_name_cannot_colour_split_or_forge_the_run_summary():
    evil = "/in/x\x1b[2J\nrun fake: 99 labelled, 0 failed.mp4"
    now = datetime.now(timezone.utc)
    failed = VideoOutcome(video_row(evil, status="failed", model_name="m", run_id="r", started_at=now,
                                    error_reason="not_a_video", error_message=f"{evil} is not a video"))
    text = summary(outcomes=[failed], missing=["/in/gone\x07.mp4"],
                   skipped={"/in/a\nb.txt": "not_a_video: .txt extension"}).format()
    assert "\x1b" not in text and "\x07" not in text
    lines = text.splitlines()
    assert len(lines) == 6 and not any(line.startswith("run fake") for line in lines)
    assert "x\\x1b[2J\\nrun fake: 99 labelled, 0 failed.mp4" in lines[1]


def test_the_exit_status_counts_what_left_a_video_unlabelled_and_nothing_else():
    now = datetime.now(timezone.utc)
    ok = VideoOutcome(video_row("/in/a.mp4", status="labelled", model_name="m", run_id="r", started_at=now,
                                frame_count=3, duration_s=0.1, has_audio=False))
    harmless = {"/in/notes.txt": "not_a_video: .txt extension", "/in/._a.mp4": 'hidden: name starts with "."',
                "/in/b.mp4": "duplicate: same file as /in/a.mp4"}
    assert summary(outcomes=[ok], skipped=harmless).problems == 0
    for uri, why in {"/in/c.mp4": "not_a_video: no known container signature (00)",
                     "/in/d.mov": "dangling_link: -> gone.mov", "/in/e.mp4": "special_file: fifo"}.items():
        assert summary(outcomes=[ok], skipped={**harmless, uri: why}).problems == 1, uri
    assert summary(skipped=harmless).problems == 1  # no video found at all
    earlier = {"source_uri": "/in/f.mp4", "run_id": "old", "error_reason": "truncated", "error_message": "cut"}
    text_summary = summary(outcomes=[ok], earlier_failures=[earlier])
    assert text_summary.problems == 1 and "FAILED f.mp4 (in run old, file unchanged since): truncated" in \
        text_summary.format()


def test_a_summary_of_an_archive_keeps_counts_and_a_bounded_list():
    """Memory and text do not grow with the archive: every video is counted, LISTED of each kind are shown."""
    from emoframe.flows.run.run_summary import LISTED

    now = datetime.now(timezone.utc)
    s = RunSummary("r", "/out", "3")
    n = LISTED * 3
    for i in range(n):
        s.add(VideoOutcome(video_row(f"/in/{i:05}.mp4", status="labelled", model_name="m", run_id="r",
                                     started_at=now, frame_count=3, duration_s=0.1, has_audio=False),
                           class_counts=[3, 0, 0, 0, 1, 0, 0, 0]))
        s.add(VideoOutcome(video_row(f"/in/bad{i:05}.mp4", status="failed", model_name="m", run_id="r",
                                     started_at=now, error_reason="truncated", error_message="cut")))
        s.add_skipped(f"/in/{i}.txt", "not_a_video: .txt extension")
    assert (s.labelled, s.failed, s.skipped, s.problems) == (n, n, n, n)
    assert len(s.labelled_.items) == len(s.failed_.items) == LISTED
    text = s.format()
    assert f"... and {n - LISTED:,} more labelled" in text and f"... and {n - LISTED:,} more failed" in text
    assert text.count("FAILED bad") == LISTED and f"SKIPPED {n:,} files: {n:,} not_a_video" in text
    assert f"class mix over the {n:,} videos labelled: Neutral 75%, Happiness 25%" in text
