"""File names and messages reach the terminal escaped: no escape sequence obeyed, no line split or forged."""

from __future__ import annotations

from datetime import datetime, timezone

from flows.run_summary import RunSummary
from flows.terminal import shown
from workers.sink import video_row
from workers.video_task import VideoOutcome


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
    text = RunSummary("r", "/out", "3", outcomes=[failed], missing=["/in/gone\x07.mp4"],
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
    assert RunSummary("r", "/out", "3", outcomes=[ok], skipped=harmless).problems == 0
    for uri, why in {"/in/c.mp4": "not_a_video: no known container signature (00)",
                     "/in/d.mov": "dangling_link: -> gone.mov", "/in/e.mp4": "special_file: fifo"}.items():
        assert RunSummary("r", "/out", "3", outcomes=[ok], skipped={**harmless, uri: why}).problems == 1, uri
    assert RunSummary("r", "/out", "3", skipped=harmless).problems == 1  # no video found at all
    earlier = {"source_uri": "/in/f.mp4", "run_id": "old", "error_reason": "truncated", "error_message": "cut"}
    text_summary = RunSummary("r", "/out", "3", outcomes=[ok], earlier_failures=[earlier])
    assert text_summary.problems == 1 and "FAILED f.mp4 (in run old, file unchanged since): truncated" in \
        text_summary.format()
