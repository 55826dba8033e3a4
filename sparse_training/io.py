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
    file's permissions; by default those of a file opened for writing (0o666 less the umask, so
    collaborators can read a shared runs directory), not the temp file's private 0o600.
    """
    if mode is None:
        mode = 0o666 & ~_umask()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
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


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def load_weights_only(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)``; a missing, corrupt or truncated file is a UserError.

    ``mmap=True`` maps the tensors instead of reading them (cheap when only shapes are needed); files in
    torch's legacy (non-zip) format cannot be mapped and are read normally.
    """
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for torn zip archives
        if "weights only load failed" in str(exc).lower():
            raise UserError(f"checkpoint {path} holds objects that loading with weights_only=True refuses to "
                            "unpickle; save a state_dict (a dict of tensors) instead.") from None
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); delete it or rerun the run."
        ) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing, corrupt or truncated file is a UserError."""
    path = Path(path)
    ckpt = load_weights_only(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"checkpoint {path} is not a checkpoint of this toolkit (no 'model' entry).")
    return ckpt


def state_dict_of(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights held by a loaded file: its ``model`` or ``state_dict`` entry, or the dict itself.

    A file that is none of these (no dict of tensors) is a UserError naming ``path``.
    """
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    raise UserError(f"{path} holds no state_dict (a dict of tensors, or a dict with a 'model' or "
                    "'state_dict' entry that is one).")


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, torch.Tensor]:
    """Model weights from a checkpoint of this toolkit or of other code (``weights_only=True``).

    Accepts a toolkit checkpoint (its ``model``), a dict with a ``state_dict`` entry, or a plain
    state_dict; with ``mmap=True`` tensors are mapped, not read (for checking shapes).
    """
    path = Path(path)
    return state_dict_of(load_weights_only(path, map_location, mmap=mmap), path)
