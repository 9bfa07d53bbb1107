"""Model files are safetensors only: pickles are refused, shapes and metadata validated."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from bd_core.attacks import BadNets
from bd_core.data import make_synthetic
from bd_core.errors import UnsafeModelFile
from bd_core.models import create_model
from bd_core.store import load_model, save_model
from safetensors.torch import save_file

META = {"arch": "preact-resnet18", "num_classes": 10, "in_channels": 3, "image_size": 32, "width": 0.125}


def test_roundtrip_rebuilds_model_and_trigger(tmp_path):
    model = create_model("preact-resnet18", 10, 3, 32, 0.125).eval()
    trigger = BadNets().fit(make_synthetic("train", n_train=20), seed=0)
    save_model(tmp_path / "m.safetensors", model, META, trigger)
    loaded = load_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model(x))
    assert torch.equal(loaded.trigger.pattern, trigger.pattern) and loaded.trigger.mode == "replace"


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickled_model_file_is_refused_without_unpickling(tmp_path, writer):
    path = tmp_path / "model.pt"
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    obj = {"state": create_model("vgg19", 10, 3, 32, 0.125).state_dict(), "x": Payload()}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(UnsafeModelFile, match="pickle / torch.save file; bd loads only safetensors"):
        load_model(path)
    assert not marker.exists()


def test_shape_mismatch_and_bad_metadata_are_clear_errors(tmp_path):
    model = create_model("preact-resnet18", 10, 3, 32, 0.125)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    wrong = {**META, "num_classes": 5}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"bd_model": json.dumps(wrong)})
    with pytest.raises(UnsafeModelFile, match=r"tensor linear\.(weight|bias) is"):
        load_model(tmp_path / "a.safetensors", need_trigger=False)
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata={"bd_model": "{not json"})
    with pytest.raises(UnsafeModelFile, match="bd_model"):
        load_model(tmp_path / "b.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UnsafeModelFile, match="not a safetensors file"):
        load_model(tmp_path / "c.safetensors")


def test_header_length_starting_with_0x80_is_still_safetensors(tmp_path):
    # a header of 0x..80 bytes begins with the byte a pickle begins with; structure decides, not one byte
    for pad in range(256):
        path = tmp_path / "t.safetensors"
        save_file({"x": torch.zeros(1)}, str(path), metadata={"pad": "p" * pad})
        if path.read_bytes()[0] == 0x80:
            from bd_core.store import load_tensors

            tensors, meta = load_tensors(path)
            assert meta["pad"] == "p" * pad
            return
    pytest.fail("no header length with a 0x80 first byte was produced")
