"""`emoframe report`: a static HTML report of an output folder (index.html plus one page per labelled video),
readable from disk with no server.

Everything is read through the query layer (emoframe.flows.analysis.query.connect: local folders and buckets
alike). The archive page's aggregates are DuckDB queries; a video page reads only that video's frames file
(load_video), binned in DuckDB to at most MAX_BINS points per track, so memory and time per page stay bounded
by one video however large the archive is. Pages are made for the ``max_videos`` most recently finished
labelled videos (what a report after a nightly run wants to see).
"""

from __future__ import annotations

import html
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from emoframe.workers.spec.terminal import shown
from emoframe.workers.spec.contract import CLASSES
from emoframe.workers.output.rows import read_rows
from emoframe.workers.spec.schema import PROB_COLUMNS, video_key
from emoframe.workers.output.storage import is_remote

if TYPE_CHECKING:  # matplotlib is imported only when a report is written
    from emoframe.flows.analysis.report_figures import Timeline

DEFAULT_MAX_VIDEOS = 200
MAX_TRACK_PANELS = 4  # timelines per video page: the longest tracks; the rest are counted in a note
MAX_BINS = 1200  # time points per timeline: a two-hour video plots as fast as a short one
FAILURE_EXAMPLES = 3
PAGES = "pages"  # the report's own folder inside the destination (replaced as a whole on every run)


class ReportError(Exception):
    """The user's to fix (no output there, a bucket without --to, a bad --max-videos); one line."""


def esc(text: object) -> str:
    """A value as HTML text: markup characters escaped, control characters shown as escapes (a file name may
    hold anything but '/')."""
    return html.escape(shown(text), quote=True)


def _when(t: object) -> str:
    """A timestamp to the second (the connection's time zone is UTC)."""
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(t, "strftime") else "-"


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------------- queries


@dataclass
class VideoInfo:
    video_id: str
    model_version: str
    source_uri: str
    fps: float
    frame_count: int | None
    duration_s: float | None
    tracks: int | None
    has_audio: bool | None
    audio_used: bool | None
    face_mode: str | None
    warning: str | None
    processing_s: float | None
    finished_at: object

    @property
    def page(self) -> str:
        """Path of its page relative to the report root. model_version is a safe partition value
        (emoframe.workers.spec.schema.partition); the "v-" prefix keeps a version named ".." a plain folder name."""
        return f"{PAGES}/v-{self.model_version}/{video_key(self.source_uri)}.html"


@dataclass
class VideoSummary:
    """What the archive page shows about a video whose page was written."""

    info: VideoInfo
    labelled_rows: int
    dominant: str | None
    track_count: int


VIDEO_COLUMNS = ("video_id", "model_version", "source_uri", "fps", "frame_count", "duration_s", "tracks",
                 "has_audio", "audio_used", "face_mode", "warning", "processing_s", "finished_at")


def selected_videos(con: duckdb.DuckDBPyConnection, max_videos: int) -> list[VideoInfo]:
    """The labelled videos that get a page: the most recently finished first."""
    # fps NULL on a labelled row should not happen; frame_count / duration_s keeps the page's seconds meaningful.
    cols = ", ".join("coalesce(fps, frame_count / nullif(duration_s, 0), 1.0)" if c == "fps" else c
                     for c in VIDEO_COLUMNS)
    rows = con.execute(f"SELECT {cols} FROM videos WHERE status = 'labelled' "
                       "ORDER BY finished_at DESC NULLS LAST, source_uri, model_version LIMIT ?",
                       [max_videos]).fetchall()
    return [VideoInfo(*r) for r in rows]


VIDEO_FRAME_COLUMNS = ("frame_index", "timestamp_s", "track_id", "face_present", "audio_present", "label",
                       "label_id", *PROB_COLUMNS)


def load_video(con: duckdb.DuckDBPyConnection, fs: pafs.FileSystem, base: str, v: VideoInfo) -> None:
    """Make view ``vf`` hold this video's frames rows, read where they are (workers/output/rows.py: the video's own
    file, or the row groups of a compacted file that hold it): filtering the frames view would open every
    file's footer, once per video. Output of another layout (or an older schema) is read through the view."""
    try:
        table = read_rows(fs, base, v.model_version, v.source_uri, "frames")
        if table is None:
            raise FileNotFoundError(v.source_uri)
        table = table.select(list(VIDEO_FRAME_COLUMNS))
    except (OSError, pa.ArrowException, KeyError):  # none there, or a file without a column of today's schema
        table = con.execute(f"SELECT {', '.join(VIDEO_FRAME_COLUMNS)} FROM frames WHERE video_id = ? AND "
                            "model_version = ?", [v.video_id, v.model_version]).to_arrow_table()
    con.register("vf", table)


