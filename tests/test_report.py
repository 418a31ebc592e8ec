"""`emoframe report`: a static HTML report written from real Parquet output (the project's own writers, no
Triton), checked against DuckDB, for escaping, for images that exist and load in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from emoframe.flows.analysis.query import connect
from emoframe.workers.spec.contract import CLASSES, NUM_CLASSES
from emoframe.workers.inference.labeling import Predictions
from emoframe.workers.spec.schema import frames_path, videos_path
from emoframe.workers.output.sink import frames_table, video_row, videos_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
MV = "3"
FPS = 10.0
TWO_FACES = "/archive/two faces.mp4"
HOSTILE = "/archive/<img src=x onerror=alert(1)> & \"q\" 'é' 表情.mp4"  # anything but '/' is a file name
ESCAPED = "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot; &#x27;é&#x27; 表情.mp4"
CROWD = "/archive/crowd.mp4"
FAILED = "/archive/broken.mp4"
SKIPPED = "/archive/notes.txt"


def _predictions(n_frames: int, tracks: dict[int, tuple[range, list[int]]]) -> Predictions:
    """Rows for ``n_frames`` frames: per track, the frames it covers and its label per covered frame; every
    frame no track covers gets a face-less row. Sound in the first 90% of the video."""
    rows = []  # (frame, track, label)
    for f in range(n_frames):
        faces = [(t, labels[span.index(f)]) for t, (span, labels) in sorted(tracks.items()) if f in span]
        rows += [(f, t, lab) for t, lab in faces] or [(f, -1, 0)]
    frame = np.array([r[0] for r in rows], np.int32)
    track = np.array([r[1] for r in rows], np.int32)
    label = np.array([r[2] for r in rows], np.int16)
    present = track >= 0
    probs = np.full((len(rows), NUM_CLASSES), 0.3 / (NUM_CLASSES - 1), np.float32)
    probs[np.arange(len(rows)), label] = 0.7
    box = np.where(present[:, None], np.array([10, 20, 50, 60], np.float32), np.nan).astype(np.float32)
    return Predictions(frame, track, present, box, np.where(present, 0.99, np.nan).astype(np.float32),
                       frame < 0.9 * n_frames, present, probs, label, probs.max(axis=1))


def _write_labelled(out: Path, uri: str, pred: Predictions, n_frames: int, minutes_ago: int) -> None:
    fs = pafs.LocalFileSystem()
    write_atomic(frames_table(uri, FPS, pred, "m", "run-1"), fs, frames_path(str(out), MV, uri))
    started = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago, seconds=4)
    row = video_row(uri, status="labelled", model_name="m", run_id="run-1", started_at=started, fps=FPS,
                    frame_count=n_frames, duration_s=n_frames / FPS, has_audio=True, face_mode="detect",
                    tracks=len(set(pred.track[pred.face_present].tolist())), width=640, height=360)
    row["finished_at"] = started + timedelta(seconds=4)  # recency decides which videos get a page
    row["processing_s"] = 4.0
    write_atomic(videos_table([row]), fs, videos_path(str(out), MV, uri))


def _write_problem(out: Path, uri: str, status: str, reason: str, message: str) -> None:
    row = video_row(uri, status=status, model_name="m", run_id="run-1", error_reason=reason,
                    error_message=message, started_at=datetime.now(timezone.utc))
    write_atomic(videos_table([row]), pafs.LocalFileSystem(), videos_path(str(out), MV, uri))


H, S, A, N = (CLASSES.index(c) for c in ("Happiness", "Sadness", "Anger", "Neutral"))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """Two faces (track 0: Happiness then Sadness, track 1: Anger) and no face in frames 80-99; a video with a
    hostile name; a crowd of five tracks; a failed and a skipped file."""
    out = tmp_path_factory.mktemp("labels")
    two = _predictions(100, {0: (range(0, 80), [H] * 50 + [S] * 30), 1: (range(20, 60), [A] * 40)})
    _write_labelled(out, TWO_FACES, two, 100, minutes_ago=1)
    _write_labelled(out, HOSTILE, _predictions(30, {0: (range(0, 30), [N] * 30)}), 30, minutes_ago=2)
    crowd = {t: (range(0, 10 * (t + 1)), [H] * 10 * (t + 1)) for t in range(5)}
    _write_labelled(out, CROWD, _predictions(50, crowd), 50, minutes_ago=3)
    _write_problem(out, FAILED, "failed", "decode_error", "moov atom not found <&>")
    _write_problem(out, SKIPPED, "skipped", "not_a_video", "not a video file")
    return out


@pytest.fixture(scope="module")
def report(out) -> Path:
    from emoframe.flows.analysis.report import write_report

    return write_report(str(out))


class _Doc(HTMLParser):
    """Links, images and the cells of each table (by id) of one page."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr":
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _page(path: Path) -> _Doc:
    return _Doc(path.read_text(encoding="utf-8"))


