"""The report's PNG figures (matplotlib, Agg). Imported only by flows/analysis/report.py when a report is written,
so the CLI never pays for matplotlib at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the report is written by batch jobs and flows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from emoframe.workers.spec.contract import CLASSES  # noqa: E402

# One fixed colour per class, in CLASSES order, so a class looks the same on every page and every report.
CLASS_COLOURS: tuple[str, ...] = (
    "#9e9e9e",  # Neutral
    "#d62728",  # Anger
    "#6b8e23",  # Disgust
    "#8e44ad",  # Fear
    "#f5b800",  # Happiness
    "#1f77b4",  # Sadness
    "#17becf",  # Surprise
    "#8c564b",  # Other
)
NO_LABEL_COLOUR = "#ffffff"
DPI = 100


@dataclass
class Timeline:
    """One panel: a face track (or the face-less frames the audio labelled), binned on the video's time base."""

    title: str
    t: np.ndarray  # [B] start time of each bin (s)
    end_s: float  # end of the video's time axis (s)
    probs: np.ndarray  # [B, C] mean voted probabilities; NaN where this track had no evidence
    label: np.ndarray  # [B] most frequent label id in the bin; -1 without one
    face: np.ndarray  # [B] share of the bin's frames where this face is present (0..1)
    audio: np.ndarray  # [B] share of the bin's frames with sound (0..1)


STACK_ROWS = 200  # vertical resolution of the rasterised probability stack


def _rgb(colour: str) -> tuple[float, float, float]:
    return matplotlib.colors.to_rgb(colour)


PALETTE = np.array([_rgb(c) for c in (*CLASS_COLOURS, NO_LABEL_COLOUR)])  # index len(CLASSES): no label


def stack_image(probs: np.ndarray, rows: int = STACK_ROWS) -> np.ndarray:
    """The stacked probabilities as an RGB raster [rows, bins, 3], bottom row first: pixel (y, b) takes the
    colour of the class whose cumulative band holds height y. One image instead of eight filled polygons per
    panel: drawing time no longer grows with the number of time points. A bin without evidence is white."""
    cum = np.cumsum(np.nan_to_num(probs, nan=0.0), axis=1)  # [B, C]
    y = (np.arange(rows) + 0.5) / rows
    cls = (y[:, None, None] >= cum[None, :, :]).sum(axis=2)  # [rows, B]; C above the top of the stack
    cls[:, np.isnan(probs).all(axis=1)] = len(CLASSES)
    return PALETTE[cls]


# Where each part sits on the one axes of a timeline (y ranges): one axes, not four, halves the drawing time
# (tick machinery is most of matplotlib's cost here).
STACK_Y = (0.0, 1.0)
STRIPS_Y = {"label": (-0.13, -0.03), "face": (-0.23, -0.16), "sound": (-0.33, -0.26)}


def _image(ax: plt.Axes, image: np.ndarray, end_s: float, y: tuple[float, float]) -> None:
    ax.imshow(image, aspect="auto", interpolation="nearest", origin="lower", extent=(0, end_s, *y))


def _strip_name(ax: plt.Axes, name: str, y: tuple[float, float]) -> None:
    ax.text(-0.005, sum(y) / 2, name, transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=8)


def _band(ax: plt.Axes, values: np.ndarray, end_s: float, colour: str, name: str) -> None:
    """Share of each bin's frames (0..1) as the colour's intensity over white."""
    rgb = np.array(_rgb(colour))
    y = STRIPS_Y[name]
    _image(ax, (1 - values[None, :, None]) + values[None, :, None] * rgb, end_s, y)
    _strip_name(ax, name, y)
    if not values.any():  # an empty band would read as a drawing glitch
        ax.text(end_s / 2, sum(y) / 2, f"no {name} in this span", ha="center", va="center", fontsize=7, color="#555")


def _columns(tl: Timeline, values: np.ndarray) -> np.ndarray:
    """Per-bin values spread over a uniform time grid, so bins of a variable-frame-rate video keep their
    true start times in the image."""
    if len(tl.t) < 2:
        return values
    grid = np.linspace(0, tl.end_s, max(len(tl.t), 2), endpoint=False)
    idx = np.clip(np.searchsorted(tl.t, grid, side="right") - 1, 0, len(tl.t) - 1)
    return values[idx]


def timeline_png(tl: Timeline, path: Path) -> None:
    """Stacked voted probabilities over time, the label as a colour strip, and face / sound bands beneath."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    ax.set_facecolor("#d9d9d9")  # the gaps between strips: white inside a strip then reads as "none", not as a gap
    end = tl.end_s if len(tl.t) else 1.0
    _image(ax, stack_image(_columns(tl, tl.probs)), end, STACK_Y)
    label = _columns(tl, np.where(tl.label < 0, len(CLASSES), tl.label))
    _image(ax, PALETTE[label][None, :, :], end, STRIPS_Y["label"])
    _strip_name(ax, "label", STRIPS_Y["label"])
    _band(ax, _columns(tl, tl.face), end, "#2ca02c", "face")
    _band(ax, _columns(tl, tl.audio), end, "#7f7f7f", "sound")
    ax.set_xlim(0, end)
    ax.set_ylim(STRIPS_Y["sound"][0] - 0.01, STACK_Y[1])
    ax.set_yticks([0, 0.5, 1])
    ax.set_ylabel("voted probability", fontsize=8, y=0.62)
    ax.set_xlabel("time (s)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(tl.title, fontsize=10, loc="left")
    ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(CLASS_COLOURS, CLASSES)], ncol=len(CLASSES),
              fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.08), frameon=False, handlelength=1, columnspacing=1)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.80, bottom=0.13)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def class_mix_png(mix: dict[str, dict[str, float]], path: Path) -> None:
    """Horizontal bars: share of labelled rows per class, one bar per model version."""
    versions = sorted(mix)
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(CLASSES) * max(1, len(versions)) + 0.9))
    height = 0.8 / max(1, len(versions))
    y = np.arange(len(CLASSES))
    for j, v in enumerate(versions):
        shares = [100 * mix[v].get(c, 0.0) for c in CLASSES]
        bars = ax.barh(y + j * height, shares, height, color=CLASS_COLOURS, edgecolor="black" if j else None,
                       hatch="//" if j % 2 else None, label=f"model_version {v}")
        ax.bar_label(bars, labels=[f"{x:.1f}%" if x else "" for x in shares], fontsize=7, padding=2)
    ax.set_yticks(y + height * (len(versions) - 1) / 2, CLASSES, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of labelled rows (%)", fontsize=8)
    ax.set_xlim(0, max(10.0, 1.15 * max((100 * s for m in mix.values() for s in m.values()), default=0)))
    ax.tick_params(labelsize=7)
    if len(versions) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