def track_lengths(con: duckdb.DuckDBPyConnection) -> list[tuple[int, int]]:
    """(track_id, frames with that face present) of the loaded video, longest first."""
    return con.execute("SELECT track_id, count(*) FILTER (WHERE face_present) AS n FROM vf "
                       "WHERE track_id IS NOT NULL GROUP BY track_id ORDER BY n DESC, track_id").fetchall()


def class_frames(con: duckdb.DuckDBPyConnection) -> dict[int | None, dict[str, int]]:
    """Labelled rows of the loaded video per track (None: frames without a face, labelled from the audio) and
    class."""
    out: dict[int | None, dict[str, int]] = {}
    for track, label, n in con.execute("SELECT track_id, label, count(*) FROM vf WHERE label IS NOT NULL "
                                       "GROUP BY ALL").fetchall():
        out.setdefault(track, {})[label] = n
    return out


def _bin_frames(con: duckdb.DuckDBPyConnection) -> int:
    # An aggregate without GROUP BY: always one row.
    last = cast("tuple[Any, ...]", con.execute("SELECT max(frame_index) FROM vf").fetchone())[0]
    return max(1, -(-((last or 0) + 1) // MAX_BINS))


def timelines(con: duckdb.DuckDBPyConnection, v: VideoInfo, tracks: list[int], faceless: bool) -> list[Timeline]:
    """One binned Timeline per track in ``tracks`` of the loaded video (and one for the face-less frames when
    ``faceless``)."""
    from emoframe.flows.analysis.report_figures import Timeline  # noqa: F811  -- the runtime import of the TYPE_CHECKING name

    k = _bin_frames(con)
    # The video's time base: every frame has at least one row (a face's or its face-less row).
    base = con.execute(f"SELECT frame_index // {k} AS b, min(timestamp_s), count(DISTINCT frame_index), "
                       "avg(audio_present::INT) FROM vf GROUP BY b ORDER BY b").fetchall()
    if not base:
        return []
    bins = np.array([r[0] for r in base])
    t = np.array([r[1] for r in base], float)
    frames_in_bin = np.array([r[2] for r in base], float)
    audio = np.array([r[3] for r in base], float)
    end_s = v.duration_s or float(t[-1] + k / (v.fps or 1.0))
    pos = {b: i for i, b in enumerate(bins)}
    probs = ", ".join(f"avg({c})" for c in PROB_COLUMNS)
    out = []
    for track in [*tracks, *([None] if faceless else [])]:
        cond = "track_id = ?" if track is not None else "track_id IS NULL"
        rows = con.execute(f"SELECT frame_index // {k} AS b, count(*) FILTER (WHERE face_present), mode(label_id), "
                           f"{probs} FROM vf WHERE {cond} GROUP BY b", [track] if track is not None else []).fetchall()
        p = np.full((len(bins), len(CLASSES)), np.nan)
        label = np.full(len(bins), -1)
        face = np.zeros(len(bins))
        for b, present, lab, *pr in rows:
            i = pos[b]
            face[i] = present / frames_in_bin[i]
            label[i] = -1 if lab is None else lab
            p[i] = [np.nan if x is None else x for x in pr]
        title = f"face track {track}" if track is not None else "frames without a face (labelled from the audio)"
        out.append(Timeline(title, t, end_s, p, label, face, audio))
    return out


@dataclass
class ArchiveStats:
    status: list[tuple] = field(default_factory=list)  # (model_version, status, videos, frames)
    problems: list[tuple] = field(default_factory=list)  # (status, reason, videos, [(uri, message)])
    mix: dict[str, dict[str, float]] = field(default_factory=dict)  # model_version -> class -> share
    mix_rows: list[tuple] = field(default_factory=list)  # (model_version, label, rows, seconds)
    throughput: list[tuple] = field(default_factory=list)  # per model_version
    runs: list[tuple] = field(default_factory=list)  # the latest runs: wall-clock throughput
    labelled: int = 0


def archive_stats(con: duckdb.DuckDBPyConnection) -> ArchiveStats:
    """Every archive-wide number, aggregated by DuckDB (nothing row-sized comes back to Python)."""
    s = ArchiveStats()
    s.status = con.execute("SELECT model_version, status, count(*), sum(frame_count) FROM videos "
                           "GROUP BY ALL ORDER BY model_version, status").fetchall()
    s.labelled = sum(r[2] for r in s.status if r[1] == "labelled")
    s.problems = con.execute(
        f"SELECT status, coalesce(error_reason, '(none)') AS reason, count(*), "
        f"list({{'uri': source_uri, 'msg': error_message}} ORDER BY finished_at DESC NULLS LAST)[1:{FAILURE_EXAMPLES}] "
        "FROM videos WHERE status <> 'labelled' GROUP BY ALL ORDER BY status, count(*) DESC, reason").fetchall()
    # Seconds per class: each row stands for 1/fps seconds of its video.
    s.mix_rows = con.execute(
        "SELECT f.model_version, f.label, count(*), sum(1.0 / v.fps) FROM frames f "
        "JOIN videos v USING (video_id, model_version) WHERE f.label IS NOT NULL AND v.status = 'labelled' "
        "GROUP BY ALL ORDER BY f.model_version, f.label").fetchall()
    totals: dict[str, int] = {}
    for mv, _, n, _ in s.mix_rows:
        totals[mv] = totals.get(mv, 0) + n
    for mv, label, n, _ in s.mix_rows:
        s.mix.setdefault(mv, {})[label] = n / totals[mv]
    s.throughput = con.execute(
        "SELECT model_version, any_value(model_name), count(*), sum(frame_count), sum(duration_s), sum(processing_s), "
        "sum(frame_count) / nullif(sum(processing_s), 0), "
        "quantile_cont(frame_count / nullif(processing_s, 0), [0.1, 0.5, 0.9]), min(started_at), max(finished_at) "
        "FROM videos WHERE status = 'labelled' GROUP BY model_version ORDER BY model_version").fetchall()
    # Per run, wall clock: videos run in parallel, so this is the throughput a run actually reached.
    s.runs = con.execute(
        "SELECT run_id, model_version, count(*) FILTER (WHERE status = 'labelled'), count(*) FILTER (WHERE status = "
        "'failed'), sum(frame_count) FILTER (WHERE status = 'labelled'), min(started_at), "
        "epoch(max(finished_at) - min(started_at)) FROM videos GROUP BY run_id, model_version "
        "ORDER BY max(finished_at) DESC NULLS LAST LIMIT 10").fetchall()
    return s


# ----------------------------------------------------------------------------------------------------- HTML

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:.3em 0 1em}code{word-break:break-all}.note{color:#555}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border:1px solid #888}"""


def _doc(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="generator" content="emoframe report"><style>{STYLE}</style></head>\n'
            f"<body>\n{body}\n</body></html>\n")


def _table(head: list[str] | None, rows: list[list[str]], table_id: str = "", numeric_from: int = 1) -> str:
    """``head`` and ``rows`` are already HTML (escape values before). Columns from ``numeric_from`` on are
    right-aligned."""
    attr = f' id="{table_id}"' if table_id else ""
    th = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i >= numeric_from else ""}>{c}</td>' for i, c in
                                    enumerate(r)) + "</tr>\n" for r in rows)
    return f"<table{attr}>{th}\n{body}</table>"


