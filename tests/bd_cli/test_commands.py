"""`bd attack`, `bd defend`, `bd report` and `bd grid --dry-run` through Typer's runner, and
`bd run --defense clp --arch vgg19` as the user types it."""

from __future__ import annotations

import json
import re

import pytest
from bd_cli.app import app
from typer.testing import CliRunner

runner = CliRunner()


def bd(*args: str):
    return runner.invoke(app, list(args))


def json_of(result) -> dict:
    return json.loads(result.stdout[result.stdout.index("{") :])


@pytest.mark.parametrize("command", ["run", "attack", "defend", "grid", "report", "list", "show"])
def test_every_command_has_help_with_an_example(command):
    result = bd(command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_flags_show_no_type_and_a_typer_without_the_hook_still_works(monkeypatch):
    """bd hides Typer's `<bool>` beside flags through TyperOption.display_type_rich; a Typer
    without that hook (the GPU machine's, 2026-12-04) must leave the help as it is, not fail."""
    from bd_cli import app as app_module
    from typer.core import TyperOption

    flag_line = next(line for line in bd("defend", "--help").output.splitlines() if "--tune" in line)
    assert "<bool>" not in flag_line
    monkeypatch.delattr(TyperOption, "display_type_rich")
    app_module._no_type_for_flags()  # raised AttributeError before
    assert bd("defend", "--help").exit_code == 0


def test_merge_brings_rows_of_a_grid_run_elsewhere_into_the_store(tmp_path):
    from bd_core.store import ResultStore

    for name, keys in (("here", ["a"]), ("gpu", ["a", "b", "c"])):
        with ResultStore(tmp_path / f"{name}.sqlite") as store:
            for key in keys:
                store.put({"key": key, "status": "ok", "defense": "ft", "acc_post": 0.5})
    result = bd("merge", str(tmp_path / "gpu.sqlite"), "--into", str(tmp_path / "here.sqlite"), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json_of(result)["sources"][str(tmp_path / "gpu.sqlite")] == {"added": 2, "kept": 1}
    assert json_of(result)["rows"] == 3
    missing = bd("merge", str(tmp_path / "none.sqlite"), "--into", str(tmp_path / "here.sqlite"))
    assert missing.exit_code == 2 and "no results file at" in missing.output


def test_run_clp_on_vgg19(tmp_path):
    result = bd(
        "run",
        "--defense",
        "clp",
        "--arch",
        "vgg19",
        "--dataset",
        "synthetic",
        "--device",
        "cpu",
        "--store",
        str(tmp_path / "r.sqlite"),
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    record = json_of(result)
    assert record["defense"] == "clp" and record["arch"] == "vgg19-bn" and record["details"]["defense"]["data_free"]
    assert re.fullmatch(r"[0-9a-f]{16}", record["details"]["attacked_model_weights"])
    assert record["details"]["device"] == "cpu"  # where the numbers were computed


def test_run_tuned_and_refusal_on_vit(tmp_path):
    store = str(tmp_path / "r.sqlite")
    tuned = bd(
        "run",
        "--defense",
        "clp",
        "--tune",
        "--dataset",
        "synthetic",
        "--device",
        "cpu",
        "--store",
        store,
        "--format",
        "json",
    )
    assert tuned.exit_code == 0, tuned.output
    record = json_of(tuned)
    assert record["defense"] == "clp/tuned" and record["details"]["defense"]["tuning"]["chosen"] in (
        {"u": 4.0},
        {"u": 3.0},
        {"u": 2.0},
    )
    # refused before any model is trained: one line naming the layer type the ViT lacks
    refused = bd("run", "--defense", "bnp", "--arch", "vit", "--dataset", "synthetic", "--store", store)
    assert refused.exit_code == 2 and "bnp needs BatchNorm layers" in refused.output
    dry = bd(
        "grid",
        "--dataset",
        "synthetic",
        "--defense",
        "clp,pbe,bnp+ft",
        "--tune",
        "--store",
        store,
        "--dry-run",
        "--format",
        "json",
    )
    assert dry.exit_code == 0 and json_of(dry)["units"] == 5  # clp, clp/tuned, pbe, bnp+ft, bnp/tuned+ft/tuned
    # a real grid runs what its dry run counted, with the --set overrides (both were lost once)
    ran = bd(
        "grid",
        "--dataset",
        "synthetic",
        "--defense",
        "clp",
        "--tune",
        "--set",
        "clp.u=5",
        "--partitions",
        "1",
        "--workers",
        "1",
        "--store",
        str(tmp_path / "g.sqlite"),
        "--device",
        "cpu",
        "--format",
        "json",
    )
    assert ran.exit_code == 0, ran.output
    from bd_core.store import ResultStore

    with ResultStore(tmp_path / "g.sqlite", readonly=True) as results:
        rows = {r["defense"]: r for r in results.query()}
    assert set(rows) == {"clp", "clp/tuned"} and rows["clp"]["config"]["defense_settings"] == {"u": 5.0}
    # a grid over architectures leaves out what an architecture refuses, and says why
    mixed = bd(
        "grid",
        "--dataset",
        "synthetic",
        "--arch",
        "vit,preact-resnet18",
        "--defense",
        "bnp,ft",
        "--store",
        store,
        "--dry-run",
        "--format",
        "json",
    )
    assert mixed.exit_code == 0 and json_of(mixed)["units"] == 3
    assert "left out: bnp needs BatchNorm" in mixed.output


def test_attack_then_defend_the_saved_model_then_report(tmp_path):
    store = str(tmp_path / "r.sqlite")
    trained = bd("attack", "--dataset", "synthetic", "--attack", "blended", "--device", "cpu", "--format", "json")
    assert trained.exit_code == 0, trained.output
    info = json_of(trained)
    assert info["asr"] > 0.5 and info["model_file"].endswith("model.safetensors")
    for defense, settings in (("fp", ["epochs=1"]), ("bnp", ["u=3"]), ("bnp+fp", ["bnp.u=3", "fp.epochs=1"])):
        d = bd(
            "defend",
            "--model",
            info["model_file"],
            "--defense",
            defense,
            *(f"--set={s}" for s in settings),
            "--spc",
            "5",
            "--store",
            store,
            "--device",
            "cpu",
            "--format",
            "json",
        )
        assert d.exit_code == 0, d.output
        assert json_of(d)["attack"] == "blended" and json_of(d)["status"] == "ok"
    combined = json_of(d)["details"]["defense"]  # one result whose record lists its parts
    assert combined["components"] == ["bnp", "fp"] and [s["defense"] for s in combined["steps"]] == ["bnp", "fp"]
    # the same model found through the cache by its attack options
    cached = bd(
        "defend",
        "--attack",
        "blended",
        "--dataset",
        "synthetic",
        "--defense",
        "clp",
        "--store",
        store,
        "--device",
        "cpu",
    )
    assert cached.exit_code == 0 and "ARR" in cached.output
    out = tmp_path / "report"
    rep = bd("report", "--store", store, "--out", str(out), "--no-pdf", "--where", "attack=blended")
    assert rep.exit_code == 0, rep.output
    for name in (
        "fig3_box-synthetic.png",
        "fig4_scatter-synthetic.png",
        "fig5_medians-synthetic.png",
        "fig6_spc-synthetic.png",
        "fig10_poison_ratio-synthetic.png",
        "fig9_dataset.png",
        "results.csv",
        "results.parquet",
        "summary.csv",
        "summary.md",
        "summary.tex",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert re.search(r"\| BNP† \| 1 \|", summary) and re.search(r"\| BNP\+FP \| 1 \|", summary)


def test_bd_profile_writes_where_the_defense_spends_its_time(tmp_path, monkeypatch):
    """BD_PROFILE=DIR: the defense (not the evaluation) under torch.profiler, as an operator
    table and a trace; a file in its place is one clear error."""
    monkeypatch.setenv("BD_PROFILE", str(tmp_path / "prof"))
    result = bd(
        "run",
        "--defense",
        "ft",
        "--set",
        "epochs=2",
        "--dataset",
        "synthetic",
        "--device",
        "cpu",
        "--store",
        str(tmp_path / "r.sqlite"),
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    (table,) = (tmp_path / "prof").glob("ft-*.txt")
    text = table.read_text()
    assert text.startswith("ft-") and "aten::convolution_backward" in text  # FT's own backward passes
    assert len(list((tmp_path / "prof").glob("ft-*.trace.json"))) == 1
    (summary,) = (p for p in (tmp_path / "prof").glob("ft-*.json") if not p.name.endswith(".trace.json"))
    profile = json.loads(summary.read_text())
    spent = {op["name"]: op["self_cpu_us"] for op in profile["operators"]}
    assert spent["aten::convolution_backward"] > 0 and profile["threads"] >= 1
    # the operators' own times lie within the block's wall time (1 thread or more: ops run on one caller)
    assert 0 < sum(spent.values()) / 1e6 <= profile["wall_seconds"] * 1.05
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("BD_PROFILE", str(tmp_path / "file"))
    bad = bd("run", "--defense", "ft", "--dataset", "synthetic", "--store", str(tmp_path / "r.sqlite"))
    assert bad.exit_code == 2 and "BD_PROFILE" in bad.output and "give a folder" in bad.output


def test_defend_without_a_model_says_how_to_get_one(tmp_path):
    result = bd("defend", "--attack", "sig", "--dataset", "synthetic", "--store", str(tmp_path / "r.sqlite"))
    assert result.exit_code == 2 and "train it with `bd attack`" in result.output


def test_report_filter_errors_name_the_columns(tmp_path):
    bd("run", "--dataset", "synthetic", "--defense", "clp", "--store", str(tmp_path / "r.sqlite"), "--device", "cpu")
    bad = bd("report", "--store", str(tmp_path / "r.sqlite"), "--where", "colour=red")
    assert bad.exit_code == 2 and "column one of key, status" in bad.output


def test_grid_dry_run_counts_units(tmp_path):
    result = bd(
        "grid",
        "--dataset",
        "synthetic",
        "--attack",
        "badnets,blended",
        "--defense",
        "all",
        "--spc",
        "2,10",
        "--partitions",
        "3",
        "--set",
        "ft.epochs=2",
        "--store",
        str(tmp_path / "r.sqlite"),
        "--dry-run",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    summary = json_of(result)
    from bd_defenses import benchmarked_defenses

    assert summary["units"] == 2 * len(benchmarked_defenses()) * 2 * 3
    assert summary["attacked_models"] == 2 and summary["to_run"] == summary["units"]
    bad = bd("grid", "--set", "epochs=2", "--dry-run")
    assert bad.exit_code == 2 and "defense.key=value" in bad.output
    # a combined defense is one unit per setting, its parts' settings given through its name
    combo = bd(
        "grid",
        "--dataset",
        "synthetic",
        "--defense",
        "bnp+ft,ft",
        "--set",
        "bnp+ft.ft.epochs=2",
        "--store",
        str(tmp_path / "r.sqlite"),
        "--dry-run",
        "--format",
        "json",
    )
    assert combo.exit_code == 0, combo.output
    assert json_of(combo)["units"] == 2
    wrong = bd("grid", "--dataset", "synthetic", "--defense", "bnp+ft", "--set", "bnp+ft.epochs=2", "--dry-run")
    assert wrong.exit_code == 2 and "must name its defense" in wrong.output


def test_every_result_names_the_quick_preset_sizes_of_its_attack():
    from bd_cli.runner.experiment import ExperimentSpec, approximations
    from bd_core.attacked import AttackSpec, DataBundle
    from bd_core.data import make_synthetic

    data = DataBundle(make_synthetic("train", n_train=20), make_synthetic("test", n_test=10))
    ssba = approximations(ExperimentSpec(AttackSpec("synthetic", "preact-resnet18", "ssba"), "ft", 10, 0), data)
    assert any(
        "ssba trigger sized for preset quick: code_bits 32 (paper 100), steps 1500 (paper 15000)" in n for n in ssba
    )
    wanet = approximations(ExperimentSpec(AttackSpec("synthetic", "preact-resnet18", "wanet"), "ft", 10, 0), data)
    assert any("15 epochs" in n for n in wanet) and not any("sized" in n for n in wanet)
    own = AttackSpec("synthetic", "preact-resnet18", "ssba", attack_settings={"code_bits": "64"})
    notes = approximations(ExperimentSpec(own, "ft", 10, 0), data)
    assert any("steps 1500" in n and "code_bits" not in n for n in notes)  # the user's own setting is not listed


def test_precision_bf16_runs_under_its_own_key_and_only_where_a_defense_allows_it(tmp_path):
    """--precision bf16: FT's fine-tuning in bfloat16, stored beside the fp32 result (another
    key, the note with the result), never pooled with it by a report; a defense with its own
    training loop refuses in one line; a grid runs the others in fp32 and says so."""
    store = str(tmp_path / "r.sqlite")
    common = (
        "--defense",
        "ft",
        "--set",
        "epochs=2",
        "--dataset",
        "synthetic",
        "--device",
        "cpu",
        "--store",
        store,
        "--format",
        "json",
    )
    fp32, bf16 = (json_of(bd("run", *common, "--precision", p)) for p in ("fp32", "bf16"))
    assert fp32["key"] != bf16["key"] and not bf16["skipped"]
    assert any("precision bf16" in note for note in bf16["details"]["approximations"])
    assert not any("precision" in note for note in fp32["details"]["approximations"])
    refused = bd("run", "--defense", "mm-bd", "--precision", "bf16", "--dataset", "synthetic", "--store", store)
    assert refused.exit_code == 2 and "mm-bd runs in fp32 only" in refused.output and "ft" in refused.output
    mixed = bd("report", "--store", store, "--out", str(tmp_path / "report"), "--no-pdf")
    assert mixed.exit_code == 2 and "ft ran in more than one precision" in mixed.output
    assert "--where precision=fp32" in mixed.output
    bad = bd("run", "--defense", "ft", "--precision", "fp16", "--dataset", "synthetic", "--store", store)
    assert bad.exit_code == 2 and "precision must be one of fp32, bf16" in bad.output
    grid = bd(
        "grid",
        "--dataset",
        "synthetic",
        "--defense",
        "ft,clp",
        "--precision",
        "bf16",
        "--store",
        store,
        "--dry-run",
        "--format",
        "json",
    )
    assert grid.exit_code == 0 and "clp cannot run in it and run in fp32" in grid.output
    assert json_of(grid)["units"] == 2


DIVERGING = """
from dataclasses import dataclass

import torch
from bd_core.train import optimize
from bd_defenses import Defense, register


@register("diverge", family="test", paper="a defense whose training blows up, for tests")
@dataclass(frozen=True)
class Diverge(Defense):
    where: str = "loss"  # "loss": its loss becomes infinite; "weights": it leaves a weight NaN

    def __call__(self, model, data, ctx):
        weight = next(model.parameters())
        if self.where == "weights":
            with torch.no_grad():
                weight.view(-1)[0] = float("nan")
            return model
        optimize(lambda x, y: weight.sum() * float("inf"), lambda: [(data.clean.images[:2], data.clean.labels[:2])],
                 torch.optim.SGD([weight], lr=0.1), epochs=1, description="diverge's training")
        return model
"""


@pytest.mark.parametrize(
    "where, reason",
    [
        ("loss", "diverge's training diverged: the loss became"),
        ("weights", "diverge's defended model: conv1.weight holds non-finite"),
    ],
)
def test_a_diverged_defense_is_stored_as_failed_never_as_a_result(tmp_path, monkeypatch, where, reason):
    """A NaN network predicts one class for every input: stored as a result, it would read as
    ACC 10 % and ASR 100 % (a defense that failed against a perfect attack)."""
    import importlib
    import sys

    from bd_core.store import ResultStore
    from bd_defenses import DEFENSES

    (tmp_path / "diverging_defense.py").write_text(DIVERGING)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("diverging_defense")
    store = tmp_path / "r.sqlite"
    try:
        result = bd(
            "run",
            "--dataset",
            "synthetic",
            "--defense",
            "diverge",
            "--set",
            f"where={where}",
            "--store",
            str(store),
            "--device",
            "cpu",
        )
    finally:
        DEFENSES.pop("diverge", None)  # other tests iterate over the registry
        sys.modules.pop("diverging_defense", None)
    assert result.exit_code == 1 and reason in result.output and "Traceback" not in result.output
    with ResultStore(store) as results:
        (row,) = results.query()
    assert row["status"] == "failed" and reason in row["error"] and row["error"].startswith("Diverged: ")
    assert row.get("acc_post") is None and row.get("asr_post") is None
