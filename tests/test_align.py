"""Tests of weight matching (landscape.align) and its CLI (analysis.align): permuted networks compute the same
function with the same per-layer sparsity, known permutations are recovered exactly, matching never moves B
away from A, other architectures are refused, and the CLI's barriers agree with analysis.interpolate."""
from __future__ import annotations

import copy
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import check_bad_input_exits_2
from torch import nn

from analysis import align, interpolate
from analysis.align import check_spec, spec_for
from landscape.align import (
    PermutationSpec,
    apply_permutation,
    chain_spec,
    invert_permutation,
    random_permutation,
    spec_error,
    weight_matching,
)
from landscape.params import ParamSpace, is_buffer_name
from sparse_training.errors import UserError
from sparse_training.models import build_model

RUN = "mlp-digits-s0.9-{}-seed{}"
PRUNE = RUN.format("prune", 0)

# name -> (registry name, options, input shape)
NETWORKS = {
    "lenet300": ("lenet300", {"width": 0.1}, (1, 28, 28)),
    "lenet5": ("lenet5", {}, (1, 28, 28)),
    "mlp-bn": ("mlp", {"batchnorm": True, "hidden": 16, "depth": 2}, (1, 8, 8)),
    "mlp-skip-srelu-bn": ("mlp", {"batchnorm": True, "skip": True, "activation": "srelu", "hidden": 12, "depth": 3},
                          (1, 8, 8)),
    "mlp-prelu": ("mlp", {"activation": "prelu", "hidden": 16, "depth": 2}, (1, 8, 8)),  # one slope shared by all
    "mnist1d-cnn": ("mnist1d-cnn", {"width": 0.4}, (40,)),
    "vgg16": ("vgg16", {"width": 0.125}, (3, 32, 32)),
    "resnet18": ("resnet18", {"width": 0.125}, (3, 32, 32)),
}


def _network(name: str, seed: int = 0, density: float = 0.5):
    """A registry model with random weights, BatchNorm statistics and per-unit activations, random masks
    on its weight matrices and kernels (weights zeroed off them), in eval mode, and a batch of inputs."""
    registry, options, shape = NETWORKS[name]
    torch.manual_seed(seed)
    model = build_model(registry, shape, 10, **options).eval()
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point() or key.endswith("weight") and t.dim() > 1:
                continue
            if key.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            else:  # biases, BatchNorm affine and statistics, SReLU thresholds and slopes: all distinct per unit
                t.add_(0.3 * torch.randn(t.shape, generator=gen))
        for key, p in model.named_parameters():
            if p.dim() > 1:
                masks[key] = torch.rand(p.shape, generator=gen) < density
                p.mul_(masks[key])
    x = torch.randn((8, *shape), generator=gen)
    return model, masks, x


def _params(state: dict) -> dict:
    """The parameters of a state_dict (no BatchNorm statistics): what weight matching compares."""
    return {k: v for k, v in state.items() if v.is_floating_point() and not is_buffer_name(k)}


def _load(model: nn.Module, state: dict) -> nn.Module:
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other.eval()