def _swatch(label: str) -> str:
    from emoframe.flows.analysis.report_figures import CLASS_COLOURS

    colour = CLASS_COLOURS[CLASSES.index(label)] if label in CLASSES else "#fff"
    return f'<span class="sw" style="background:{colour}"></span>{esc(label)}'


def _seconds_cell(frames: int, total: int, fps: float) -> str:
    if not frames:
        return "-"
    return f"{frames / fps:.1f} s ({100 * frames / total:.0f}%)"


def class_table(counts: dict[int | None, dict[str, int]], shown_tracks: list[int], fps: float) -> str:
    """Seconds and share per class: all faces together, each shown track, and audio-only frames if any."""
    faces: dict[str, int] = {}
    for track, per in counts.items():
        if track is not None:
            for c, n in per.items():
                faces[c] = faces.get(c, 0) + n
    columns = [("all faces", faces), *((f"track {t}", counts.get(t, {})) for t in shown_tracks)]
    if counts.get(None):
        columns.append(("no face (audio)", counts[None]))
    rows = []
    for c in CLASSES:
        if any(per.get(c) for _, per in columns):
            rows.append([_swatch(c), *(_seconds_cell(per.get(c, 0), sum(per.values()), fps) for _, per in columns)])
    return _table(["class", *(esc(name) for name, _ in columns)], rows, table_id="classes")


