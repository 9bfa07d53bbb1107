"""The `bd` command as a user runs it (Typer's runner, real store, real cache, real training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bd_cli.app import app
from typer.testing import CliRunner

runner = CliRunner()
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def bd(*args: str):
    return runner.invoke(app, list(args))


def test_help_is_instant_and_has_examples():
    result = bd("run", "--help")
    assert result.exit_code == 0 and "Examples" in result.output and "--poison-ratio" in result.output


def test_run_twice_reuses_cached_model_and_stored_result(tmp_path):
    store = tmp_path / "results.sqlite"
    # a seed of its own: this test must train its model even when other tests cached theirs
    args = [
        "run",
        "--dataset",
        "synthetic",
        "--arch",
        "preact-resnet18",
        "--defense",
        "ft",
        "--set",
        "epochs=2",
        "--seed",
        "7",
        "--spc",
        "5",
        "--device",
        "cpu",
        "--store",
        str(store),
        "--format",
        "json",
    ]
    first = bd(*args)
    assert first.exit_code == 0, first.output
    record = json.loads(first.stdout[first.stdout.index("{") :])
    assert record["status"] == "ok" and record["skipped"] is False
    for metric in ("acc_pre", "asr_pre", "ra_pre", "acc_post", "asr_post", "ra_post"):
        assert 0.0 <= record[metric] <= 1.0
    assert record["arr"] == pytest.approx((record["acc_pre"] - record["acc_post"]) / record["acc_pre"])
    assert record["rdr"] == pytest.approx((record["acc_pre"] - record["ra_post"]) / record["acc_pre"])
    assert "training attacked model" in first.stderr

    # another defense setting on the same attacked model: cached model, new result
    second = bd(*args[:-2], "--partition", "1")
    assert second.exit_code == 0, second.output
    assert "using cached attacked model" in second.stderr and "ARR" in second.stdout and "RDR" in second.stdout

    # the very same experiment: answered from the store
    third = bd(*args)
    assert third.exit_code == 0 and "already in" in third.stderr
    assert json.loads(third.stdout[third.stdout.index("{") :])["skipped"] is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar10"], "cifar10 not found: put cifar-10-batches-py/"),
        (["--defense", "nope"], "unknown defense 'nope'; valid:"),
        (["--arch", "resnet50"], "unknown architecture 'resnet50'; valid:"),
        (["--set", "bogus=1"], "defense ft has no setting bogus; valid: epochs=100"),
        (["--spc", "0"], "spc (samples per class) must be an integer >= 1"),
        (["--poison-ratio", "1.5"], "poison ratio must be in (0, 1)"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("BD_DATA", str(tmp_path))
    result = bd("run", "--dataset", "synthetic", "--device", "cpu", "--store", str(tmp_path / "r.sqlite"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_list_defenses_shows_family_paper_and_defaults():
    result = bd("list", "defenses", "--format", "json")
    assert result.exit_code == 0
    ft = next(d for d in json.loads(result.stdout) if d["name"] == "ft")
    assert ft["family"] == "fine-tuning" and "Liu" in ft["paper"] and ft["hyperparameters"]["epochs"] == 100
    assert ft["ranges"]["lr"] == "(0, 1]" and ft["ranges"]["momentum"] == "[0, 1)"  # declared on the fields
    table = bd("list", "defenses")
    assert table.exit_code == 0 and "ranges" not in table.stdout  # the table leaves them to --format json


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_ft_on_vgg19_fashion_mnist_quick(tmp_path):
    result = bd(
        "run",
        "--defense",
        "ft",
        "--arch",
        "vgg19",
        "--dataset",
        "fashion-mnist",
        "--preset",
        "quick",
        "--device",
        "cpu",
        "--store",
        str(tmp_path / "r.sqlite"),
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout[result.stdout.index("{") :])
    assert record["arch"] == "vgg19-bn" and record["acc_pre"] > 0.7 and record["asr_pre"] > 0.9
    assert any("Fashion-MNIST is the offline stand-in" in n for n in record["details"]["approximations"])


def test_kernels_info_reports_the_build():
    import bd_kernels

    result = bd("kernels", "info", "--format", "json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["extension_loaded"] == bd_kernels.has_extension()
    assert info["ops"] == ["apply_trigger", "channel_stats", "masked_conv2d"] and "torch" in info


# SSBA's encoder is a trained network: CPU-small settings keep the test short
SHOW_SETTINGS = {"ssba": ["--attack-set", "steps=20", "--attack-set", "code_bits=8"]}


@pytest.mark.parametrize("attack", ["badnets", "blended", "sig", "ssba", "bpp", "wanet"])
def test_show_writes_the_trigger_grid(tmp_path, attack):
    from PIL import Image

    out = tmp_path / f"{attack}.png"
    result = bd("show", "--attack", attack, "--dataset", "synthetic", "--out", str(out), *SHOW_SETTINGS.get(attack, []))
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.size == (170 + 8 * 32 * 4, 24 + 3 * 32 * 4)  # labels + 8 samples x (clean, poisoned, difference) at 4x
    assert "largest change" in result.stdout


def test_show_draws_the_trigger_saved_in_a_model_file(tmp_path):
    """InputAware's generator exists only inside an attacked model: `bd show --model` draws it."""
    from bd_core.attacks import BadNets, InputAware
    from bd_core.data import make_synthetic
    from bd_core.models import create_model
    from bd_core.store import save_model
    from PIL import Image

    trigger = InputAware(mask_epochs=1).fit(make_synthetic("train", n_train=64), seed=0)
    meta = {"arch": "preact-resnet18", "num_classes": 10, "in_channels": 3, "image_size": 32, "width": 0.125}
    save_model(tmp_path / "m.safetensors", create_model("preact-resnet18", 10, 3, 32, 0.125), meta, trigger)
    out = tmp_path / "ia.png"
    result = bd(
        "show",
        "--attack",
        "inputaware",
        "--dataset",
        "synthetic",
        "--model",
        str(tmp_path / "m.safetensors"),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (170 + 8 * 32 * 4, 24 + 3 * 32 * 4)
    gray = {**meta, "in_channels": 1, "image_size": 28}
    badnets = BadNets().fit(make_synthetic("train", n_train=8, size=28, channels=1), seed=0)
    save_model(tmp_path / "gray.safetensors", create_model("preact-resnet18", 10, 1, 28, 0.125), gray, badnets)
    wrong = bd("show", "--attack", "badnets", "--dataset", "synthetic", "--model", str(tmp_path / "gray.safetensors"))
    assert wrong.exit_code == 2 and "pass its --dataset" in wrong.stderr


def test_list_attacks_names_papers():
    result = bd("list", "attacks", "--format", "json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert list(rows) == ["badnets", "blended", "sig", "lf", "ssba", "inputaware", "bpp", "wanet"]  # the survey's eight
    assert rows["sig"]["clean_label"]
    assert rows["wanet"]["training_controlled"] and rows["inputaware"]["training_controlled"]
    assert rows["wanet"]["settings"] == {"k": 4, "s": 0.5, "cross_ratio": 2.0}
    assert rows["ssba"]["settings"]["code_bits"] == 100 and rows["ssba"]["quick"]["code_bits"] == 32  # CPU-sized
    assert rows["wanet"]["quick"] == {"epochs": 15}


def test_attack_settings_are_validated_with_the_valid_names(tmp_path):
    result = bd("attack", "--attack", "ssba", "--dataset", "synthetic", "--attack-set", "bits=3")
    assert result.exit_code == 2 and "no setting bits" in result.stderr and "code_bits=100" in result.stderr
