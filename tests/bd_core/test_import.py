"""`bd import`: BackdoorBench records become bd model files, and nothing in them is executed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bb_records import RunsCode, reference_logits, write_record
from bd_core.attacks.base import PatternTrigger
from bd_core.attacks.stored import StoredTrigger
from bd_core.errors import UnsafeModelFile
from bd_core.interop.backdoorbench import _fold_vgg_head, read_record
from bd_core.interop.importer import import_record
from bd_core.models import create_model
from bd_core.store import load_model
from formats_writers import write_cifar10


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    batches = write_cifar10(root / "cifar-10-batches-py", per_batch=30, rng=np.random.default_rng(0))
    data, labels = batches["test_batch"]
    return root, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(3)
    model = create_model("preact-resnet18", 10, 3, 32)
    with torch.no_grad():  # spread the BN statistics so predictions vary between images
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("on_disk", [True, False], ids=["png-files", "images-in-pickle"])
def test_import_round_trip_matches_the_record(tmp_path, cifar_root, source_model, on_disk):
    root, test_hwc, labels = cifar_root
    folder = write_record(tmp_path, "badnet_preactresnet18", source_model, test_hwc, labels, on_disk=on_disk)
    out = tmp_path / "imported.safetensors"
    done = import_record(folder, out, data_dir=root)

    # the pattern named in info.pickle reproduces every poisoned test image, so it is the trigger
    assert isinstance(done.trigger_source, str) and "pattern" in done.trigger_source
    # bd's evaluation gives exactly the record's own ACC / ASR / RA
    for name in ("acc", "asr", "ra"):
        assert getattr(done.metrics, name) == pytest.approx(done.record.reported[name], abs=1e-6)

    loaded = load_model(out)
    assert isinstance(loaded.trigger, PatternTrigger)
    assert loaded.meta["attack"]["preset"] == "imported" and loaded.meta["attack"]["source"] == done.record.sha256
    assert loaded.meta["normalization"]["std"] == [0.247, 0.243, 0.261]
    # the same function as the source network on the same normalized input (state dict mapped, not guessed)
    x = test_hwc[:8]
    mean, std = torch.tensor(loaded.meta["normalization"]["mean"]), torch.tensor(loaded.meta["normalization"]["std"])
    xn = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(xn), reference_logits(source_model, x))


def test_without_the_trigger_file_the_records_images_are_the_trigger(tmp_path, cifar_root, source_model):
    root, test_hwc, labels = cifar_root
    folder = write_record(tmp_path, "badnet_noresource", source_model, test_hwc, labels, with_resource=False)
    done = import_record(folder, tmp_path / "m.safetensors", data_dir=root)
    assert "stored trigger" in done.trigger_source
    assert done.metrics.asr == pytest.approx(done.record.reported["asr"], abs=1e-6)
    trigger = load_model(tmp_path / "m.safetensors").trigger
    assert isinstance(trigger, StoredTrigger)
    # it poisons the record's images only
    stranger = torch.full((1, 3, 32, 32), 7, dtype=torch.uint8)
    with pytest.raises(Exception, match="not among"):
        trigger.apply(stranger, torch.ones(1, dtype=torch.bool), torch.zeros(3), torch.ones(3))


def test_a_pickled_callable_is_refused_and_never_runs(tmp_path, cifar_root, source_model, monkeypatch):
    root, test_hwc, labels = cifar_root
    sentinel = tmp_path / "pwned"
    folder = write_record(tmp_path, "evil", source_model, test_hwc, labels, extra={"hook": RunsCode(sentinel)})
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # as when the record's own tool runs on new torch
    with pytest.raises(UnsafeModelFile, match=r"refused, it pickles .*system") as err:
        read_record(folder)
    assert "\n" not in str(err.value)
    assert not sentinel.exists()


def test_a_malicious_info_pickle_is_refused(tmp_path, cifar_root, source_model):
    root, test_hwc, labels = cifar_root
    folder = write_record(tmp_path, "evil_info", source_model, test_hwc, labels)
    sentinel = tmp_path / "pwned"
    torch.save({"attack": "badnet", "x": RunsCode(sentinel)}, folder / "info.pickle")
    with pytest.raises(UnsafeModelFile, match="refused"):
        read_record(folder)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a zip at all", "not a readable torch.save archive"),
        ({"model_name": "preactresnet18"}, "missing"),
        (
            {
                "model_name": "resnet50",
                "num_classes": 10,
                "model": {},
                "img_size": [32, 32, 3],
                "clean_data": "cifar10",
                "bd_test": {"bd_data_container": {"data_dict": {}}},
            },
            "no bd counterpart",
        ),
        (
            {
                "model_name": "preactresnet18",
                "num_classes": 10**9,
                "model": {},
                "img_size": [32, 32, 3],
                "clean_data": "cifar10",
                "bd_test": {},
            },
            "num_classes",
        ),
    ],
)
def test_malformed_records_get_one_line(tmp_path, content, message):
    folder = tmp_path / "record" / "bad"
    folder.mkdir(parents=True)
    if isinstance(content, bytes):
        (folder / "attack_result.pt").write_bytes(content)
    else:
        torch.save(content, folder / "attack_result.pt")
    with pytest.raises(Exception, match=message) as err:
        from bd_core.interop.backdoorbench import bd_state_dict

        bd_state_dict(read_record(folder))
    assert "\n" not in str(err.value)


def test_state_dict_with_a_wrong_shape_fails_strict_loading(tmp_path, cifar_root, source_model):
    root, test_hwc, labels = cifar_root
    folder = write_record(tmp_path, "wrong", source_model, test_hwc, labels)
    content = torch.load(folder / "attack_result.pt", weights_only=False)
    content["model"]["linear.weight"] = torch.zeros(10, 256)
    torch.save(content, folder / "attack_result.pt")
    with pytest.raises(UnsafeModelFile, match="linear.weight"):
        import_record(folder, tmp_path / "m.safetensors", data_dir=root)


def test_vgg_head_fold_is_exact_on_a_1x1_feature_map():
    """torchvision's 7x7 pool of a 1x1 map repeats it 49 times: the folded layer gives the same output."""
    torch.manual_seed(0)
    channels, hidden = 6, 5
    weight = torch.randn(hidden, channels * 49)
    feature = torch.randn(2, channels, 1, 1)
    repeated = torch.nn.functional.adaptive_avg_pool2d(feature, 7).flatten(1)  # what torchvision's head sees

    class R:  # the fields the fold reads
        path, image_size = "record", 32

    folded, options = _fold_vgg_head(R(), {"classifier.0.weight": weight})
    assert options == {"hidden": hidden}
    torch.testing.assert_close(feature.flatten(1) @ folded["classifier.0.weight"].T, repeated @ weight.T)
