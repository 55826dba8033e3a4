"""The shape every analysis command shares: common arguments parsed once, runs opened once, one writer.

An analysis command reads like a recipe; only the middle step is its own::

    def build_parser() -> argparse.ArgumentParser:
        parser = analysis_parser("name", "What the command measures.")   # the common arguments
        parser.add_argument("--points", type=int, default=11, help="...")  # and its own
        return parser

    @cli_entry
    def main(argv: list[str] | None = None) -> int:
        cmd = Command.parse(build_parser(), argv)
        table = compute(cmd)                              # cmd.selected(), cmd.pool(), cmd.device, cmd.args
        cmd.write({"name.csv": table}, figures={"name.png": lambda path: plot(table, path)}, report=text)
        return 0

The common arguments (:func:`analysis.runs.add_common_args`) are the runs directory, the selectors
``--method/--seed/--run``, ``--out``, ``--device``, ``--data-dir``, ``--quiet`` and, for checkpoints of
other code, ``--model-factory/--dataset/--data-factory``. :class:`Command` opens the runs directory (or
manifest) once, however many of the selected runs and the pool the command asks for; :func:`write_outputs`
writes every CSV, text file and figure atomically and prints where.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from analysis.runs import Run, RunSource, add_common_args, output_dir, resolve_device, selectors
from sparse_training.errors import UserError
from sparse_training.io import atomic_write_csv, atomic_write_text

# A figure: draws into the path it is given (suffix replaced per format) and returns the files written.
Figure = Callable[[Path], list[Path]]


def analysis_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``python -m analysis.<name>`` with the common arguments (defaults shown in ``--help``)."""
    parser = bare_parser(name, description)
    add_common_args(parser)
    return parser


def bare_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``python -m analysis.<name>`` without arguments, for a command that reads no runs directory
    (it adds its own arguments and :func:`analysis.runs.add_output_args`)."""
    return argparse.ArgumentParser(prog=f"python -m analysis.{name}", description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def check_at_least(flag: str, value: float, minimum: float) -> None:
    """Refuse ``--flag`` below ``minimum``: a UserError ``--flag must be at least N, got V.``"""
    if value < minimum:
        raise UserError(f"{flag} must be at least {minimum}, got {value}.")


class Command:
    """One invocation of an analysis command: its parsed arguments, its runs (read once) and its writer."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.source = RunSource.from_args(args) if getattr(args, "runs", None) is not None else None

    @classmethod
    def parse(cls, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> Command:
        """Parse the command line once."""
        return cls(parser.parse_args(argv))

    def _source(self) -> RunSource:
        if self.source is None:
            raise TypeError("this command takes no runs directory.")
        return self.source

    def selected(self, **defaults) -> list[Run]:
        """The complete runs the selectors ``--method/--seed/--run`` pick (``defaults`` fill those not given)."""
        return self._source().select(**selectors(self.args, **defaults))

    def pool(self) -> list[Run]:
        """Every complete run of the directory, ignoring the selectors: where parents and solutions are found."""
        return self._source().pool()

    @cached_property
    def device(self) -> torch.device:
        """The device of ``--device`` ('auto' picks CUDA when there is one)."""
        return resolve_device(self.args.device)

    def write(self, files: Mapping[str, pd.DataFrame | str], figures: Mapping[str, Figure] | None = None,
              report: str | None = None) -> list[Path]:
        """Write the outputs into ``--out`` (default ``<runs>/_analysis``): see :func:`write_outputs`."""
        return write_outputs(output_dir(self.args), files, figures, report)


def write_outputs(out: Path, files: Mapping[str, pd.DataFrame | str], figures: Mapping[str, Figure] | None = None,
                  report: str | None = None) -> list[Path]:
    """Write each file atomically (a DataFrame as CSV without its index, a string as text), then each figure,
    in order; print ``report`` and a ``wrote PATH`` line per file written. Returns the paths written."""
    written = []
    for name, content in files.items():
        path = out / name
        if isinstance(content, pd.DataFrame):
            atomic_write_csv(path, content)
        else:
            atomic_write_text(path, content)
        written.append(path)
    for name, draw in (figures or {}).items():
        written += draw(out / name)
    if report is not None:
        print(report.rstrip("\n"))
    for path in written:
        print(f"wrote {path}")
    return written


def shown_path(path: str | Path) -> str:
    """How a report names a path the user gave: relative to the working directory (``../runs`` rather than
    ``/home/me/project/runs``), so that reports carry no machine's absolute paths; as given when it is
    relative already or lies on another drive."""
    import os

    text = str(path)
    if not os.path.isabs(text):
        return Path(text).as_posix()
    try:
        return Path(os.path.relpath(text)).as_posix()
    except ValueError:  # another drive (Windows)
        return text
