"""Run directories: the one place that validates run ids, names checkpoints and reads/writes run state."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError
from .io import atomic_write_csv, atomic_write_json, load_checkpoint, read_json

RUN_ID_RE = re.compile(r"^[a-z0-9._+-]+$")
STEP_RE = re.compile(r"^step_(\d{6,})(_pre|_post)?\.pt$")
STATES = ("running", "complete", "failed")


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is made of ``[a-z0-9._+-]`` only (and is not '.'/'..'), else raise."""
    if not RUN_ID_RE.match(run_id or "") or run_id in (".", "..") or run_id.startswith("_"):
        raise UserError(
            f"run id '{run_id}' is not allowed; use only lowercase letters, digits and . _ + - (not starting with _)."
        )
    return run_id


def checkpoint_name(step: int, phase: str = "") -> str:
    """File name of the checkpoint at ``step``; ``phase`` is '', 'pre' or 'post' (around a mask update)."""
    suffix = f"_{phase}" if phase else ""
    return f"step_{step:06d}{suffix}.pt"


class RunDir:
    """A run directory: ``config.json``, ``status.json``, ``metrics.csv`` and ``checkpoints/``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    def exists(self) -> bool:
        return self.config_path.is_file()

    # --- state ---------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.json).")
        return read_json(self.config_path)

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, config)

    def read_status(self) -> dict[str, Any]:
        if not self.status_path.is_file():
            return {"state": "missing", "reason": "no status.json", "step": 0}
        try:
            return read_json(self.status_path)
        except UserError as exc:
            return {"state": "failed", "reason": str(exc), "step": 0}

    def write_status(self, state: str, step: int, reason: str | None = None, **extra: Any) -> None:
        assert state in STATES, state
        atomic_write_json(self.status_path, {"state": state, "reason": reason, "step": int(step), **extra})

    def is_complete(self) -> bool:
        return self.read_status().get("state") == "complete" and (self.ckpt_dir / "end.pt").is_file()

    def read_metrics(self) -> pd.DataFrame:
        if not self.metrics_path.is_file():
            return pd.DataFrame()
        return pd.read_csv(self.metrics_path)

    def write_metrics(self, frame: pd.DataFrame) -> None:
        atomic_write_csv(self.metrics_path, frame)

    # --- checkpoints ---------------------------------------------------------------
    def checkpoint_path(self, which: str | int, phase: str = "") -> Path:
        """Path of ``'start'``, ``'end'`` or a step's checkpoint (``phase`` '', 'pre', 'post')."""
        if which in ("start", "end"):
            return self.ckpt_dir / f"{which}.pt"
        return self.ckpt_dir / checkpoint_name(int(which), phase)

    def load(self, which: str | int, phase: str = "", map_location: str = "cpu") -> dict:
        """Load a checkpoint of this run with ``weights_only=True``."""
        return load_checkpoint(self.checkpoint_path(which, phase), map_location)

    def step_checkpoints(self, phase: str | None = "") -> list[tuple[int, Path]]:
        """Sorted ``(step, path)`` of step checkpoints; ``phase=None`` lists all phases."""
        out = []
        if self.ckpt_dir.is_dir():
            for p in self.ckpt_dir.iterdir():
                m = STEP_RE.match(p.name)
                if m and (phase is None or (m.group(2) or "") == (f"_{phase}" if phase else "")):
                    out.append((int(m.group(1)), p))
        return sorted(out)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
