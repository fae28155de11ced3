"""The eval figures as PNG bytes (made where the eval runs, logged by the driver)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def heatmaps(panels: list[tuple[str, np.ndarray, str, float, float]], lengths: list,
             depths: list[float], length_label: str) -> bytes:
    """One heatmap per (title, grid (len(depths), len(lengths)), colormap, low, high), side by
    side, as the Gemini 1.5 report draws needle recall: depth down, context length across."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False,
                             layout="constrained")
    for ax, (title, grid, cmap, low, high) in zip(axes[0], panels):
        image = ax.imshow(grid, cmap=cmap, aspect="auto", vmin=low, vmax=high)
        ax.set_xticks(range(len(lengths)), [str(x) for x in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel(length_label)
        ax.set_ylabel("needle depth")
        ax.set_title(title)
        for (row, col), value in np.ndenumerate(grid):
            ax.text(col, row, f"{value:.2g}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax)
    return _png(fig)


def nll_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> bytes:
    """Cumulative average NLL vs token position (log x), with the power-law fit where there is one:
    {label: (positions, nll, fitted or None)}."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (x, y, fitted) in curves.items():
        line, = ax.plot(x, y, "o", ms=3, label=label)
        if fitted is not None:
            ax.plot(x, fitted, "-", color=line.get_color(), lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("cumulative average NLL (nats)")
    ax.legend()
    return _png(fig)
