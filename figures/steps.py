"""An analysis step of the report pipeline: which CLI to run, the files it leaves, and its arguments.

``figures.paper`` (the paper's analyses) and ``figures.beyond`` (those beyond the paper) both describe
their analyses as :class:`Step` objects; this module holds the type so neither imports the other for it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def always_current(analysis_dir: Path) -> bool:
    """The default freshness check: outputs that exist (and are newer than the runs) are current."""
    return True


@dataclass(frozen=True)
class Step:
    """An analysis: its module (``analysis.<name>``), the files it must leave (relative to the analysis
    directory), its arguments (``None``: nothing to run in this setting), and a check that they are current."""

    name: str
    outputs: tuple[str, ...]
    argv: Callable[[Path, Path, argparse.Namespace], list[str] | None]
    current: Callable[[Path], bool] = always_current
