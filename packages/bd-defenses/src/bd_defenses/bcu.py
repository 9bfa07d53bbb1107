"""BCU, Backdoor Cleansing with Unlabeled data (Pang et al., CVPR 2023); reviewed by the survey,
not benchmarked, because it needs unlabeled out-of-distribution images that the survey's
defender does not have. bd asks for them explicitly: --set ood_dataset=NAME (any dataset bd
can load; images are converted to the model's channels and size).

The backdoored model is the teacher. The student starts as its copy with adaptive layer-wise
re-initialisation: a fraction of each layer's output channels, growing with depth up to
`reinit_max`, is re-initialised (backdoor features live mostly in deep layers). The student
is distilled from the teacher's softened outputs (temperature T) on the unlabeled images and
the mitigation images without their labels; the trigger never appears in that data, so the
backdoor is not transferred.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data import ImageSet
from bd_core.data.batches import clean_batches
from bd_core.train import optimize, shuffled_batches

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import register

NEEDS = "unlabeled out-of-distribution images: --set ood_dataset=NAME (e.g. fashion-mnist for a CIFAR model)"


@torch.no_grad()
def reinitialise_by_depth(model: nn.Module, reinit_max: float, g: torch.Generator) -> list[int]:
    """Re-initialise round(r_l * out) output channels of layer l, r_l = reinit_max * (l+1)/L."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    counts = []
    for i, layer in enumerate(layers):
        out = layer.weight.shape[0]
        n = int(round(reinit_max * (i + 1) / len(layers) * out))
        if n:
            rows = torch.randperm(out, generator=g)[:n]
            fresh = torch.empty_like(layer.weight[rows])
            nn.init.kaiming_uniform_(fresh, a=5**0.5, generator=g)
            layer.weight[rows] = fresh
            if layer.bias is not None:
                layer.bias[rows] = 0
        counts.append(n)
    return counts


@register(
    "bcu",
    family="fine-tuning",
    paper="Pang et al., Backdoor Cleansing with Unlabeled Data (CVPR 2023); reviewed only",
    needs=NEEDS,
    benchmarked=False,
)
@dataclass(frozen=True)
class BCU(Defense):
    ood_dataset: str = ""  # required: the unlabeled data BCU assumes
    ood_images: int = setting(5000, 1, 10_000_000)
    reinit_max: float = setting(0.3, 0, 1)
    temperature: float = setting(4.0, above=0, high=1000)
    epochs: int = setting(20, 1, 100_000)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)

    def unlabeled_request(self) -> tuple[str, int] | None:
        return (self.ood_dataset, self.ood_images) if self.ood_dataset else None

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        if data.unlabeled is None:
            raise ValueError(f"BCU needs {NEEDS}")
        teacher = copy.deepcopy(model).eval()
        g = ctx.generator(17)
        counts = reinitialise_by_depth(model, self.reinit_max, g)
        pool = ImageSet(
            torch.cat([data.unlabeled.images, data.clean.images]),  # labels are never read
            torch.zeros(len(data.unlabeled) + len(data.clean), dtype=torch.long),
            data.clean.info,
            "unlabeled",
        )
        make_batch = clean_batches(pool, data.augment(), ctx.device)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        t = self.temperature

        def distillation_loss(x: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / t, 1)
            return F.kl_div(F.log_softmax(model(x) / t, 1), soft, reduction="batchmean") * t * t

        losses = optimize(
            distillation_loss,
            shuffled_batches(make_batch, len(pool), self.batch_size, g),
            opt,
            epochs=self.epochs,
            model=model,
            scheduler=sched,
            device=ctx.device,
            description="BCU distillation on unlabeled data",
        )
        model.eval()
        ctx.report(
            ood_dataset=self.ood_dataset,
            unlabeled_images=len(data.unlabeled),
            reinitialised_per_layer=counts,
            final_kd_loss=round(losses[-1], 4),
        )
        return model