# --- a permuted network is the same network -------------------------------------------------------
@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_permuted_copy_computes_the_same_outputs_with_the_same_sparsity(name):
    model, masks, x = _network(name)
    spec = spec_for(model)
    state = model.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    perms = random_permutation(spec, state, seed=1)
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms.values() if len(p) > 2)
    new_state, new_masks = apply_permutation(spec, perms, state, masks)
    assert all(torch.equal(state[k], before[k]) for k in state)  # inputs untouched
    assert any(not torch.equal(new_state[k], state[k]) for k in state)
    with torch.no_grad():
        y, y_perm = model(x), _load(model, new_state)(x)
    assert torch.allclose(y_perm, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    assert {k: int(m.sum()) for k, m in new_masks.items()} == {k: int(m.sum()) for k, m in masks.items()}
    for k, m in new_masks.items():
        assert not new_state[k][~m].any(), k  # weights still zero off the (permuted) mask
    # and back: the inverse permutation restores every entry exactly
    restored, restored_masks = apply_permutation(spec, invert_permutation(perms), new_state, new_masks)
    assert all(torch.equal(restored[k], state[k]) for k in state)
    assert all(torch.equal(restored_masks[k], masks[k]) for k in masks)


@pytest.mark.parametrize("name,dropped", [
    ("resnet18", ("layers.1.conv2.", "layers.1.bn2.")),  # an identity block's output not tied to its stream
    ("mlp-bn", ("norms.0.",)),  # a BatchNorm left out of its layer's permutation
    ("mlp-skip-srelu-bn", ("acts.1.",)),  # per-unit activation parameters left out
])
def test_a_spec_that_misses_a_coupling_changes_the_outputs_and_is_refused(name, dropped):
    model, _, x = _network(name)
    spec = spec_for(model)
    assert spec_error(model, spec, x) < 1e-5
    broken = PermutationSpec({n: [e for e in entries if not e[0].startswith(dropped)]
                              for n, entries in spec.perms.items()})
    assert broken.keys != spec.keys
    assert spec_error(model, broken, x) > 1e-3  # a right spec: float rounding, about 1e-6
    with pytest.raises(UserError, match="misses a coupling"):
        check_spec(model, broken, x)


def test_skip_connections_share_one_permutation_and_input_streams_are_fixed():
    model, _, _ = _network("mlp-skip-srelu-bn")
    spec = spec_for(model)
    # layers 1 and 2 add to the stream layer 0 writes: one permutation for three layers
    assert spec.names == ("layers.0",)
    assert {k for k, axis, _ in spec.perms["layers.0"] if axis == 0} >= {"layers.0.weight", "layers.1.weight",
                                                                          "layers.2.weight", "acts.2.t_left"}
    # a first layer as wide as the input adds to the input itself: nothing there may be permuted
    torch.manual_seed(0)
    same = build_model("mlp", (12,), 10, skip=True, hidden=12, depth=2)
    assert spec_for(same).names == ()
    with pytest.raises(ValueError, match="acts on nothing|at least"):
        PermutationSpec({"p": []})


def test_flattened_feature_maps_are_permuted_in_blocks():
    model, _, _ = _network("lenet5")
    spec = spec_for(model)
    assert ("fc1.weight", 1, 16) in spec.perms["conv2"]  # 16 channels of 4x4 pixels feed fc1
    assert spec.names == ("conv1", "conv2", "fc1", "fc2")


# --- weight matching ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lenet5", "lenet300", "mlp-skip-srelu-bn", "mnist1d-cnn", "resnet18"])
def test_weight_matching_recovers_a_known_permutation_exactly(name):
    model, masks, _ = _network(name, density=0.3)
    spec = spec_for(model)
    a = model.state_dict()
    pi = random_permutation(spec, a, seed=7)
    b, b_masks = apply_permutation(spec, pi, a, masks)
    perms = weight_matching(spec, _params(a), _params(b), masks, b_masks, seed=3)
    inverse = invert_permutation(pi)
    assert all(torch.equal(perms[n], inverse[n]) for n in spec.names)
    aligned, aligned_masks = apply_permutation(spec, perms, b, b_masks)
    assert all(torch.equal(aligned[k], a[k]) for k in a)
    assert all(torch.equal(aligned_masks[k], masks[k]) for k in masks)


@pytest.mark.parametrize("name", ["lenet5", "mlp-skip-srelu-bn", "vgg16"])
def test_weight_matching_is_deterministic_and_never_moves_b_away(name):
    model_a, masks_a, x = _network(name, seed=0)
    model_b, masks_b, _ = _network(name, seed=1)
    spec = spec_for(model_a)
    a, b = model_a.state_dict(), model_b.state_dict()
    space = ParamSpace(a)
    for seed in (0, 1, 2):
        perms = weight_matching(spec, _params(a), _params(b), masks_a, masks_b, seed=seed)
        again = weight_matching(spec, _params(a), _params(b), masks_a, masks_b, seed=seed)
        assert all(torch.equal(perms[n], again[n]) for n in spec.names)
        aligned, aligned_masks = apply_permutation(spec, perms, b, masks_b)
        assert space.distance(a, aligned) < space.distance(a, b)  # independent networks: some units move
        assert sum(int(m.sum()) for m in aligned_masks.values()) == sum(int(m.sum()) for m in masks_b.values())
        with torch.no_grad():
            assert torch.allclose(_load(model_b, aligned)(x), model_b(x), rtol=1e-4, atol=1e-5)


def test_weight_matching_uses_the_masked_weights():
    model_a, masks_a, _ = _network("lenet300", seed=0)
    model_b, masks_b, _ = _network("lenet300", seed=1)
    spec = spec_for(model_a)
    a, b = _params(model_a.state_dict()), _params(model_b.state_dict())
    # weights hidden under the mask must not matter: fill B's masked-out entries with noise
    noisy = {k: (v + 5.0 * torch.randn(v.shape) * ~masks_b[k] if k in masks_b else v) for k, v in b.items()}
    plain = weight_matching(spec, a, b, masks_a, masks_b)
    assert all(torch.equal(plain[n], p) for n, p in weight_matching(spec, a, noisy, masks_a, masks_b).items())
    assert any(not torch.equal(plain[n], p) for n, p in weight_matching(spec, a, noisy).items())


# --- other architectures are refused --------------------------------------------------------------
def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".")


