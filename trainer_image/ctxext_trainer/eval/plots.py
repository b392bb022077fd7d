"""Pictures of an evaluation: a depth × length accuracy heatmap per retrieval task (the familiar
needle-in-a-haystack plot) and a loss-by-position / perplexity-by-length plot. Agg backend; PNG.

Heatmap layout (``grid[length][depth]`` = accuracy; green 1.0 … red 0.0, value in each cell)::

              128    256    512      ← context length (tokens)
    depth 0%  1.00   1.00   0.80
         50%  1.00   0.60   0.20
        100%  1.00   1.00   1.00
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _wrapped(title: str, fig_width_in: float, fontsize: float) -> str:
    """The title broken into lines that fit the figure's width (about 0.6 em per character)."""
    chars = max(12, int(fig_width_in * 72 / (0.6 * fontsize)))
    if len(title) <= chars:
        return title
    parts = title.split(": ")  # "job stage 2/2 (seqLen 1024): passkey accuracy" breaks after the colon first
    return "\n".join(textwrap.fill(p + (":" if i < len(parts) - 1 else ""), width=chars, break_long_words=False)
                     for i, p in enumerate(parts))


def heatmap_figure(grid: Mapping[int, Mapping[float, float]], *, title: str) -> Figure:
    """The depth × length heatmap of one task (the title wrapped to the figure's width, never clipped)."""
    lengths = sorted(grid)
    depths = sorted({d for row in grid.values() for d in row})
    values = [[grid[n].get(d, float("nan")) for n in lengths] for d in depths]
    width = max(4.5, 1.2 + 0.9 * len(lengths))
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.45 * len(depths)), dpi=100)
    im = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [_tokens(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth")
    ax.set_title(_wrapped(title, width * 0.7, 9), fontsize=9)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    return fig


def heatmap(grid: Mapping[int, Mapping[float, float]], *, title: str, path: Path) -> Path:
    """Write the depth × length heatmap of one task; returns ``path``."""
    return _save(heatmap_figure(grid, title=title), path)


def _is_prefix(rows: Sequence[Mapping[str, float]], longest: Sequence[Mapping[str, float]]) -> bool:
    """True when ``rows`` are the longest length's first buckets, loss for loss (causal loss at a position
    depends only on the tokens before it, so the same packed text gives the same curve)."""
    return len(rows) <= len(longest) and all(
        (r["from"], r["to"]) == (q["from"], q["to"]) and abs(r["loss"] - q["loss"]) <= 1e-6 * max(1.0, abs(q["loss"]))
        for r, q in zip(rows, longest, strict=False))


def loss_figure(position_loss: Mapping[int, Sequence[Mapping[str, float]]], perplexity: Mapping[int, float], *,
                original_length: int, title: str) -> Figure:
    """Loss by position bucket beside perplexity by length. One line per length, except lengths whose
    curve is the longest one's prefix (they would hide under it); a dashed line at L0."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    longest = position_loss[max(position_loss)] if position_loss else []
    hidden = []
    for length in sorted(position_loss):
        rows = position_loss[length]
        if length != max(position_loss) and _is_prefix(rows, longest):
            hidden.append(_tokens(length))
            continue
        left.plot([(r["from"] + r["to"]) / 2 for r in rows], [r["loss"] for r in rows], marker="o",
                  label=_tokens(length))
    left.axvline(original_length, color="grey", linestyle="--", label=f"L0 = {_tokens(original_length)}")
    left.set_xlabel("position (bucket centre)")
    left.set_ylabel("next-token loss")
    left.set_title("loss by position" + (f" ({', '.join(hidden)}: the same, shorter)" if hidden else ""),
                   fontsize=10)
    left.legend(fontsize=7)
    lengths = sorted(perplexity)
    right.plot(lengths, [perplexity[n] for n in lengths], marker="o")
    if len(lengths) > 1:
        right.set_xscale("log", base=2)
    right.set_xticks(lengths, [_tokens(n) for n in lengths])
    right.set_xlabel("context length (tokens)")
    right.set_ylabel("perplexity")
    right.set_title("perplexity by length")
    fig.suptitle(_wrapped(title, 10, 12))
    fig.tight_layout()
    return fig


def loss_plot(position_loss: Mapping[int, Sequence[Mapping[str, float]]], perplexity: Mapping[int, float], *,
              original_length: int, title: str, path: Path) -> Path:
    """Write :func:`loss_figure`; returns ``path``."""
    return _save(loss_figure(position_loss, perplexity, original_length=original_length, title=title), path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
