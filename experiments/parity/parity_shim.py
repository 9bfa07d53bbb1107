"""Runs one script of the survey's BackdoorBench fork on current torch/NumPy, on a CPU, and
records what the parity study needs. Used by experiments/parity/parity.py; contains none of the fork's code.

    <fork python> experiments/parity/parity_shim.py <fork>/defense/ft.py --yaml_path ... --spc 10 ...

Compatibility (the fork itself is left untouched):
* NumPy 2 removed `np.infty`; it is restored as `np.inf`.
* torchvision's CIFAR-10 loader checks the files' md5 against the real CIFAR-10; the parity
  data are Fashion-MNIST written in CIFAR-10's layout, so the check is skipped.
* i-BAU allocates one tensor on a hard-coded 'cuda' device and NFT calls `.cuda()`; without a
  GPU, `torch.zeros_like` is given the CPU instead and `.cuda()` leaves tensors and modules where
  they are.
* NC's mitigation reads an attribute (`attack_file`) its script never sets; the record's folder
  is supplied as that attribute's default.
With $BD_PARITY_RESEED=N the random generators (torch, NumPy, random) are seeded with N right
after the fork draws D_m: the same mitigation images, other randomness in the defense itself
(the fork's --random_seed seeds both), so the fork's own run-to-run spread on fixed images can
be measured as bd's is.
Measurements (wrappers around the fork's functions; their behaviour is unchanged):
* the mitigation indices the fork draws (`spc_choose_poisoned_sample`), written to
  $BD_PARITY_OUT/indices.json, so bd can be run on the same images;
* the wall time spent in the fork's test-set evaluations, and the time from that draw to the
  end of the script, in $BD_PARITY_OUT/timing.json, so the defense's own time can be compared.
With $BD_PARITY_TEST_IMAGES=K the fork's test sets hold only their first K images while it runs:
its per-epoch and per-threshold test evaluations only log (no decision of the fork reads them:
thresholds and stopping rules use its validation split), and on a CPU they cost more than the
defenses. The model of the script's last `given_dataloader_test_v2` call, its final test, is
then evaluated by that same function on the full test sets when the script ends
($BD_PARITY_OUT/final.json).
"""

from __future__ import annotations

import atexit
import copy
import functools
import json
import os
import runpy
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("BD_PARITY_OUT", "."))
TEST_IMAGES = int(os.environ.get("BD_PARITY_TEST_IMAGES", "0"))
RESEED = int(os.environ["BD_PARITY_RESEED"]) if os.environ.get("BD_PARITY_RESEED") else None
STARTED = time.perf_counter()
timing = {"selected_at": None, "loaded_at": None, "evaluation_seconds": 0.0, "evaluations": 0}
_depth = [0]
_full: dict[str, object] = {}  # "clean_test" / "bd_test": the full test sets, kept aside
_final: list = []  # the arguments of the last given_dataloader_test_v2 call