def test_tensors_of_another_architecture_are_refused_in_one_sentence():
    model, masks, _ = _network("lenet5")
    spec = spec_for(model)
    a = model.state_dict()
    torch.manual_seed(0)
    narrow = build_model("lenet5", width=0.5).state_dict()
    mlp = build_model("lenet300").state_dict()
    cases = [
        lambda: weight_matching(spec, _params(a), _params(narrow)),
        lambda: weight_matching(spec, _params(narrow), _params(narrow)),
        lambda: weight_matching(spec, _params(mlp), _params(mlp)),
        lambda: apply_permutation(spec, random_permutation(spec, a), narrow),
        lambda: apply_permutation(spec, random_permutation(spec, a), mlp),
        lambda: apply_permutation(spec, random_permutation(spec, a), a, {"fc1.weight": torch.ones(3, 3, dtype=bool)}),
        lambda: apply_permutation(spec, {"conv1": torch.zeros(6, dtype=torch.long)}, a),
        lambda: weight_matching(spec, _params(a), _params(a), max_iter=0),
        lambda: PermutationSpec({"p": [("w", 0)], "q": [("w", 0)]}),
        lambda: chain_spec(a, ["conv2", "fc2"]),  # conv2's 16 channels cannot feed fc2's 120 inputs
    ]
    for case in cases:
        with pytest.raises(ValueError) as exc:
            case()
        assert _one_sentence(str(exc.value)), str(exc.value)


def test_a_model_without_a_spec_is_a_user_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(UserError, match="--spec"):
        spec_for(Odd())
    with pytest.raises(UserError, match="--spec"):
        spec_for(nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2)))
    seq = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5),
                        nn.ReLU(), nn.Linear(5, 2)).eval()
    assert spec_error(seq, spec_for(seq), torch.randn(4, 1, 6, 6)) < 1e-5


def test_the_printed_means_leave_out_runs_that_did_not_train():
    rows = [{"run_id": f"scratch-{s}", "method": "scratch", "aligned": a, "loss_barrier": 1.0 + s + a,
             "error_barrier": 0.5, "l2": 3.0 - a, "did_not_train": s == 2} for s in range(3) for a in (False, True)]
    table = align.before_after(pd.DataFrame(rows)).iloc[0]
    assert table["n"] == 2
    assert (table["loss_barrier_unaligned"], table["loss_barrier_aligned"]) == (1.5, 2.5)
    assert align.before_after(pd.DataFrame(rows[4:])).empty


# --- the CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aligned_smoke(smoke_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("align")
    assert align.main([str(smoke_runs), "--out", str(out), "--quiet"]) == 0
    return out


