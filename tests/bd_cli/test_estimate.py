"""The grid's cost model: its arithmetic on rows with known times, and `bd grid --estimate` on a
real store."""

from __future__ import annotations

import json

import pytest
from bd_cli.app import app
from bd_cli.runner import ExperimentSpec
from bd_cli.runner.estimate import CostModel, calibration_units, duration
from bd_core.attacked import AttackSpec
from bd_core.store import ResultStore
from typer.testing import CliRunner

H100 = "cuda: NVIDIA H100 80GB HBM3"


def row(defense, arch, spc, seconds, device=None, evaluate=0.0, preset="paper", status="ok"):
    details = {"evaluate_seconds": evaluate, **({"device": device} if device else {})}
    return {
        "status": status,
        "defense": defense,
        "arch": arch,
        "preset": preset,
        "spc": spc,
        "defense_seconds": seconds,
        "details": details,
    }


def unit(defense, arch="preact-resnet18", spc=10, partition=0):
    return ExperimentSpec(AttackSpec("synthetic", arch, "badnets", preset="paper"), defense, spc, partition)


def test_measured_times_are_medians_of_defense_plus_evaluation():
    model = CostModel(
        [row("ft", "preact-resnet18", 10, s, H100, evaluate=1.0) for s in (10.0, 12.0, 50.0)]
        + [row("ft", "preact-resnet18", 10, 999.0, H100, status="failed")]
    )
    timing = model.unit(H100, "ft", "preact-resnet18", "paper", 10)
    assert (timing.seconds, timing.source) == (13.0, "measured")  # median 12 + 1 s of evaluation
    assert model.unit("cpu", "ft", "preact-resnet18", "paper", 10).source == "unknown"  # other device
    assert model.unit(H100, "ft", "preact-resnet18", "quick", 10).source == "unknown"  # other preset


def test_other_spcs_scale_linearly():
    one = CostModel([row("ft", "preact-resnet18", 10, 20.0, H100)])
    assert one.unit(H100, "ft", "preact-resnet18", "paper", 100).seconds == pytest.approx(200.0)  # proportional
    two = CostModel([row("ft", "preact-resnet18", 10, 20.0, H100), row("ft", "preact-resnet18", 100, 110.0, H100)])
    timing = two.unit(H100, "ft", "preact-resnet18", "paper", 2)  # slope 1 s per image per class
    assert (timing.seconds, timing.source) == (pytest.approx(12.0), "scaled (spc)")
    assert two.unit(H100, "ft", "preact-resnet18", "paper", 55).seconds == pytest.approx(65.0)


def test_another_arch_scales_by_the_median_ratio_between_archs():
    rows = [
        row("ft", "preact-resnet18", 10, 10.0, H100),
        row("ft", "vgg19-bn", 10, 30.0, H100),
        row("clp", "preact-resnet18", 10, 2.0, H100),
        row("clp", "vgg19-bn", 10, 4.0, H100),
        row("fp", "preact-resnet18", 10, 8.0, H100),
        row("fp", "vgg19-bn", 10, 24.0, H100),
        row("anp", "preact-resnet18", 10, 100.0, H100),
    ]
    timing = CostModel(rows).unit(H100, "anp", "vgg19-bn", "paper", 10)
    assert timing.seconds == pytest.approx(300.0)  # ratios 3, 2, 3: median 3
    assert timing.source == "scaled (arch)" and timing.how == "preact-resnet18 x3"


def test_another_device_scales_by_the_median_ratio_between_devices():
    cpu = [row(d, "preact-resnet18", 10, s, "cpu") for d, s in (("ft", 100.0), ("clp", 10.0), ("anp", 400.0))]
    gpu = [row("ft", "preact-resnet18", 10, 5.0, H100), row("clp", "preact-resnet18", 10, 1.0, H100)]
    model = CostModel(cpu + gpu)
    timing = model.unit(H100, "anp", "preact-resnet18", "paper", 10)
    assert timing.seconds == pytest.approx(400.0 * 0.075)  # ratios 0.05 and 0.1: median 0.075
    assert (timing.source, timing.how) == ("scaled (device)", "cpu x0.075")
    assert model.unit(H100, "ft", "preact-resnet18", "paper", 10).source == "measured"  # its own rows first


def test_projection_sums_units_and_trainings_and_divides_by_devices():
    rows = [row("ft", "preact-resnet18", 10, 100.0, H100), row("clp", "preact-resnet18", 10, 20.0, H100)]
    trainings = [
        {
            "arch": "preact-resnet18",
            "attack": {"dataset": "synthetic", "preset": "paper"},
            "training": {"train_seconds": 360.0, "device": H100},
        }
    ]
    model = CostModel(rows, trainings)
    units = [unit("ft", partition=p) for p in range(3)] + [unit("clp"), unit("nad")]
    projection = model.project(units, [units[0].attack], H100)
    assert projection.unit_seconds == pytest.approx(320.0) and projection.attack_seconds == 360.0
    assert dict(projection.units) == {"measured": 4, "unknown": 1}
    assert projection.unknown == ["nad/preact-resnet18/paper"]
    assert projection.wall_seconds(8) == pytest.approx(85.0)
    assert calibration_units(units, model, H100) == [units[4]]  # one unit per defense with no time
    assert [duration(s) for s in (59, 600, 36_000, 400_000)] == ["59 s", "10 min", "10.0 h", "4.6 days"]


def test_grid_estimate_reads_a_store_and_projects(tmp_path, monkeypatch):
    monkeypatch.setenv("BD_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "times.sqlite"
    with ResultStore(store) as results:
        for i, (defense, seconds) in enumerate([("ft", 30.0), ("ft", 30.0), ("clp", 6.0)]):
            spec = unit(defense, partition=i)
            results.put(
                {
                    **spec.columns(),
                    "key": f"k{i}",
                    "status": "ok",
                    "defense_seconds": seconds,
                    "details": {"device": H100, "evaluate_seconds": 0.0},
                    "config": spec.config(),
                }
            )
    args = [
        "grid",
        "--dataset",
        "synthetic",
        "--defense",
        "ft,clp,nad",
        "--spc",
        "10,100",
        "--partitions",
        "10",
        "--preset",
        "paper",
        "--store",
        str(store),
        "--estimate",
        "--gpus",
        "4",
        "--device",
        "cpu",
    ]
    done = CliRunner().invoke(app, [*args, "--format", "json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["units"] == 60 and summary["to_run"] == 60 and summary["attack_trainings"] == 1
    gpu = next(p for p in summary["projections"] if p["device"] == H100)
    # ft: 10 units measured at spc 10 (30 s) + 10 at spc 100 scaled (300 s); clp: 60 s + 600 s; nad unknown
    assert gpu["units_by_source"] == {"measured": 20, "scaled (spc)": 20, "unknown": 20}
    assert gpu["unit_seconds"] == pytest.approx(10 * 30 + 10 * 300 + 10 * 6 + 10 * 60)
    assert gpu["wall_seconds"] == pytest.approx(gpu["total_seconds"] / 4) and gpu["devices"] == 4
    here = next(p for p in summary["projections"] if p["this_machine"])
    assert here["device"] == "cpu" and here["units_by_source"] == {"unknown": 60}
    table = CliRunner().invoke(app, args)
    assert "--calibrate" in table.stdout and "nad/preact-resnet18/paper" in table.stdout
