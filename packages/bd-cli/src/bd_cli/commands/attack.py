"""`bd attack`: train an attacked model (or find it in the cache) and report ACC, ASR and RA."""

from __future__ import annotations

from bd_cli.options import (
    Arch,
    Attack,
    AttackSettings,
    DataDir,
    Dataset,
    Device,
    Download,
    OutputFormat,
    PoisonRatio,
    Preset,
    Seed,
    Target,
    TrainingPreset,
    examples,
    resolve_device,
)
from bd_cli.output import Format, emit, maps_errors, say, warn

EXAMPLES = examples(
    "bd attack --attack blended --arch preact-resnet18 --dataset fashion-mnist",
    "bd attack --attack wanet --poison-ratio 0.05 --preset paper --device cuda --format json",
    "bd attack --attack ssba --attack-set steps=500   (a shorter encoder training than the quick preset's)",
)


@maps_errors
def attack(
    attack: Attack = "badnets",
    dataset: Dataset = "fashion-mnist",
    arch: Arch = "preact-resnet18",
    poison_ratio: PoisonRatio = 0.1,
    target: Target = 0,
    seed: Seed = 0,
    preset: TrainingPreset = Preset.quick,
    attack_set: AttackSettings = None,
    device: Device = "auto",
    data_dir: DataDir = None,
    download: Download = False,
    format: OutputFormat = Format.table,
) -> None:
    """Train an attacked model (or find it in the cache) and report its ACC, ASR and RA."""
    from bd_core.attacked import AttackSpec, load_data, obtain_attacked_model, weak_attack_warning
    from bd_core.config import parse_assignments
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache

    spec = AttackSpec(dataset, arch, attack, poison_ratio, target, seed, preset.value, parse_assignments(attack_set))
    dev = resolve_device(device)
    cache = ModelCache(cache_root() / "models")
    attacked, hit = obtain_attacked_model(spec, load_data(spec.dataset, data_dir, download), cache, dev)
    key = attacked.meta["cache_key"]
    warning = weak_attack_warning(attacked.meta["metrics"]["asr"])
    info = {
        "key": key,
        "model_file": str(cache.path(key)),
        "cached_before": hit,
        **attacked.meta["metrics"],
        "train_seconds": attacked.meta.get("training", {}).get("train_seconds"),
        "warning": warning,
    }

    def show_table() -> None:
        say(
            f"{spec.attack} on {spec.dataset}/{spec.arch} ({spec.poison_ratio:.0%}, preset {spec.preset}): "
            f"ACC {info['acc']:.2%}  ASR {info['asr']:.2%}  RA {info['ra']:.2%}"
        )
        say(f"{'found in' if hit else 'saved to'} {info['model_file']}  (bd defend --model {info['model_file']})")
        if warning:
            warn(warning)

    emit(info, format, show_table)