def _timed_evaluation(fn):
    """Count the time of outermost calls (evaluations call each other)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _depth[0] += 1
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[0] -= 1
            if _depth[0] == 0:
                timing["evaluation_seconds"] += time.perf_counter() - began
                timing["evaluations"] += 1

    return wrapper


def _write_timing() -> None:
    end = time.perf_counter()
    timing["total_seconds"] = end - STARTED
    start = timing["selected_at"] or timing["loaded_at"]  # a data-free defense draws no D_m
    if start is not None:
        timing["defense_seconds"] = end - start - timing["evaluation_seconds"]
    timing.pop("selected_at")
    timing.pop("loaded_at")
    (OUT / "timing.json").write_text(json.dumps(timing, indent=1))


def _shrink(wrapper, k: int) -> None:
    """Keep the first k images of a test set (torchvision's CIFAR10 or the fork's poisoned set)."""
    import numpy as np

    dataset = wrapper.wrapped_dataset
    if hasattr(dataset, "subset"):
        dataset.subset(np.arange(min(k, len(dataset))))
    else:
        dataset.data, dataset.targets = dataset.data[:k], dataset.targets[:k]


def _evaluate_final_on_full_test_sets(evaluate) -> None:
    if not _final:
        return
    model, clean, bd, criterion, args = _final[-1]
    full_clean, full_bd = _full["clean_test"], _full["bd_test"]
    full_clean.wrap_img_transform, full_bd.wrap_img_transform = clean.wrap_img_transform, bd.wrap_img_transform
    acc, asr, ra = evaluate(model, full_clean, full_bd, criterion, args)
    (OUT / "final.json").write_text(
        json.dumps(
            {
                "acc": float(acc),
                "asr": float(asr),
                "ra": float(ra),
                "test_images": len(full_clean),
                "bd_test_images": len(full_bd),
            }
        )
    )


class RecordFolder:
    """A non-data descriptor: a script that sets `self.attack_file` itself keeps its own value."""

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.args.result_base + os.path.sep + obj.args.result_file


def install(fork: Path) -> None:
    import numpy as np
    import torch
    import torchvision.datasets.cifar as tv_cifar

    if not hasattr(np, "infty"):
        np.infty = np.inf
    tv_cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
    tv_cifar.CIFAR10._check_integrity = lambda self: True
    if not torch.cuda.is_available():
        zeros_like = torch.zeros_like

        @functools.wraps(zeros_like)
        def cpu_zeros_like(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return zeros_like(*args, **kwargs)

        torch.zeros_like = cpu_zeros_like
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self

    sys.path.insert(0, str(fork))
    import defense.base as defense_base

    # NC's mitigation reads `self.attack_file`, which its `set_result` keeps only in a local
    # variable: once a label is flagged the script stops with an AttributeError. The record's
    # folder, as `set_result` computes it, is given as a default on the defenses' base class.
    if not hasattr(defense_base.defense, "attack_file"):
        defense_base.defense.attack_file = RecordFolder()
    import utils.bd_dataset_v2 as bd_dataset_v2
    import utils.trainer_cls as trainer_cls

    choose = bd_dataset_v2.spc_choose_poisoned_sample

    @functools.wraps(choose)
    def recorded_choice(dataset, samples_per_class, val_ratio=0):
        train_idx, val_idx = choose(dataset, samples_per_class, val_ratio)
        original = dataset.original_index_array  # subset positions -> rows of the training split
        rows = {
            "train": [int(original[i]) for i in train_idx],
            "val": [int(original[i]) for i in (val_idx if val_idx is not None else [])],
        }
        (OUT / "indices.json").write_text(json.dumps(rows))
        if timing["selected_at"] is None:
            timing["selected_at"] = time.perf_counter()
            if RESEED is not None:
                import random

                random.seed(RESEED)
                np.random.seed(RESEED)
                torch.manual_seed(RESEED)
        return train_idx, val_idx

    bd_dataset_v2.spc_choose_poisoned_sample = recorded_choice

    import utils.save_load_attack as save_load_attack

    load = save_load_attack.load_attack_result

    @functools.wraps(load)
    def loaded(path):
        result = load(path)
        if TEST_IMAGES and isinstance(result, dict) and "clean_test" in result and "bd_test" in result:
            for key in ("clean_test", "bd_test"):
                _full[key] = copy.deepcopy(result[key])
                _shrink(result[key], TEST_IMAGES)
        timing["loaded_at"] = time.perf_counter()
        return result

    save_load_attack.load_attack_result = loaded
    final_test = trainer_cls.given_dataloader_test_v2

    @functools.wraps(final_test)
    def remembered(model, clean, bd, criterion, args, *rest, **kwargs):
        if TEST_IMAGES:  # the script's last call is its final test; nothing changes the model after it
            _final[:] = [(model, clean, bd, criterion, args)]
        return final_test(model, clean, bd, criterion, args, *rest, **kwargs)

    trainer_cls.given_dataloader_test_v2 = remembered
    if TEST_IMAGES:
        atexit.register(_evaluate_final_on_full_test_sets, final_test)
    for name in ("given_dataloader_test", "given_dataloader_test_v2", "test_given_dataloader_on_mix"):
        setattr(trainer_cls, name, _timed_evaluation(getattr(trainer_cls, name)))
    for cls_name, method in (
        ("ModelTrainerCLS_v2", "test_given_dataloader"),
        ("ModelTrainerCLS_v2", "test_current_model"),
        ("PureCleanModelTrainer", "test_given_dataloader_on_mix"),
        ("PureCleanModelTrainer", "test_current_model"),
        ("BackdoorModelTrainer", "test_given_dataloader_on_mix"),
        ("BackdoorModelTrainer", "test_current_model"),
    ):
        cls = getattr(trainer_cls, cls_name)
        if method in cls.__dict__:
            setattr(cls, method, _timed_evaluation(cls.__dict__[method]))
    atexit.register(_write_timing)


def main() -> None:
    script = Path(sys.argv[1]).resolve()
    fork = script.parent.parent
    OUT.mkdir(parents=True, exist_ok=True)
    os.chdir(script.parent)  # the fork's scripts chdir to their own folder and import from '../'
    install(fork)
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path[0] = str(script.parent)
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
