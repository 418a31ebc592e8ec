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
