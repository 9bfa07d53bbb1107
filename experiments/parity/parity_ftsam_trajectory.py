"""One-off check behind docs/parity.md's FT-SAM row: do bd's FT-SAM and the survey's fork compute
the same 20-epoch run when they see the same batches? bd's side is its FTSAM defense itself
(only its batches replaced by a fixed list); the fork's side is the fork's own `SAM`,
`ProportionScheduler`, `smooth_crossentropy` and `PreActResNet18`, imported from the fetched
fork (nothing copied here) and driven as its `defense/ft-sam.py` drives them: the scheduler and
rho stepped per batch, an eval-mode test pass after every epoch. Both start from the imported
parity model in float64 and see the same 20 batches: partition P's 100 mitigation images through
the fork's training transform (experiments/parity/parity_pipeline_check.py), one batch per epoch.

    python experiments/parity/parity_ftsam_trajectory.py [--partition 1] [--seed 0]

Prints how far the weights moved and the largest differences between the two runs' weights,
BatchNorm buffers and logits.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FORK = HERE.parents[2] / "fork"
sys.path.insert(0, str(FORK / "BackdoorBenchmark"))
import bd_defenses.ftsam as ftsam  # noqa: E402
from bd_core.data import load_dataset  # noqa: E402
from bd_core.data.mitigation import mitigation_from_indices  # noqa: E402
from bd_core.interop.backdoorbench import preact_names  # noqa: E402
from bd_core.store.models import load_model  # noqa: E402
from bd_defenses.base import Context, MitigationData  # noqa: E402
from models.preact_resnet import PreActResNet18  # noqa: E402  (the fork's)
from parity_pipeline_check import torchvision_batches  # noqa: E402
from utils.defense_utils.sam.sam import SAM  # noqa: E402
from utils.defense_utils.sam.scheduler import ProportionScheduler  # noqa: E402
from utils.defense_utils.sam.util import smooth_crossentropy  # noqa: E402

EPOCHS = 20  # the parity study's FT-SAM schedule (experiments/parity/parity.py)
FORK_NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))  # the record's


def fork_run(model: torch.nn.Module, batches: list, probe: torch.Tensor) -> None:
    """ft-sam.py's _train_sam over the epochs, one batch per epoch."""
    base = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=EPOCHS)
    rho = ProportionScheduler(pytorch_lr_scheduler=sched, max_lr=0.01, min_lr=0.0, max_value=2.0, min_value=2.0)
    sam = SAM(
        params=model.parameters(), base_optimizer=base, model=model, sam_alpha=0.0, rho_scheduler=rho, adaptive=True
    )
    for x, y in batches:
        model.train()
        sam.set_closure(lambda out, t: smooth_crossentropy(out, t, smoothing=0.1).mean(), x, y)
        sam.step()
        with torch.no_grad():
            sched.step()
            sam.update_rho_t()
            model.eval()  # the script's per-epoch test pass
            model(probe[:20])
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partition", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the augmentation draws of the 20 batches")
    parser.add_argument("--work", type=Path, default=FORK / "parity")
    args = parser.parse_args()
    torch.set_num_threads(1)
    imported = load_model(args.work / "model.safetensors").model.double()
    fork_model = PreActResNet18(10)
    fork_names = preact_names({k: k for k in fork_model.state_dict()})  # bd's name -> the fork's
    fork_model.load_state_dict({fork: imported.state_dict()[bd] for bd, fork in fork_names.items()})
    fork_model = fork_model.double()
    train = load_dataset("cifar10", "train", root=FORK / "BackdoorBenchmark" / "data" / "cifar10")
    rows = tuple(
        int(line)
        for line in (args.work / "runs" / "ft-sam" / str(args.partition) / "mitigation.txt").read_text().split()
    )
    clean = mitigation_from_indices(train, rows).normalized_as(*FORK_NORMALIZATION, "the record's")
    make_batch = torchvision_batches(clean, None)
    torch.manual_seed(args.seed)
    batches = [(x.double(), y) for x, y in (make_batch(torch.randperm(len(clean)), None) for _ in range(EPOCHS))]
    probe = make_batch(torch.arange(len(clean)), None)[0].double()

    stream = iter(batches)  # bd's defense, fed the same batches
    ftsam.clean_batches = lambda data, augment, device: None
    ftsam.shuffled_batches = lambda make, n, batch_size, generator: lambda: [next(stream)]
    bd_out = ftsam.FTSAM(epochs=EPOCHS)(copy.deepcopy(imported), MitigationData(clean), Context(seed=args.seed))
    fork_run(fork_model, batches, probe)

    fork_params = preact_names(dict(fork_model.named_parameters()))
    fork_buffers = preact_names(dict(fork_model.named_buffers()))
    moved = max((fork_params[k] - p).abs().max().item() for k, p in imported.named_parameters())
    params = max((fork_params[k] - p).abs().max().item() for k, p in bd_out.named_parameters())
    buffers = max(
        (fork_buffers[k] - b).abs().max().item() for k, b in bd_out.named_buffers() if b.dtype.is_floating_point
    )
    with torch.no_grad():
        logits = (bd_out(probe) - fork_model(probe)).abs().max().item()
    print(
        f"partition {args.partition}, seed {args.seed}, {EPOCHS} epochs: the weights moved up to {moved:.3e}; "
        f"bd against the fork: weights {params:.3e}, BatchNorm buffers {buffers:.3e}, logits {logits:.3e}"
    )


if __name__ == "__main__":
    main()
