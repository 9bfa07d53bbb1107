"""One-off check behind docs/parity.md's FMP row: are the survey's fork's FMP *weights* broken,
or only its BatchNorm running statistics? Runs in the fork's own environment (it loads the
fork's model definition and its saved records; no code of the fork is copied here):

    cd ../fork/BackdoorBenchmark && TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \
        ../venv/bin/python ../../main/experiments/parity/parity_fmp_check.py [--partition 0]

It prints the saved defended model's clean accuracy, then the same weights with every BN's
running statistics re-estimated on the partition's 100 mitigation images (one train-mode pass,
cumulative average; the weights untouched), with ASR and RA of the record's BadNets trigger
(resource/badnet/trigger_image.png: a white 3x3 square at rows and columns 29-31).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torchvision
import torchvision.datasets.cifar as tv_cifar

sys.path.insert(0, os.getcwd())  # the fork's checkout
from utils.aggregate_block.dataset_and_transform_generate import get_dataset_normalization  # noqa: E402
from utils.aggregate_block.model_trainer_generate import generate_cls_model  # noqa: E402

# the parity data are Fashion-MNIST in CIFAR-10's layout, not the real CIFAR-10 (docs/parity.md)
tv_cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
tv_cifar.CIFAR10._check_integrity = lambda self: True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--record", default="record/parity_badnet_preactresnet18")
    parser.add_argument("--runs", type=Path, default=Path("../parity/runs/fmp"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rec = args.record
    original = torch.load(f"{rec}/attack_result.pt", map_location="cpu", weights_only=False)["model"]
    defended = torch.load(
        f"{rec}/defense/fmp/spc_10/{args.partition}/defense_result.pt", map_location="cpu", weights_only=False
    )["model"]
    norm = get_dataset_normalization("cifar10")
    to_tensor = torchvision.transforms.ToTensor()
    train = torchvision.datasets.CIFAR10("data/cifar10", train=True, download=False)
    test = torchvision.datasets.CIFAR10("data/cifar10", train=False, download=False)
    rows = [int(line) for line in (args.runs / str(args.partition) / "mitigation.txt").read_text().split()]
    x_mit = norm(torch.stack([to_tensor(train.data[i]) for i in rows]))
    raw = torch.stack([to_tensor(img) for img in test.data])
    y = torch.tensor(test.targets)
    x_clean = norm(raw)
    triggered = raw.clone()
    triggered[:, :, 29:32, 29:32] = 1.0
    non_target = y != 0
    x_bd, y_bd = norm(triggered[non_target]), y[non_target]

    def measure(model: torch.nn.Module) -> str:
        model.eval()
        with torch.no_grad():
            acc = (model(x_clean).argmax(1) == y).float().mean()
            pred = model(x_bd).argmax(1)
        return f"ACC {acc:.3f} ASR {(pred == 0).float().mean():.3f} RA {(pred == y_bd).float().mean():.3f}"

    model = generate_cls_model("preactresnet18", 10)
    model.load_state_dict(original)
    print("attacked model:", measure(model))
    model.load_state_dict(defended)
    print("fork's FMP model as saved:", measure(model))
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the pass below
    model.train()
    with torch.no_grad():
        model(x_mit)
    print("the same weights, BN statistics re-estimated on the mitigation images:", measure(model))


if __name__ == "__main__":
    main()
