"""Plot helpers shared by the analysis CLIs: one style, atomic PNG writes."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sparse_training.io import atomic_write_bytes  # noqa: E402

# One colour per method, used by every plot so a method looks the same everywhere.
METHOD_COLORS = {
    "dense": "#222222", "small-dense": "#7f7f7f", "prune": "#d62728", "lottery": "#1f77b4",
    "scratch": "#ff7f0e", "scratch+": "#2ca02c", "rigl": "#9467bd", "rigl+": "#8c564b", "set": "#e377c2",
    "pruning solutions": "#d62728",
}
# The order methods appear in, in every table, legend and axis (sparse families first, dense baselines last).
METHOD_ORDER = ("prune", "lottery", "scratch", "scratch+", "rigl", "rigl+", "set", "dense", "small-dense")
STYLE = {"figure.dpi": 110, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "font.size": 10, "legend.fontsize": 8,
         "legend.frameon": False}


def method_color(method: str) -> str:
    """The colour of a method (grey for unknown ones)."""
    return METHOD_COLORS.get(method, "#17becf")


def method_rank(method: str) -> int:
    """Position of a method in METHOD_ORDER (unknown methods after all known ones)."""
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def order_methods(methods) -> list[str]:
    """The distinct methods of ``methods`` in METHOD_ORDER (unknown ones last, alphabetically)."""
    return sorted(set(methods), key=lambda m: (method_rank(m), m))


def new_figure(*args, **kwargs):
    """``plt.subplots`` under the shared style."""
    with plt.rc_context(STYLE):
        return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write ``fig`` atomically as each format (path's suffix is replaced); closes the figure."""
    path = Path(path)
    written = []
    with plt.rc_context(STYLE):
        fig.tight_layout()
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, bbox_inches="tight")
            target = path.with_suffix("." + fmt)
            atomic_write_bytes(target, buf.getvalue())
            written.append(target)
    plt.close(fig)
    return written