def video_page(v: VideoInfo, tracks: list[tuple[int, int]], counts: dict, images: list[tuple[str, str]],
               root: str) -> str:
    shown_tracks = [t for t, _ in tracks[:MAX_TRACK_PANELS]]
    meta = [("file", f"<code>{esc(v.source_uri)}</code>"), ("model_version", esc(v.model_version)),
            ("duration", _fmt_s(v.duration_s)), ("frames", esc(v.frame_count)), ("fps", f"{v.fps:.3g}"),
            ("face tracks", str(len(tracks))), ("face mode", esc(v.face_mode)),
            ("audio track", "none" if not v.has_audio else "heard by the model" if v.audio_used else
             "present, not heard by the model (--audio off)"),
            ("processing", _fmt_s(v.processing_s))]
    if v.warning:
        meta.append(("warning", esc(v.warning)))
    parts = [f'<p><a href="{root}index.html">&larr; archive</a></p>',
             f"<h1>{esc(Path(v.source_uri).name or v.source_uri)}</h1>",
             _table(None, [[k, val] for k, val in meta], table_id="meta", numeric_from=2),
             "<h2>Time per class</h2>",
             class_table(counts, shown_tracks, v.fps) if counts else "<p>No labelled frame.</p>",
             "<h2>Timelines</h2>",
             '<p class="note">Stacked: the eight voted probabilities; strip: the label (white: no label); '
             "bands: this face in view, sound in the video.</p>"]
    if len(tracks) > MAX_TRACK_PANELS:
        parts.append(f'<p class="note">{len(tracks)} face tracks: the {MAX_TRACK_PANELS} longest are shown; '
                     f"{len(tracks) - MAX_TRACK_PANELS} shorter ones are counted in \"all faces\" above.</p>")
    parts += [f'<img src="{quote(src)}" alt="{esc(alt)}">' for src, alt in images]
    return _doc(f"{Path(v.source_uri).name} - emoframe", "\n".join(parts))


def _status_section(s: ArchiveStats) -> str:
    rows = [[esc(mv), esc(st), str(n), esc(fr if fr is not None else "-")] for mv, st, n, fr in s.status]
    return "<h2>Videos by status</h2>" + _table(["model_version", "status", "videos", "frames"], rows,
                                               table_id="status", numeric_from=2)


def _problems_section(s: ArchiveStats) -> str:
    if not s.problems:
        return "<h2>Failures and skips</h2><p>None.</p>"
    rows = []
    for status, reason, n, examples in s.problems:
        ex = "<br>".join(f"<code>{esc(e['uri'])}</code>" + (f": {esc(e['msg'])}" if e["msg"] else "")
                         for e in examples)
        rows.append([esc(status), f"<code>{esc(reason)}</code>", str(n), ex])
    return "<h2>Failures and skips</h2>" + _table(["status", "reason", "videos", "examples (latest first)"], rows,
                                                  table_id="problems", numeric_from=2)


def _mix_section(s: ArchiveStats, image: str | None) -> str:
    if not s.mix_rows:
        return "<h2>Class mix</h2><p>No labelled frame.</p>"
    totals = {mv: sum(n for m, _, n, _ in s.mix_rows if m == mv) for mv in s.mix}
    order = {c: i for i, c in enumerate(CLASSES)}
    rows = [[esc(mv), _swatch(label), str(n), f"{100 * n / totals[mv]:.1f}%", _fmt_s(sec)]
            for mv, label, n, sec in sorted(s.mix_rows, key=lambda r: (r[0], order.get(r[1], 99)))]
    img = f'<img src="{quote(image)}" alt="class mix">' if image else ""
    return ("<h2>Class mix</h2><p class=note>Labelled rows (every face of every frame), and the time they cover.</p>"
            + img + _table(["model_version", "class", "rows", "share", "time"], rows, table_id="mix", numeric_from=2))


