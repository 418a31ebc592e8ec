"""The ablation's arithmetic: mean and spread over seeds, and when a claim counts."""

from __future__ import annotations

import numpy as np

from emoframe.training.ablation import CLAIMS, RARE, cell, judge, render
from emoframe.workers.spec.contract import CLASSES, NUM_CLASSES


def _metrics(macro: float, rare: float = 0.5) -> dict:
    f1 = [macro] * NUM_CLASSES
    for c in RARE:
        f1[CLASSES.index(c)] = rare
    return {"macro_f1": macro, "accuracy": macro, "per_class_f1": f1, "flips_per_minute": 20.0, "frames": 1000}


def _doc(figures: dict[str, list[float]]) -> dict:
    """Every condition of a variant gets the same figure per seed."""
    conds = ("full", "faces_hidden_50", "audio_hidden_50", "full_no_voting")
    results = {name: {str(s): {c: _metrics(x) for c in conds} for s, x in enumerate(xs)}
               for name, xs in figures.items()}
    stamp = {"commit": "0" * 40, "date": "2026-11-26", "contract": "c", "seeds": [0, 1, 2], "test_frames": 1000,
             "data": {"generator_sha256_16": "g", "test_videos": 40, "seeds": [1, 2, 3]},
             "base_config": {"epochs": 12, "steps_per_epoch": 60, "batch_size": 32, "reader": "drawn"}}
    return {"stamp": stamp, "results": results}


def test_a_claim_holds_only_where_the_difference_exceeds_the_spread():
    doc = _doc({"full model": [0.90, 0.91, 0.92], "visual branch only": [0.80, 0.81, 0.82],
                "audio branch only": [0.88, 0.92, 0.93], "late fusion (no cross-attention)": [0.95, 0.96, 0.97]})
    verdicts = {c["claim"]: c for c in judge(doc)}
    assert verdicts["fusion beats the visual branch alone"]["verdict"] == "holds"
    assert np.isclose(verdicts["fusion beats the visual branch alone"]["diff"], 0.10)
    assert np.isclose(verdicts["fusion beats the visual branch alone"]["spread"], np.sqrt(2) * 0.01)
    assert verdicts["fusion beats the audio branch alone"]["verdict"] == "not shown"  # +0.0 within the spread
    assert verdicts["cross-attention beats late fusion"]["verdict"] == "contradicted"
    assert "modality dropout helps with faces missing" not in verdicts  # that variant was not measured


def test_the_table_shows_mean_and_standard_deviation_over_seeds():
    doc = _doc({"full model": [0.90, 0.92, 0.94]})
    np.testing.assert_allclose(cell(doc, "full model", "full"), [0.90, 0.92, 0.94])
    np.testing.assert_allclose(cell(doc, "full model", "full", "rare_f1"), [0.5, 0.5, 0.5])
    assert "| full model | 0.920 ± 0.020 |" in render(doc)
    assert len(CLAIMS) == len({c[0] for c in CLAIMS})