def _video_pages(report: Path) -> dict[str, Path]:
    """The index's links to video pages, by the file name the link shows."""
    from urllib.parse import unquote

    text = report.read_text(encoding="utf-8")
    pages = {}
    for href, name in re.findall(r'<a href="([^"]+)">(.*?)</a>', text):
        if href.startswith("pages/"):
            pages[name] = report.parent / unquote(href)
    return pages


def test_the_archive_page_links_every_labelled_video_and_names_what_failed(report):
    pages = _video_pages(report)
    assert set(pages) == {"two faces.mp4", "crowd.mp4",
                          ESCAPED}
    assert all(p.is_file() for p in pages.values())
    doc = _page(report)
    problems = {(r[0], r[1]): r for r in doc.tables["problems"][1:]}
    failed = problems[("failed", "decode_error")]
    assert failed[2] == "1" and FAILED in failed[3] and "moov atom not found <&>" in failed[3]
    assert ("skipped", "not_a_video") in problems
    status = {r[1]: r[2] for r in doc.tables["status"][1:]}
    assert status == {"labelled": "3", "failed": "1", "skipped": "1"}
    throughput = doc.tables["throughput"][1]
    assert throughput[3] == "180" and throughput[6] == f"{180 / 12:.1f}"  # 180 frames in 3 x 4 s of processing


def test_seconds_per_class_are_what_duckdb_counts(out, report):
    page = _page(_video_pages(report)["two faces.mp4"])
    table = page.tables["classes"]
    assert table[0] == ["class", "all faces", "track 0", "track 1"]
    with connect(str(out)) as con:
        counted = con.execute("SELECT label, track_id, count(*) FROM frames WHERE source_uri = ? AND label IS NOT "
                              "NULL GROUP BY ALL", [TWO_FACES]).fetchall()
    per = {(label, t): n for label, t, n in counted}
    assert set(per) == {("Happiness", 0), ("Sadness", 0), ("Anger", 1)}  # face-less frames carry no label
    rows = {r[0]: r[1:] for r in table[1:]}
    for label in ("Happiness", "Sadness", "Anger"):
        all_faces = per.get((label, 0), 0) + per.get((label, 1), 0)
        assert rows[label][0].startswith(f"{all_faces / FPS:.1f} s (")
        for col, t in ((1, 0), (2, 1)):
            n = per.get((label, t), 0)
            assert rows[label][col] == (f"{n / FPS:.1f} s ({100 * n / (80 if t == 0 else 40):.0f}%)" if n else "-")
    assert rows["Happiness"][1] == "5.0 s (62%)" and rows["Anger"][2] == "4.0 s (100%)"


def test_hostile_names_are_escaped_everywhere(report):
    for html_file in report.parent.rglob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        assert "<img src=x" not in text and "'é'" not in text and '"q"' not in text, html_file
        if "pages" in html_file.parts and "表情" in text:
            assert f"<h1>{ESCAPED}</h1>" in text
    assert ESCAPED in report.read_text(encoding="utf-8")
    assert "moov atom not found &lt;&amp;&gt;" in report.read_text(encoding="utf-8")


def test_every_image_exists_and_is_a_png(report):
    from PIL import Image

    pages = [report, *report.parent.rglob("pages/**/*.html")]
    seen = 0
    for page in pages:
        for src in _page(page).images:
            png = page.parent / src
            assert png.is_file() and png.stat().st_size > 0, png
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
            with Image.open(png) as im:
                im.verify()
                assert im.size[0] > 300 and im.size[1] > 100
            seen += 1
    assert seen == 1 + 2 + 1 + 4  # class mix; two faces; hostile; crowd capped at 4 of 5 tracks


def test_many_tracks_are_capped_with_a_note(report):
    page = _video_pages(report)["crowd.mp4"]
    doc = _page(page)
    assert [Path(s).stem.rsplit("-", 1)[1] for s in doc.images] == ["track4", "track3", "track2", "track1"]
    assert "5 face tracks: the 4 longest are shown" in page.read_text(encoding="utf-8")
    assert doc.tables["classes"][0] == ["class", "all faces", "track 4", "track 3", "track 2", "track 1"]


