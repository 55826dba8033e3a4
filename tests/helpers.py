"""Small test problems shared by several test modules."""
from __future__ import annotations

import torch
from torch import nn


def masked_mlp(seed: int = 0):
    """A 10-16-8-3 tanh MLP with 50% random masks (weights zeroed off-mask) and 200 points."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    masks = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in model.named_parameters() if p.dim() > 1}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    x = torch.randn(200, 10, generator=gen)
    y = torch.randint(0, 3, (200,), generator=gen)
    return model, masks, (x, y)


def add_other_architecture_run(runs, source: str) -> None:
    """Copy run ``source`` under ``runs`` as seed 9 with a different configured architecture (hidden 16)."""
    import json
    import shutil

    src = runs / source
    dst = runs / (source.rsplit("-seed", 1)[0] + "-seed9")
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(hidden=16, seed=9, run_id=dst.name)
    (dst / "config.json").write_text(json.dumps(cfg))


def empty_or_unrelated_runs(case: str, tmp_path):
    """A fresh runs directory for the bad-input cases 'empty' (nothing in it) and 'unrelated' (only a
    folder of notes, no runs)."""
    runs = tmp_path / case
    runs.mkdir()
    if case == "unrelated":
        (runs / "notes").mkdir()
        (runs / "notes" / "a.txt").write_text("hello")
    return runs


def check_bad_input_exits_2(main, case: str, smoke_copy, tmp_path, capsys, output: str, source: str) -> None:
    """An analysis CLI on bad input ('empty', 'unrelated', 'no-match', 'architectures') exits with code 2,
    prints one 'error: ...' sentence, and leaves an existing ``_analysis/<output>`` untouched."""
    import pytest

    runs = empty_or_unrelated_runs(case, tmp_path) if case in ("empty", "unrelated") else smoke_copy
    if case == "architectures":
        add_other_architecture_run(runs, source)
    existing = runs / "_analysis" / output
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("old\n")
    argv = [str(runs), "--quiet"] + (["--method", "nonexistent"] if case == "no-match" else [])
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and err.endswith(".")
    assert existing.read_text() == "old\n"
    assert sorted(p.name for p in existing.parent.iterdir()) == [output]
