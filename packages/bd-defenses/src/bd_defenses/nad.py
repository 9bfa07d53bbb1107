"""NAD, Neural Attention Distillation (Li et al., ICLR 2021): a teacher is fine-tuned from the
backdoored model on the clean data (10 epochs); the backdoored model is then trained as a
student with CE plus, for each of its last three attention stages, beta * || a_s - a_t ||^2,
where a = normalize(sum_c |f|^p) is the stage's attention map (survey Sec. 4.1; betas 500, 1000,
1000 shallow to deep, p 2; SGD lr 0.01, weight decay 5e-4: the `wd` its optimizer reads).

As the survey's code runs it: the student trains for the teacher's 10 epochs (BackdoorBench's
script passes `te_epochs` to the student's loop, so its config's 100 student epochs never run),
and on PreAct-ResNet18 the three stages are layer3, layer4 and the pooled features (the last is
a 1x1 map, whose normalized attention is constant: in effect layer3 x 500 and layer4 x 1000).
The teacher is fine-tuned with cosine annealing; the student at a constant learning rate (the
script's own step schedule keeps 0.01 for epochs below 20 and its scheduler step is disabled).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.models import anatomy, as_feature_map
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.features import stage_outputs
from bd_defenses.finetune import finetune
from bd_defenses.registry import register


def attention(stage_output: Tensor, p: float) -> Tensor:
    """The spatial attention map, mean over channels of |a|^p (over each token's features in a ViT)."""
    return F.normalize(as_feature_map(stage_output).abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student: list[Tensor], teacher: list[Tensor], betas: tuple[float, ...], p: float) -> Tensor:
    return sum(
        b * (attention(s, p) - attention(t, p)).pow(2).mean() for b, s, t in zip(betas, student, teacher, strict=True)
    )


@register(
    "nad",
    family="fine-tuning",
    paper="Li et al., Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks (ICLR 2021)",
)
@dataclass(frozen=True)
class NAD(Defense):
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")  # all its training is finetune()
    tune: ClassVar[tuple[dict[str, Any], ...]] = (  # --tune, mildest first: attention weights
        {"beta1": 250.0, "beta2": 500.0, "beta3": 500.0},
        {"beta1": 500.0, "beta2": 1000.0, "beta3": 1000.0},
        {"beta1": 1000.0, "beta2": 2000.0, "beta3": 2000.0},
    )
    beta1: float = setting(500.0, 0, 1e6)  # attention weights of the last three stages, shallow to deep
    beta2: float = setting(1000.0, 0, 1e6)
    beta3: float = setting(1000.0, 0, 1e6)
    p: float = setting(2.0, 0.5, 8)
    teacher_epochs: int = setting(10, 1, 100_000)
    epochs: int = setting(10, 1, 100_000)  # the student's: te_epochs in the survey's code (see above)
    lr: float = setting(0.01, above=0, high=1)
    batch_size: int = setting(256, 1, 1_000_000)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        teacher = copy.deepcopy(model)
        finetune(
            teacher,
            data.clean,
            ctx,
            epochs=self.teacher_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            description="NAD teacher fine-tuning",
        )
        teacher.eval()
        betas = (self.beta1, self.beta2, self.beta3)
        t_stages = [m for _, m in anatomy(teacher).stages][-3:]
        s_stages = [m for _, m in anatomy(model).stages][-3:]
        betas = betas[len(betas) - len(s_stages) :]  # a model with fewer stages keeps the deepest weights
        at_losses: list[float] = []

        def step(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            logits, s_maps = stage_outputs(m, s_stages, x)
            with torch.no_grad():
                _, t_maps = stage_outputs(teacher, t_stages, x)
            at = attention_loss(s_maps, t_maps, betas, self.p)
            at_losses.append(float(at.detach()))
            return F.cross_entropy(logits, y) + at

        losses = finetune(
            model,
            data.clean,
            ctx,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=5e-4,
            step=step,
            description="NAD attention distillation",
            schedule="constant",
        )
        per_epoch = len(at_losses) // self.epochs
        ctx.report(
            first_epoch_attention_loss=round(sum(at_losses[:per_epoch]) / per_epoch, 6),
            last_epoch_attention_loss=round(sum(at_losses[-per_epoch:]) / per_epoch, 6),
            final_loss=round(losses[-1], 4),
        )
        return model