def test_the_timeline_shows_the_face_less_stretch(out):
    """What the figure draws: face band and probabilities empty where the face is gone, sound until 9 s."""
    from emoframe.flows.analysis.report import load_video, selected_videos, timelines

    with connect(str(out)) as con:
        v = next(v for v in selected_videos(con, 10) if v.source_uri == TWO_FACES)
        load_video(con, pafs.LocalFileSystem(), str(out), v)
        t0, t1 = timelines(con, v, [0, 1], faceless=False)
    assert len(t0.t) == 100 and t0.end_s == 10.0
    assert (t0.face[:80] == 1).all() and (t0.face[80:] == 0).all() and np.isnan(t0.probs[80:]).all()
    assert (t0.label[:50] == H).all() and (t0.label[50:80] == S).all() and (t0.label[80:] == -1).all()
    assert (t1.face[20:60] == 1).all() and t1.face[:20].sum() == 0 and t1.face[60:].sum() == 0
    assert (t0.audio[:90] == 1).all() and (t0.audio[90:] == 0).all()
    assert np.allclose(np.nansum(t0.probs[:80], axis=1), 1.0, atol=1e-5)


def test_max_videos_keeps_the_most_recent_and_drops_stale_pages(out, tmp_path):
    from emoframe.flows.analysis.report import write_report

    dest = tmp_path / "r"
    write_report(str(out), str(dest), max_videos=2)
    assert len(list((dest / "pages").rglob("*.html"))) == 2
    index = write_report(str(out), str(dest), max_videos=1)
    assert list(_video_pages(index)) == ["two faces.mp4"]  # finished last
    assert len(list((dest / "pages").rglob("*.html"))) == 1 and not list(dest.glob(".*"))
    assert "Pages for the 1 most recently labelled of 3 labelled videos" in index.read_text(encoding="utf-8")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "report", *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_writes_beside_the_output_and_mistakes_are_one_line(out, tmp_path):
    local = tmp_path / "labels"
    shutil.copytree(out, local)
    res = _cli(str(local), "--max-videos", "0")
    assert res.returncode == 0 and (local / "_report" / "index.html").is_file(), res.stderr
    for args, why in (((str(tmp_path / "nowhere"),), "no emoframe output"),
                      (("s3://bucket/labels",), "give --to DIR"),
                      ((str(local), "--max-videos", "-1"), "--max-videos -1"),
                      ((str(local), "--to", "s3://bucket/r"), "local folder"),
                      ((str(local), "--to", str(next(local.glob("videos/*/*.parquet")) / "r")), "cannot write there")):
        res = _cli(*args)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and why in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_help_imports_neither_matplotlib_nor_duckdb():
    from emoframe.flows.analysis.report import DEFAULT_MAX_VIDEOS

    code = ("import sys, contextlib, io\nfrom emoframe.flows.cli.main import main\nhelp = io.StringIO()\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(help):\n    main(['report', '--help'])\n"
            "print(sorted(m for m in ('matplotlib', 'duckdb', 'emoframe.flows.analysis.report') if m in sys.modules))\n"
            "print(' '.join(help.getvalue().split()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    loaded, help_text = res.stdout.splitlines()
    assert loaded == "[]", res.stdout + res.stderr
    assert f"(default {DEFAULT_MAX_VIDEOS};" in help_text and "--to DIR" in help_text


# Appended to a copy of a page: marks <html> once the page has loaded and says how many images decoded.
PROBE = ("<script>addEventListener('load', () => { const im = [...document.images]; "
         "document.documentElement.dataset.images = im.filter(i => i.complete && i.naturalWidth > 0).length "
         "+ '/' + im.length; });</script>")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    pytest.fail("chromium not found: `make test` installs Debian's chromium (or `apt-get install -y chromium`)")


@pytest.mark.parametrize("which", ["index", "two faces.mp4"])
@pytest.mark.integration  # starts Debian's chromium (`make test` installs it)
def test_pages_render_in_a_real_browser_with_every_image(report, tmp_path, which):
    page = report if which == "index" else _video_pages(report)[which]
    probe = page.with_name(f"probe-{which.replace(' ', '_')}.html")  # beside it: relative image paths still resolve
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    n = len(_page(page).images)
    assert n and f'data-images="{n}/{n}"' in res.stdout, res.stdout[:500] + res.stderr[-2000:]
    assert "<h1>" in res.stdout and ("emoframe report" in res.stdout if which == "index" else which in res.stdout)


@pytest.mark.integration
def test_a_report_of_output_in_a_bucket_matches_the_local_one(out, report, request, tmp_path, monkeypatch):
    """The same output uploaded to a real S3 server (SeaweedFS): the same pages, the same seconds per class,
    each page reading its video's own frames file from the bucket."""
    import emoframe.flows.analysis.report
    from emoframe.flows.analysis.report import write_report

    read = []  # each video page reads its own video's rows (workers/output/rows.read_rows), nothing else
    real_read = emoframe.flows.analysis.report.read_rows
    monkeypatch.setattr(emoframe.flows.analysis.report, "read_rows", lambda *a: read.append(a) or real_read(*a))

    server = request.getfixturevalue("s3_server")
    pafs.copy_files(str(out), f"{server.bucket}/labels", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=server.filesystem())
    index = write_report(server.uri("labels"), str(tmp_path / "r"))
    local, remote = _video_pages(report), _video_pages(index)
    assert set(remote) == set(local)
    for name in local:
        assert _page(remote[name]).tables["classes"] == _page(local[name]).tables["classes"]
    assert _page(index).tables["problems"] == _page(report).tables["problems"]
    assert len(read) == len(local)


# ---- the summary table ---------------------------------------------------------------------------------


def test_the_summary_has_a_row_per_labelled_video_with_seconds_coverage_and_no_signal(out, report):
    """Two faces: track 0 Happiness 50 frames then Sadness 30, track 1 Anger 40, no face in frames 80-99 and
    sound in frames 0-89; at 10 frames/s. The report keeps the same table beside its pages."""
    with connect(str(out)) as con:
        rows = {r["source_uri"]: r for r in con.sql("SELECT * FROM summary").to_arrow_table().to_pylist()}
    assert set(rows) == {TWO_FACES, HOSTILE, CROWD}  # failed and skipped files have no summary
    two = rows[TWO_FACES]
    assert two["frames"] == 100 and two["tracks"] == 2 and two["model_version"] == MV
    assert two["face_share"] == pytest.approx(0.8) and two["audio_share"] == pytest.approx(0.9)
    assert two["no_signal_frames"] == 20  # no face and, with the audio unused, no label
    expected = {"happiness": 5.0, "sadness": 3.0, "anger": 4.0}
    for c in CLASSES:
        assert two[f"seconds_{c.lower()}"] == pytest.approx(expected.get(c.lower(), 0.0)), c
        assert two[f"share_{c.lower()}"] == pytest.approx(expected.get(c.lower(), 0.0) / 12.0), c
    assert two["labelled_seconds"] == pytest.approx(12.0) and two["dominant"] == "Happiness"
    crowd = rows[CROWD]  # five faces over 10, 20, ... 50 frames: 150 face-frames of Happiness in a 5 s clip
    assert crowd["seconds_happiness"] == pytest.approx(15.0) and crowd["share_happiness"] == pytest.approx(1.0)
    kept = pq.read_table(report.parent / "summary.parquet").to_pylist()
    assert [r["source_uri"] for r in kept] == sorted(rows)
    assert {r["source_uri"]: r["seconds_anger"] for r in kept}[TWO_FACES] == pytest.approx(4.0)
    assert (report.parent / "summary.csv").read_text().count("\n") == len(rows) + 1
    assert "summary.parquet" in _page(report).links


def test_summary_seconds_follow_the_frame_timestamps_of_a_variable_rate_video(tmp_path):
    """A frame lasts until the next one starts (the last one 1/fps): Happiness on frames at 0, 0.1 and 0.3 s
    until 0.6 s; Sadness at 0.6 and 1.0 s, the last frame 0.1 s at 10 frames/s."""
    uri = "/archive/vfr.mp4"
    pred = _predictions(5, {0: (range(0, 5), [H, H, H, S, S])})
    fs = pafs.LocalFileSystem()
    times = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    write_atomic(frames_table(uri, FPS, pred, "m", "run-1", times=times), fs, frames_path(str(tmp_path), MV, uri))
    row = video_row(uri, status="labelled", model_name="m", run_id="run-1", started_at=datetime.now(timezone.utc),
                    fps=FPS, frame_count=5, duration_s=1.1, has_audio=True, face_mode="detect", tracks=1)
    write_atomic(videos_table([row]), fs, videos_path(str(tmp_path), MV, uri))
    with connect(str(tmp_path)) as con:
        got = con.sql("SELECT seconds_happiness, seconds_sadness, labelled_seconds FROM summary").fetchall()
    assert got == [pytest.approx((0.6, 0.5, 1.1))]