def _throughput_section(s: ArchiveStats) -> str:
    rows = []
    for mv, model, n, frames, dur, proc, fps, q, first, last in s.throughput:
        qs = " / ".join(f"{x:.1f}" for x in q) if q and None not in q else "-"
        rows.append([esc(mv), esc(model), str(n), str(frames or 0), _fmt_s(dur), _fmt_s(proc),
                     f"{fps:.1f}" if fps else "-", qs, _when(first), _when(last)])
    runs = [[f"<code>{esc(r)}</code>", esc(mv), str(ok), str(bad), str(fr or 0), _when(start), _fmt_s(wall),
             f"{fr / wall:.1f}" if fr and wall else "-"] for r, mv, ok, bad, fr, start, wall in s.runs]
    return ("<h2>Throughput</h2><p class=note>Per video: frames / processing time of that video (a worker's view; "
            "videos run in parallel). Per run: frames / wall-clock time from its first start to its last finish.</p>"
            + _table(["model_version", "model", "labelled videos", "frames", "video time", "processing time",
                      "frames/s", "per-video frames/s p10 / p50 / p90", "first start", "last finish"],
                     rows, table_id="throughput", numeric_from=2)
            + "<h3>Latest runs</h3>"
            + _table(["run", "model_version", "labelled", "failed", "frames", "started", "wall clock", "frames/s"],
                     runs, table_id="runs", numeric_from=2))


def _videos_section(pages: list[VideoSummary], labelled: int) -> str:
    rows = [[f'<a href="{quote(p.info.page)}">{esc(Path(p.info.source_uri).name or p.info.source_uri)}</a>',
             esc(p.info.model_version), _fmt_s(p.info.duration_s), str(p.track_count),
             _swatch(p.dominant) if p.dominant else "-", _when(p.info.finished_at)] for p in pages]
    note = (f"<p class=note>Pages for the {len(pages)} most recently labelled of {labelled} labelled videos "
            "(<code>--max-videos</code> raises the cap).</p>" if len(pages) < labelled else "")
    return ("<h2>Labelled videos</h2>" + note
            + _table(["file", "model_version", "duration", "face tracks", "most frequent label", "finished"], rows,
                     table_id="videos", numeric_from=99))


def _numbers_section(labelled: int) -> str:
    links = " and ".join(f'<a href="{name}">{name}</a>' for name in SUMMARY_FILES)
    return ("<h2>Numbers</h2>"
            f"<p>{links}: one row for each of the {labelled} labelled videos (every one, not only those with a "
            "page): seconds and share of each class (face-seconds: two faces count twice), the most frequent "
            "label, the share of frames with a face and with sound, frames without any signal. The same as "
            '<code>emoframe query "SELECT * FROM summary"</code>.</p>')


def index_page(out: str, s: ArchiveStats, pages: list[VideoSummary], mix_image: str | None, seconds: float) -> str:
    versions = ", ".join(esc(mv) for mv in sorted({r[0] for r in s.status})) or "-"
    body = "\n".join([
        "<h1>emoframe report</h1>",
        f"<p>Output <code>{esc(out)}</code>; model_version(s): {versions}. Written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} in {seconds:.1f} s.</p>",
        _status_section(s), _problems_section(s), _mix_section(s, mix_image), _throughput_section(s),
        _videos_section(pages, s.labelled), _numbers_section(s.labelled)])
    return _doc("emoframe report", body)


# --------------------------------------------------------------------------------------------------- writing


