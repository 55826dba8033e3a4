"""figures.beyond: the sentences of REPORT's Beyond-the-paper section follow the data they are computed from."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from figures import beyond


def _plane(ridge_at: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A grid whose loss is low except for a ridge across the plane at alpha = ridge_at (height 2)."""
    alphas, betas = np.round(np.linspace(-0.2, 1.2, 15), 10), np.round(np.linspace(-0.2, 0.6, 9), 10)
    a, b = np.meshgrid(alphas, betas)
    loss = 0.1 + 2.0 * np.exp(-((a - ridge_at) ** 2) / 0.005)
    grid = pd.DataFrame({"alpha": a.ravel(), "beta": b.ravel(), "loss": loss.ravel()})
    points = pd.DataFrame({"kind": "anchor", "role": ["a", "b", "c"], "method": ["lottery", "scratch", "prune"],
                           "alpha": [0.0, 1.0, 0.0], "beta": [0.0, 0.0, 0.4]})
    return grid, points


def test_plane_sentence_finds_the_basins_on_the_grid():
    text = beyond.plane_sentence(*_plane(0.5))
    assert "lottery (a) and prune (c) lie in one basin" in text
    assert "scratch (b)" in text and "scratch (b) and" not in text
    heights = dict(zip(["ac", "ab", "bc"], map(float, re.findall(r"\) (\d+\.\d+)", text))))
    assert heights["ab"] == pytest.approx(2.0, abs=1e-3) and heights["ac"] < 1e-3
    # with the ridge outside every segment, all three share the basin
    flat = beyond.plane_sentence(*_plane(1.6))
    assert "lottery (a) and prune (c), lottery (a) and scratch (b), scratch (b) and prune (c) lie in one basin" in flat


def test_curve_sentence_reports_the_means_and_the_verdict():
    summary = pd.DataFrame({"method": ["scratch", "rigl"], "line_barrier": [2.0, 1.0], "curve_barrier": [0.2, 0.01],
                            "line_barrier_frankle": [2.1, 1.1], "curve_barrier_frankle": [0.25, 0.02]})
    text = beyond.curve_sentence(summary)
    assert "from 1.500 nats" in text and "to 0.105" in text and "median ratio 0.06" in text
    assert "highest remaining 0.200, scratch" in text and "a small barrier remains" in text
    low = summary.assign(curve_barrier=[0.01, 0.02])
    assert "joined by a curved low-loss path" in beyond.curve_sentence(low)


def test_stability_sentence_finds_the_first_stable_step():
    rows = []
    for family, barriers in (("lottery ticket", [0.10, 0.05, 0.01, 0.0]), ("dense", [0.3, 0.2, 0.1, 0.05])):
        for k, e in zip((0, 50, 100, 500), barriers):
            rows.append({"family": family, "rewind": k, "error_barrier": e, "loss_barrier": e, "mean_acc": 0.9})
    text = beyond.stability_sentence(pd.DataFrame(rows))
    assert "lottery ticket: error barrier 10.00 pp at k = 0, 0.00 pp at k = 500 (stable from k = 100" in text
    assert "dense: error barrier 30.00 pp at k = 0, 5.00 pp at k = 500 (unstable at every measured k" in text
    assert "1 pair(s)" in text


def test_layers_sentence_says_where_negative_curvature_lives():
    def layers(bottom: float) -> pd.DataFrame:
        rows = []
        for phase in ("pre", "post"):
            for layer, top in (("fc1", 2.0), ("fc2", 5.0)):
                rows += [{"run_id": "r", "step": 100, "phase": phase, "layer": layer, "kind": "top", "index": 0,
                          "eigenvalue": top * (1.5 if phase == "post" and layer == "fc1" else 1.0)},
                         {"run_id": "r", "step": 100, "phase": phase, "layer": layer, "kind": "bottom", "index": 0,
                          "eigenvalue": bottom if layer == "fc2" else 1e-6}]
        return pd.DataFrame(rows)

    updates = pd.DataFrame({"layer": ["fc1", "fc2"], "top_pre": [2.0, 5.0], "top_post": [3.0, 5.0]})
    full = pd.DataFrame({"min_post": [-0.5, -0.2]})
    text = beyond.layers_sentence(layers(1e-7), updates, full)
    assert "no layer shows negative curvature within its own weights" in text
    assert "4 of 4 smallest-eigenvalue estimates" in text
    assert "down to -0.5" in text and "couple layers" in text and "fc1 (×1.50" in text
    neg = beyond.layers_sentence(layers(-0.3), updates, full)
    assert "-0.3 (fc2" in neg and "carries negative curvature of its own" in neg


def test_markdown_says_what_is_missing(tmp_path):
    grid, points = _plane(0.5)
    grid["accuracy"] = 0.5
    grid.to_csv(tmp_path / "plane.csv", index=False)
    points.to_csv(tmp_path / "plane_points.csv", index=False)
    (tmp_path / "plane.png").write_bytes(b"png")
    figs = tmp_path / "figs"
    figs.mkdir()
    text = beyond.markdown(tmp_path, figs)
    assert text.startswith("## Beyond the paper")
    assert "lie in one basin" in text and "![plane](beyond_plane.png)" in text
    assert (figs / "beyond_plane.png").read_bytes() == b"png"
    assert text.count("Not computed") == 3