def test_cli_writes_one_row_per_pair_and_alignment(aligned_smoke, smoke_runs):
    summary = pd.read_csv(aligned_smoke / "align.csv")
    curves = pd.read_csv(aligned_smoke / "align_curves.csv")
    assert list(summary.columns) == align.SUMMARY_COLUMNS and list(curves.columns) == align.CURVE_COLUMNS
    assert (aligned_smoke / "align.png").stat().st_size > 0
    expected = {RUN.format(m, s) for m in ("lottery", "scratch") for s in (0, 1)} | {RUN.format("prune", 1)}
    assert set(summary["run_id"]) == expected and len(summary) == 2 * len(expected)
    assert (summary["reference"] == PRUNE).all()
    assert len(curves) == len(summary) * 29
    for run_id, g in summary.groupby("run_id"):
        before, after = g[~g["aligned"]].iloc[0], g[g["aligned"]].iloc[0]
        assert after["l2"] <= before["l2"] + 1e-9, run_id
        # the lines share their endpoints (a permutation keeps the run's function); the path's support may change
        assert (after["run_loss"], after["reference_loss"]) == (before["run_loss"], before["reference_loss"])
        assert before["units_moved"] == 0
        assert after["union_active"] >= 0 and 0 < after["union_density"] <= 1
    moved = summary[summary["aligned"] & summary["method"].isin(["scratch", "prune"])]
    assert (moved["units_moved"] > 0).all()  # independent networks: their units are in other orders


def test_the_aligned_line_equals_a_direct_interpolation_to_the_permuted_run(smoke_runs):
    from analysis.align import align_checkpoints, parameter_entries
    from analysis.interpolate import alpha_grid, split_data
    from analysis.runs import Run
    from landscape.interpolate import interpolate as line

    ref, run = Run(smoke_runs / PRUNE), Run(smoke_runs / RUN.format("scratch", 1))
    a, b = ref.checkpoint("end"), run.checkpoint("end")
    model, alphas = ref.build(), alpha_grid()
    data = split_data(ref.dataset(), "train", 500)
    spec = spec_for(model)
    rows, curves = align_checkpoints(model, spec, a, b, data, alphas, seed=4)
    perms = weight_matching(spec, parameter_entries(a["model"]), parameter_entries(b["model"]), a["masks"],
                            b["masks"], seed=4)
    permuted, _ = apply_permutation(spec, perms, b["model"], b["masks"])
    direct = line(model, permuted, a["model"], data, alphas=alphas)
    got = curves[curves["aligned"]]
    inner = (alphas != 0) & (alphas != 1)
    assert np.array_equal(got["loss"].to_numpy()[inner], direct.loss[inner])
    # the endpoints come from the unaligned line: the same functions, up to float rounding
    assert got["loss"].to_numpy() == pytest.approx(direct.loss, rel=1e-5)
    assert got["error"].to_numpy() == pytest.approx(1 - direct.accuracy, abs=1e-12)
    assert rows.loc[rows["aligned"], "loss_barrier"].iloc[0] < rows.loc[~rows["aligned"], "loss_barrier"].iloc[0]


def test_recalibrated_batchnorm_lines_share_their_endpoints():
    from analysis.align import align_checkpoints, parameter_entries
    from analysis.interpolate import alpha_grid
    from landscape.interpolate import interpolate as line

    (model, masks_a, x), (other, masks_b, _) = _network("mlp-bn", 0), _network("mlp-bn", 1)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, *x.shape[1:], generator=gen)
    data = (x, torch.randint(0, 10, (300,), generator=gen))
    a, b = {"model": model.state_dict(), "masks": masks_a}, {"model": other.state_dict(), "masks": masks_b}
    alphas, spec = alpha_grid(8), spec_for(model)
    rows, curves = align_checkpoints(model, spec, a, b, data, alphas, recalibration_data=data)
    perms = weight_matching(spec, parameter_entries(a["model"]), parameter_entries(b["model"]), masks_a, masks_b)
    permuted, _ = apply_permutation(spec, perms, b["model"], masks_b)
    direct = line(model, permuted, a["model"], data, alphas=alphas, recalibrate_bn=True, recalibration_data=data)
    assert direct.recalibrated
    assert curves.loc[curves["aligned"], "loss"].to_numpy() == pytest.approx(direct.loss, rel=1e-5)


def test_cli_unaligned_barriers_equal_the_interpolation_barriers(aligned_smoke, smoke_runs, tmp_path):
    out = tmp_path / "interp"
    assert interpolate.main([str(smoke_runs), "--out", str(out), "--quiet", "--method", "scratch",
                             "--examples", "1000"]) == 0
    ends = pd.read_csv(out / "interpolation_summary.csv")
    ends = ends[ends["path"] == interpolate.END_PATH].set_index("run_id")
    summary = pd.read_csv(aligned_smoke / "align.csv")
    before = summary[~summary["aligned"] & (summary["method"] == "scratch")].set_index("run_id")
    assert len(before) == 2
    for run_id, row in before.iterrows():
        assert row["loss_barrier"] == pytest.approx(ends.loc[run_id, "barrier"], rel=1e-9, abs=1e-12)
        assert row["run_loss"] == pytest.approx(ends.loc[run_id, "loss_at_0"], rel=1e-9)