def _write_video(con: duckdb.DuckDBPyConnection, fs: pafs.FileSystem, base: str, v: VideoInfo,
                 build: Path) -> VideoSummary:
    from emoframe.flows.analysis.report_figures import timeline_png

    page = build / v.page
    page.parent.mkdir(parents=True, exist_ok=True)
    load_video(con, fs, base, v)
    tracks = track_lengths(con)
    counts = class_frames(con)
    shown_tracks = [t for t, _ in tracks[:MAX_TRACK_PANELS]]
    images = []
    for tl, name in zip(timelines(con, v, shown_tracks, faceless=bool(counts.get(None))),
                        [*(f"track{t}" for t in shown_tracks), "noface"]):
        png = page.with_name(f"{page.stem}-{name}.png")
        timeline_png(tl, png)
        images.append((png.name, tl.title))
    page.write_text(video_page(v, tracks, counts, images, root="../../"), encoding="utf-8")
    totals: dict[str, int] = {}
    for per in counts.values():
        for c, n in per.items():
            totals[c] = totals.get(c, 0) + n
    dominant = max(totals, key=lambda c: (totals[c], c)) if totals else None
    return VideoSummary(v, sum(totals.values()), dominant, len(tracks))


def _publish(build: Path, dest: Path) -> None:
    """Swap the new report in: a reader sees the old report or the new one, and pages of videos that left the
    selection do not linger. Only index.html and pages/ are touched: --to may be a folder with other files."""
    old = dest / f".{PAGES}-old-{uuid.uuid4().hex[:8]}"
    if (dest / PAGES).exists():
        os.rename(dest / PAGES, old)
    if (build / PAGES).exists():
        os.rename(build / PAGES, dest / PAGES)
    for name in SUMMARY_FILES:
        os.replace(build / name, dest / name)
    os.replace(build / "index.html", dest / "index.html")
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(build, ignore_errors=True)


REPORT_DIR = "_report"  # "_": readers of the output folder (pyarrow datasets) skip it
# The `summary` view (flows/analysis/query.py) kept beside the pages: one row per labelled video, for numbers.
SUMMARY_FILES = ("summary.parquet", "summary.csv")


def write_summary(con: duckdb.DuckDBPyConnection, folder: Path) -> int:
    """Writes SUMMARY_FILES into ``folder``; returns the number of videos in them."""
    rel = con.sql("SELECT * FROM summary ORDER BY source_uri, model_version")
    table = rel.to_arrow_table()
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    pq.write_table(table, folder / SUMMARY_FILES[0])
    pa_csv.write_csv(table, folder / SUMMARY_FILES[1])
    return table.num_rows


def default_dest(out: str) -> str:
    if is_remote(out):
        raise ReportError(f"{out} is in a bucket: give --to DIR, a local folder for the report")
    return os.path.join(out.removeprefix("file://"), REPORT_DIR)


def write_report(out: str, dest: str | None = None, max_videos: int = DEFAULT_MAX_VIDEOS) -> Path:
    """Write the report of the output in ``out`` (a folder or s3:// / gs:// URI) into the local folder ``dest``
    (default ``out``/_report for a local ``out``): index.html and a page for each of the ``max_videos`` most
    recently labelled videos. Returns the path of index.html. Raises ReportError for what the user fixes."""
    from emoframe.flows.analysis.query import connect
    from emoframe.workers.output.storage import filesystem_for

    started = time.monotonic()
    if max_videos < 0:
        raise ReportError(f"--max-videos {max_videos}: give 0 (archive page only) or more")
    dest = dest or default_dest(out)
    if "://" in dest:
        raise ReportError(f"--to {dest}: the report is written to a local folder")
    try:
        con = connect(out)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    # Each video page filters the frames view by video; cached footers make that one file read, not one per file.
    con.execute("SET parquet_metadata_cache = true")
    con.execute("SET TimeZone = 'UTC'")  # the same times whoever writes the report
    root = Path(dest)
    build = root / f".report-tmp-{uuid.uuid4().hex[:8]}"
    try:
        (build / PAGES).mkdir(parents=True)
    except OSError as exc:
        con.close()
        raise ReportError(f"--to {dest}: cannot write there ({exc.strerror})") from None
    from emoframe.flows.analysis.report_figures import class_mix_png  # matplotlib: only once there is something to draw

    try:
        with con:
            stats = archive_stats(con)
            mix_image = None
            if stats.mix:
                mix_image = f"{PAGES}/class_mix.png"
                class_mix_png(stats.mix, build / mix_image)
            fs, base = filesystem_for(out)
            pages = [_write_video(con, fs, base, v, build) for v in selected_videos(con, max_videos)]
            write_summary(con, build)
        (build / "index.html").write_text(index_page(out, stats, pages, mix_image, time.monotonic() - started),
                                          encoding="utf-8")
        _publish(build, root)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return root / "index.html"
