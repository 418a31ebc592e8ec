"""MTCNN's three networks (Zhang et al. 2016) as ONNX graphs run by onnxruntime: no torch in a worker.

The layers are written here; the weights are the original authors' Caffe weights as shipped in the mtcnn
wheel (see weights.py), a NumPy file of one list of arrays per network in layer order. They are the same
numbers facenet-pytorch ships (tests/test_faces.py compares every array), stored for Keras:
convolution kernels as (width, height, in, out) and dense layers as (in, out).

Two Caffe habits the graphs keep: pooling rounds its output size up (``ceil_mode``), and the dense layers
read a feature map flattened in (width, height, channel) order, because the authors trained on transposed
images.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

_OPSET = 17


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the weight file's lists of arrays and nothing else: no other class can be named in it."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an MTCNN weight file")
        return super().find_class(module, name)


def read_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """``{"pnet": [...], "rnet": [...], "onet": [...]}`` from the mtcnn wheel's ``mtcnn_weights.npy``: a
    NumPy file holding one pickled dict (read without ``allow_pickle``'s trust in any class)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"{path}: NumPy file format {version} is not one this reader knows")
        shape, _, dtype = read_header(f)
        if shape != () or dtype != np.dtype(object):
            raise ValueError(f"{path}: expected one pickled object, found an array {dtype} {shape}")
        weights = _ArraysOnly(io.BytesIO(f.read()), encoding="latin1").load()
    if isinstance(weights, np.ndarray) and weights.shape == ():  # np.save wraps the dict in a 0-d array
        weights = weights.item()
    if not isinstance(weights, dict) or set(weights) != {"pnet", "rnet", "onet"}:
        raise ValueError(f"{path}: expected the arrays of pnet, rnet and onet")
    return weights


class _Graph:
    """Builds one network layer by layer, taking its arrays in the order the weight file lists them."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._arrays: Iterator[np.ndarray] = iter(arrays)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.top = "image"

    def _weight(self, name: str, a: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(a, np.float32), name))
        return name

    def _add(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, name: str, source: str | None = None) -> _Graph:
        kernel, bias = next(self._arrays), next(self._arrays)  # kernel (w, h, in, out) -> (out, in, h, w)
        self.top = self._add("Conv", [source or self.top, self._weight(f"{name}.w", kernel.transpose(3, 2, 1, 0)),
                                      self._weight(f"{name}.b", bias)], name, kernel_shape=list(kernel.shape[1::-1]))
        return self

    def prelu(self, name: str, spatial: bool = True) -> _Graph:
        slope = next(self._arrays).reshape((-1, 1, 1) if spatial else (-1,))  # per channel
        self.top = self._add("PRelu", [self.top, self._weight(f"{name}.slope", slope)], name)
        return self

    def pool(self, name: str, size: int, stride: int) -> _Graph:
        self.top = self._add("MaxPool", [self.top], name, kernel_shape=[size, size], strides=[stride, stride],
                             ceil_mode=1)
        return self

    def caffe_flatten(self, name: str) -> _Graph:
        self.top = self._add("Flatten", [self._add("Transpose", [self.top], f"{name}.whc", perm=[0, 3, 2, 1])],
                             name, axis=1)
        return self

    def dense(self, name: str, source: str | None = None) -> _Graph:
        weight, bias = next(self._arrays), next(self._arrays)  # (in, out)
        self.top = self._add("Gemm", [source or self.top, self._weight(f"{name}.w", weight),
                                      self._weight(f"{name}.b", bias)], name)
        return self

    def face_probability(self, logits: str) -> str:
        return self._add("Softmax", [logits], "face", axis=1)

    def model(self, size: tuple[int | str, int | str], outputs: dict[str, list[int | str]]) -> bytes:
        if next(self._arrays, None) is not None:
            raise ValueError("the MTCNN weight file has more arrays than the network has weights")
        graph = helper.make_graph(
            self.nodes, "mtcnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, *size])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
            self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
        onnx.checker.check_model(model)
        return model.SerializeToString()


def pnet_model(arrays: Sequence[np.ndarray]) -> bytes:
    """Proposal net, fully convolutional (any image size): face probability [n, 2, h', w'] and box offsets
    [n, 4, h', w'] for each 12x12 window at stride 2."""
    g = _Graph(arrays).conv("conv1").prelu("prelu1").pool("pool1", 2, 2)
    features = g.conv("conv2").prelu("prelu2").conv("conv3").prelu("prelu3").top
    g.face_probability(g.conv("conv4_1", features).top)
    g.conv("conv4_2", features)
    return g.model(("h", "w"), {"face": ["n", 2, "y", "x"], "conv4_2": ["n", 4, "y", "x"]})


def rnet_model(arrays: Sequence[np.ndarray]) -> bytes:
    """Refinement net on 24x24 candidates: face probability [n, 2] and box offsets [n, 4]."""
    g = _Graph(arrays).conv("conv1").prelu("prelu1").pool("pool1", 3, 2).conv("conv2").prelu("prelu2")
    g.pool("pool2", 3, 2).conv("conv3").prelu("prelu3").caffe_flatten("flat")
    features = g.dense("dense4").prelu("prelu4", spatial=False).top
    g.face_probability(g.dense("dense5_1", features).top)
    g.dense("dense5_2", features)
    return g.model((24, 24), {"face": ["n", 2], "dense5_2": ["n", 4]})


def onet_model(arrays: Sequence[np.ndarray]) -> bytes:
    """Output net on 48x48 candidates: face probability [n, 2], box offsets [n, 4], five landmarks [n, 10]
    (x1..x5, y1..y5, relative to the box)."""
    g = _Graph(arrays).conv("conv1").prelu("prelu1").pool("pool1", 3, 2).conv("conv2").prelu("prelu2")
    g.pool("pool2", 3, 2).conv("conv3").prelu("prelu3").pool("pool3", 2, 2).conv("conv4").prelu("prelu4")
    features = g.caffe_flatten("flat").dense("dense5").prelu("prelu5", spatial=False).top
    g.face_probability(g.dense("dense6_1", features).top)
    g.dense("dense6_2", features)
    g.dense("dense6_3", features)
    return g.model((48, 48), {"face": ["n", 2], "dense6_2": ["n", 4], "dense6_3": ["n", 10]})


class Net:
    """One network in an onnxruntime session on one thread (the worker runs one video a core)."""

    def __init__(self, model: bytes) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """``images``: float32 [n, 3, h, w], normalised. The face probability comes first."""
        return self.session.run(self.outputs, {"image": images})  # type: ignore[return-value]


def load_nets(path: Path) -> tuple[Net, Net, Net]:
    """P-, R- and O-Net with the weights in ``path``."""
    w = read_weights(path)
    return Net(pnet_model(w["pnet"])), Net(rnet_model(w["rnet"])), Net(onet_model(w["onet"]))
