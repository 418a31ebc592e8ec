"""Published figures are rendered from the files the measuring commands wrote; the docs must not drift."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # face_bench imports its sibling clips.py
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_readme_face_accuracy_table_is_rendered_from_its_json():
    fa = _load("face_accuracy")
    data = json.loads(fa.JSON_PATH.read_text())
    assert _load("published").readme_block(fa.START, fa.END) == fa.render(data).strip()
    assert data["stamp"]["commit"] and data["stills"]["multi_face.jpg"]["faces"] == 5


def test_readme_face_benchmark_is_rendered_from_its_json():
    fb = _load("face_bench")
    report = json.loads(fb.PUBLISHED.read_text())
    assert _load("published").readme_block(fb.START, fb.END) == fb.render(report).strip()
    assert not report["git"]["dirty"] and report["settings"]["seconds"] >= 60
    for clip in report["clips"].values():
        assert clip["e2e"]["ok"] and clip["e2e"]["status"] == "labelled"


def test_model_card_figures_are_rendered_from_the_deployed_versions_files():
    from emoframe.training import model_card

    vdir = model_card.deployed_version()
    published = _load("published")
    assert published.readme_block(model_card.START, model_card.END, model_card.MODEL_CARD) == \
        model_card.render(vdir).strip()
    meta = json.loads((vdir / "metadata.json").read_text())
    assert meta["version"] == int(vdir.name) and f"expression_fusion/{vdir.name}`" in model_card.MODEL_CARD.read_text()


def test_model_card_real_clip_figures_are_rendered_from_their_json_of_the_deployed_model():
    from emoframe.training import model_card

    rc = _load("real_clips")
    data = json.loads(rc.JSON_PATH.read_text())
    assert _load("published").readme_block(rc.START, rc.END, rc.MODEL_CARD) == rc.render(data).strip()
    assert data["stamp"]["model_version"] == int(model_card.deployed_version().name)


def test_voting_sweep_is_rendered_from_its_json_and_the_policy_defaults_are_its_pick():
    from emoframe.training import voting_sweep
    from emoframe.workers.spec.contract import fingerprint
    from emoframe.workers.spec.policy import POLICY

    doc = json.loads(voting_sweep.JSON_PATH.read_text())
    assert _load("published").readme_block(voting_sweep.START, voting_sweep.END, voting_sweep.MARKDOWN_PATH) == \
        voting_sweep.render(doc).strip()
    assert doc["stamp"]["contract"] == fingerprint()
    pick = voting_sweep.choose(doc["rows"])
    assert (POLICY.stride, POLICY.vote_seconds) == (pick["stride"], pick["vote_seconds"])


def test_readme_triton_benchmark_is_rendered_from_its_json():
    tb = _load("triton_bench")
    report = json.loads(tb.PUBLISHED.read_text())
    assert _load("published").readme_block(tb.START, tb.END) == tb.render(report).strip()
    assert report["stamp"]["dirty"] is False and report["stamp"]["commit"] != "unknown"
    assert "KIND_GPU" in report["kinds"] and report["ratios_gpu_over_cpu"]["model_frames_per_s"] > 1


def test_readme_triton_cpu_benchmark_is_rendered_from_its_json_and_the_split_agrees_with_forward():
    tb = _load("triton_bench")
    report = json.loads(tb.PUBLISHED_CPU.read_text())
    assert _load("published").readme_block(tb.START_CPU, tb.END_CPU) == tb.render(report).strip()
    assert report["stamp"]["dirty"] is False and report["stamp"]["commit"] != "unknown"
    rows = report["kinds"]
    assert rows["KIND_CPU"]["split_in_use"] and not rows[tb.FORWARD]["split_in_use"]
    assert rows["KIND_CPU"]["max_abs_diff_vs_forward"] < 1e-4


def test_ablation_page_is_rendered_from_its_json_of_three_seeds_under_this_contract():
    from emoframe.training import ablation
    from emoframe.workers.spec.contract import fingerprint

    doc = json.loads(ablation.JSON_PATH.read_text())
    assert ablation.MARKDOWN_PATH.read_text() == ablation.render(doc)
    stamp = doc["stamp"]
    assert not stamp["dirty"] and len(stamp["seeds"]) >= 3 and stamp["contract"] == fingerprint()
    assert set(doc["results"]) == set(ablation.RUN_NAMES)  # every variant, none left out


def test_readme_ports_table_is_rendered_from_its_json_and_our_services_are_loopback_only():
    lp = _load("listening_ports")
    data = json.loads(lp.JSON_PATH.read_text())
    assert _load("published").readme_block(lp.START, lp.END) == lp.render(data).strip()
    ours = [r for r in data["rows"] if r["process"].startswith(("Triton", "Prefect"))]
    assert {r["process"] for r in ours} == {"Triton (embedded)", "Prefect server (temporary)"}
    assert {r["bind"] for r in ours} == {"127.0.0.1"}


def test_readme_reliability_table_is_rendered_from_a_test_run_with_nothing_lost():
    rel = _load("reliability")
    data = json.loads(rel.JSON_PATH.read_text())
    assert _load("published").readme_block(rel.START, rel.END) == rel.render(data).strip()
    assert len(data["inputs"]) >= 20 and len(data["faults"]) >= 6  # what issue 9 asks the table to show
    for fault in data["faults"]:
        assert (fault["lost"], fault["duplicated"], fault["healthy_failed"]) == (0, 0, 0), fault


def test_what_a_video_task_declares_to_ray_covers_its_measured_memory():
    from emoframe.workers.task.resources import TASK_MEMORY_MB

    data = json.loads((ROOT / "docs" / "task_memory.json").read_text())
    assert not data["dirty"] and data["declared_mb"] == TASK_MEMORY_MB
    readme = (ROOT / "README.md").read_text()
    for mode, m in data["modes"].items():
        assert m["status"] == "labelled" and m["peak_mb"] <= TASK_MEMORY_MB, mode
        assert f"{m['peak_mb']:,} MB" in readme, mode  # the README quotes the measured figures


def test_readme_user_errors_table_is_rendered_from_its_json_and_every_mistake_is_a_clean_exit_2():
    ue = _load("user_errors")
    data = json.loads(ue.JSON_PATH.read_text())
    assert _load("published").readme_block(ue.START, ue.END) == ue.render(data).strip()
    assert not data["dirty"] and len(data["rows"]) >= 12
    for row in data["rows"]:
        assert row["exit"] == 2 and not row["traceback"], row
        assert row["stderr_lines"] == 1 or row["usage_first"], row  # one line, or argparse's usage and one line


def test_scale_page_and_readme_table_are_rendered_from_the_measured_files():
    sp = _load("scale_projection")
    m = sp.load()
    assert (ROOT / "docs" / "scale.md").read_text() == sp.render(m)
    assert _load("published").readme_block(sp.START, sp.END) == sp.readme_table(m).strip()
    for name, data in m.items():
        assert not (data.get("dirty") or data.get("git", {}).get("dirty")), name


def test_report_screenshots_and_what_they_show_are_rendered_from_their_json():
    rs = _load("report_screenshots")
    data = json.loads(rs.JSON_PATH.read_text())
    assert _load("published").readme_block(rs.START, rs.END) == rs.render(data).strip()
    assert not data["dirty"] and set(data["runs"]) == {"real", "synthetic"}
    for name in data["runs"]:
        png = ROOT / "docs" / f"report_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_training_memory_sentence_is_rendered_from_its_json_and_memory_maps_hold_little():
    tm = _load("training_memory")
    data = json.loads(tm.OUT_JSON.read_text())
    assert _load("published").readme_block(tm.START, tm.END) == tm.render(data).strip()
    assert data["held_mb"]["memory-mapped"] < 0.1 * data["cache_mb"] < data["held_mb"]["in-memory"]


def test_readme_pipeline_benchmark_is_rendered_from_its_json_with_the_long_video():
    pb = _load("pipeline_bench")
    report = json.loads(pb.PUBLISHED.read_text())
    assert _load("published").readme_block(pb.START, pb.END) == pb.render(report).strip()
    assert report["stamp"]["dirty"] is False and report["settings"]["face_mode"] == "centred"
    assert report["long"]["frames"] > report["short"]["frames"]  # the memory ratio compares two lengths


def test_readme_long_video_table_is_rendered_from_its_json_and_the_split_gave_the_same_rows():
    lv = _load("long_video")
    data = json.loads(lv.PUBLISHED.read_text())
    assert _load("published").readme_block(lv.START, lv.END) == lv.render(data).strip()
    assert data["identical"] and not data["dirty"] and data["segments"] >= 2 and data["minutes"] >= 10