def test_cli_help_and_bad_input(capsys, tmp_path, smoke_copy):
    with pytest.raises(SystemExit) as exc:
        align.main(["--help"])
    assert exc.value.code == 0 and "weight matching" in capsys.readouterr().out
    for argv, words in (([str(tmp_path / "none")], "does not exist"),
                        ([str(smoke_copy), "--method", "dense"], "no selected run"),
                        ([str(smoke_copy), "--max-iter", "0"], "--max-iter"),
                        ([str(smoke_copy), "--examples", "0"], "--examples")):
        with pytest.raises(SystemExit) as exc:
            align.main(argv + ["--quiet"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and err.startswith("error: ") and words in err, err
    assert not (smoke_copy / "_analysis").exists()


def test_cli_refuses_runs_of_another_architecture(smoke_copy, tmp_path, capsys):
    check_bad_input_exits_2(align.main, "architectures", smoke_copy, tmp_path, capsys, "align.csv",
                            RUN.format("scratch", 1))


def test_cli_refuses_a_checkpoint_of_another_model(smoke_copy, capsys):
    path = smoke_copy / RUN.format("scratch", 1) / "checkpoints" / "end.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {k: torch.zeros(3, *v.shape[1:]) if k == "layers.1.weight" else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    with pytest.raises(SystemExit) as exc:
        align.main([str(smoke_copy), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "does not fit" in err and err.endswith(".")
    assert not (smoke_copy / "_analysis").exists()


USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    from landscape.align import PermutationSpec


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(64, 24)
            self.out = nn.Linear(24, 10)

        def forward(self, x):
            return self.out(torch.relu(self.hidden(torch.flatten(x, 1))))


    def build():
        return Net()


    def spec(model):
        return PermutationSpec.from_units(model.state_dict(), {"hidden": (["hidden"], ["out"])})


    def wrong(model):
        return PermutationSpec.from_units(model.state_dict(), {"hidden": (["hidden"], [])})
''')


def test_cli_reads_a_manifest_with_a_user_spec(tmp_path, monkeypatch, capsys):
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernet

    ck = tmp_path / "ckpts"
    ck.mkdir()
    rows = []
    for method, seed in (("prune", 0), ("prune", 1), ("scratch", 1)):
        torch.manual_seed(seed + 10 * (method == "scratch"))
        state = usernet.build().state_dict()
        keep = torch.zeros(24 * 64, dtype=torch.bool)
        keep[torch.randperm(24 * 64)[:460]] = True  # one sparsity for all: prune runs of a family share it
        masks = {"hidden.weight": keep.view(24, 64)}
        state["hidden.weight"] *= masks["hidden.weight"]
        torch.save({"model": state, "masks": masks}, ck / f"{method}{seed}.pt")
        rows.append({"file": f"{method}{seed}.pt", "method": method, "seed": seed, "point": "end",
                     "parent": "prune-seed0" if method == "scratch" else ""})
    pd.DataFrame(rows).to_csv(ck / "manifest.csv", index=False)
    common = [str(ck), "--model-factory", "usernet:build", "--dataset", "digits", "--quiet"]
    for extra, words in (([], "no permutation spec for Net"), (["--spec", "usernet:wrong"], "misses a coupling")):
        with pytest.raises(SystemExit) as exc:
            align.main(common + extra)
        assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (ck / "_analysis").exists()
    assert align.main(common + ["--spec", "usernet:spec", "--points", "5"]) == 0
    summary = pd.read_csv(ck / "_analysis" / "align.csv")
    assert sorted(set(summary["run_id"])) == ["prune-seed1", "scratch-seed1"]
    assert len(pd.read_csv(ck / "_analysis" / "align_curves.csv")) == 4 * 7  # 5 points + 0 and 1
    assert "wrote" in capsys.readouterr().out
    assert np.all(summary.groupby("run_id")["l2"].agg(lambda s: s.iloc[1] <= s.iloc[0]))
