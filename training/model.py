"""The dual-branch audio-visual Transformer with safe cross-attention.

Shapes: B windows, T frames per window, D model width, C classes.
  face  uint8 [B, T, H, W, 3] -> a face reader (training/readers.py) -> evidence [B, T, C] (log-probabilities)
  evidence                    -> Linear        -> [B, T, D]   (masked frames -> a learned "missing" token)
  mel   f32   [B, T, M, N]    -> AudioEncoder  -> [B, T, D]   (same)
  each branch: temporal Transformer whose attention only reads present frames
  fusion "cross": bidirectional cross-attention (visual queries read present audio frames and vice versa)
  fusion "late":  no cross-attention, branches meet only in the head (the ablation baseline)
  head: per frame concat -> MLP -> C logits (+ the frame's evidence where it has a face: evidence_skip)

"Safe" attention: keys of absent frames get exactly zero weight; when every key in a window is absent
the attention output is zero, so the residual path keeps the attending branch's own features (it falls
back on itself) and everything stays finite, forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from emoframe.workers.spec.contract import NUM_CLASSES, PREPROCESSING, Preprocessing

MODALITIES = ("visual", "audio")


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 64
    heads: int = 4
    self_layers: int = 2  # temporal Transformer layers per branch
    cross_layers: int = 1  # bidirectional cross-attention layers (fusion="cross")
    dropout: float = 0.1
    fusion: str = "cross"  # "cross" or "late"
    # Add the face reader's evidence (log-probabilities) to the output logits on frames with a face: the network
    # then learns a correction to what the face shows. Off by default: trained on the synthetic set, the
    # corrections it learned carried the set's designed confusions (Anger/Disgust) onto real faces, and real
    # crying came out Disgust more often than without it (see the notes of issue 8).
    evidence_skip: bool = False
    modalities: tuple[str, ...] = MODALITIES
    preprocessing: Preprocessing = field(default_factory=lambda: PREPROCESSING)

    def __post_init__(self) -> None:
        if self.fusion not in ("cross", "late"):
            raise ValueError(f"fusion must be 'cross' or 'late', not {self.fusion!r}")
        if not self.modalities or set(self.modalities) - set(MODALITIES):
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, not {self.modalities}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["modalities"] = tuple(d["modalities"])
        d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        return cls(**d)


def safe_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int) -> Tensor:
    """Multi-head attention over present keys only. q [B,Tq,D], k/v [B,Tk,D], key_mask bool [B,Tk]."""
    b, tq, d = q.shape
    tk = k.shape[1]
    hd = d // heads
    q = q.view(b, tq, heads, hd).transpose(1, 2)
    k = k.view(b, tk, heads, hd).transpose(1, 2)
    v = v.view(b, tk, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)  # [B, h, Tq, Tk]
    keep = key_mask[:, None, None, :]
    # A finite fill instead of -inf: softmax of an all-masked row stays finite; the multiply then zeroes it.
    weights = torch.softmax(scores.masked_fill(~keep, -1e4), dim=-1) * keep.to(scores.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-6)
    return (weights @ v).transpose(1, 2).reshape(b, tq, d)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        out = self.out(safe_attention(self.q(x), self.k(ctx), self.v(ctx), ctx_mask, self.heads))
        # No present key in the window: contribute nothing at all (not even the projection's bias).
        return out * ctx_mask.any(dim=1).to(out.dtype)[:, None, None]


class Block(nn.Module):
    """Pre-norm attention + MLP. Self-attention when ctx is x; cross-attention otherwise."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_x, self.norm_ctx, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm_x(x), self.norm_ctx(ctx), ctx_mask))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class AudioEncoder(nn.Module):
    """Log-mel per frame [B,T,M,N] -> [B,T,D]. LayerNorm over the frame's spectrogram removes loudness."""

    def __init__(self, dim: int, p: Preprocessing):
        super().__init__()
        n_in = p.mel_frames * p.n_mels
        self.net = nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, 128), nn.GELU(), nn.Linear(128, dim))

    def forward(self, mel: Tensor) -> Tensor:
        b, t = mel.shape[:2]
        return self.net(mel.reshape(b, t, -1))


