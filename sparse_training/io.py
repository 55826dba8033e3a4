"""Atomic file writes and the one checkpoint reader (``weights_only=True``, never unpickled)."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then rename.

    A killed process leaves either the old file or the new one, never a torn one. ``mode`` sets the
    file's permissions (the temp file is created private, 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` a dict of tensors and plain values."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_csv(path: str | os.PathLike, frame) -> None:
    """Atomically write a pandas DataFrame as CSV without its index."""
    atomic_write_text(path, frame.to_csv(index=False))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or corrupt one is a :class:`UserError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON (corrupt or truncated file).") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing, corrupt or truncated file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for torn zip archives
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); delete it or rerun the run."
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"checkpoint {path} is not a checkpoint of this toolkit (no 'model' entry).")
    return ckpt