class Branch(nn.Module):
    """Embeddings of present frames (absent ones replaced by a learned token) + temporal self-attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.missing = nn.Parameter(torch.zeros(cfg.dim))
        self.pos = nn.Parameter(torch.randn(cfg.preprocessing.window, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.self_layers))

    def forward(self, emb: Tensor, mask: Tensor) -> Tensor:
        # torch.where, not a multiply: content of absent frames cannot reach the output (NaN/inf included).
        x = torch.where(mask[..., None], emb, self.missing.to(emb.dtype)) + self.pos[: emb.shape[1]]
        for blk in self.blocks:
            x = blk(x, x, mask)
        return x


class FusionModel(nn.Module):
    """Returns per-frame logits [B, T, C]."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.use_visual = "visual" in cfg.modalities
        self.use_audio = "audio" in cfg.modalities
        # The visual branch reads face-reader evidence (C log-probabilities), not pixels: see training/readers.py.
        self.visual_enc = nn.Linear(NUM_CLASSES, cfg.dim) if self.use_visual else None
        self.audio_enc = AudioEncoder(cfg.dim, cfg.preprocessing) if self.use_audio else None
        self.visual = Branch(cfg) if self.use_visual else None
        self.audio = Branch(cfg) if self.use_audio else None
        n_cross = cfg.cross_layers if (cfg.fusion == "cross" and self.use_visual and self.use_audio) else 0
        self.v_from_a = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(n_cross))
        self.a_from_v = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(n_cross))
        width = cfg.dim * len(cfg.modalities)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.dim), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.dim, NUM_CLASSES))

    def forward(self, evidence: Tensor, face_mask: Tensor, mel: Tensor, audio_mask: Tensor) -> Tensor:
        feats = []
        # The branches are None exactly when their use_* flag is off (TorchScript reads these lines: no asserts).
        v = self.visual(self.visual_enc(evidence), face_mask) if self.use_visual else None  # type: ignore[misc]
        a = self.audio(self.audio_enc(mel), audio_mask) if self.use_audio else None  # type: ignore[misc]
        if v is not None and a is not None:
            for v_blk, a_blk in zip(self.v_from_a, self.a_from_v):
                v, a = v_blk(v, a, audio_mask), a_blk(a, v, face_mask)
        if v is not None:
            feats.append(v)
        if a is not None:
            feats.append(a)
        logits = self.head(torch.cat(feats, dim=-1))
        if self.use_visual and self.cfg.evidence_skip:
            logits = logits + torch.where(face_mask[..., None], evidence, torch.zeros_like(evidence))
        return logits


class ExportWrapper(nn.Module):
    """What Triton serves: the contract's inputs -> per-frame probabilities. A face reader turns each frame's
    crop into evidence, the fusion model does the rest."""

    def __init__(self, reader: nn.Module, model: FusionModel):
        super().__init__()
        self.reader = reader
        self.model = model

    def forward(self, face: Tensor, face_mask: Tensor, mel: Tensor, audio_mask: Tensor) -> Tensor:
        b, t = face.shape[:2]
        evidence = self.reader(face.reshape(b * t, *face.shape[2:])).view(b, t, -1)
        return self.fuse(evidence, face_mask, mel, audio_mask)

    def fuse(self, evidence: Tensor, face_mask: Tensor, mel: Tensor, audio_mask: Tensor) -> Tensor:
        """Per-frame probabilities from the reader's evidence [B, T, C] and the other inputs."""
        return torch.softmax(self.model(evidence, face_mask, mel, audio_mask), dim=-1)


def load_backbone(model: FusionModel, path: Path) -> list[str]:
    """Load a pretrained audio encoder from a local file (a state_dict with audio_enc.* keys).

    Nothing is shipped or downloaded; this is for users who have their own. (The face side is a reader:
    training/readers.py.) Returns the keys loaded.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    wanted = {k: v for k, v in state.items() if k.split(".")[0] == "audio_enc"}
    bad = [k for k, v in wanted.items() if k not in own or own[k].shape != v.shape]
    if not wanted or bad:
        raise ValueError(f"{path}: no usable audio encoder weights (unknown or mis-shaped keys: {bad[:5]})")
    model.load_state_dict(wanted, strict=False)
    return sorted(wanted)
