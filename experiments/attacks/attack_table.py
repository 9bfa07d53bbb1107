"""Measure every implemented attack with preset `quick` on the offline dataset and write
docs/attacks.md: clean ACC of the attacked model, ACC of a clean model of the same
recipe, ASR, RA and training time, at poison ratios 1, 5 and 10 %.

Usage: python experiments/attacks/attack_table.py [--attacks badnets,blended] [--ratios 0.01,0.05,0.1]
Attacked models are cached (the same cache `bd run` uses), so a rerun only trains what is new.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import NamedTuple

import torch
from bd_core.attacked import AttackSpec, load_data, obtain_attacked_model, train_clean_model
from bd_core.attacks import ATTACKS
from bd_core.metrics import evaluate
from bd_core.paths import cache_root
from bd_core.store import ModelCache
from bd_core.train import PRESETS, Recipe

OUT = Path(__file__).resolve().parents[2] / "docs" / "attacks.md"
CLEAN_CACHE = cache_root() / "clean-reference.json"


def clean_accuracy(dataset: str, arch: str, data, preset: str, recipe: Recipe) -> tuple[float, float]:
    """ACC and training seconds of a clean model trained with `recipe` (cached in a small JSON file)."""
    key = f"{dataset}/{arch}/{preset}" + ("" if recipe == PRESETS[preset] else f"/epochs={recipe.epochs}")
    known = json.loads(CLEAN_CACHE.read_text()) if CLEAN_CACHE.exists() else {}
    if key not in known:
        model, report = train_clean_model(dataset, arch, data, preset, recipe=recipe)
        trigger = ATTACKS["badnets"]().fit(data.train, 0)  # only the clean accuracy is read
        known[key] = {"acc": evaluate(model, data.test, trigger, 0).acc, "seconds": report["train_seconds"]}
        CLEAN_CACHE.parent.mkdir(parents=True, exist_ok=True)
        CLEAN_CACHE.write_text(json.dumps(known))
    return known[key]["acc"], known[key]["seconds"]


SPLITS: dict[str, tuple[float, float]] = {}  # attack -> clean ACC on target-class / other test images


def target_split(model, test, target: int) -> tuple[float, float]:
    """Clean accuracy on the target class's test images and on all others: where an accuracy cost sits."""
    mean, std = test.mean_std()
    x = (test.images.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    with torch.no_grad():
        right = torch.cat([model(b).argmax(1) for b in x.split(512)]) == test.labels
    is_target = test.labels == target
    return right[is_target].float().mean().item(), right[~is_target].float().mean().item()


CROSS: dict[float, float] = {}  # InputAware: accuracy on cross-trigger test inputs, per poison ratio


def cross_trigger_accuracy(model, trigger, test, target: int) -> float:
    """Non-target test images carrying another test image's trigger, classified as their own label."""
    keep = test.labels != target
    images, labels = test.images[keep], test.labels[keep]
    sources = images.roll(1, dims=0)
    mean, std = test.mean_std()
    with torch.no_grad():
        right = [
            model(trigger.apply_cross(a, b, mean, std)).argmax(1) == y
            for a, b, y in zip(images.split(512), sources.split(512), labels.split(512), strict=True)
        ]
    return torch.cat(right).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--arch", default="preact-resnet18")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--ratios", default="0.01,0.05,0.1")
    args = parser.parse_args()
    data = load_data(args.dataset)
    cache = ModelCache(cache_root() / "models")
    rows = []
    for name in args.attacks.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            spec = AttackSpec(args.dataset, args.arch, name, ratio, preset=args.preset)
            clean_acc, _ = clean_accuracy(args.dataset, args.arch, data, args.preset, spec.recipe)
            attacked, _ = obtain_attacked_model(spec, data, cache)
            m = attacked.meta["metrics"]
            rows.append(
                Row(
                    name,
                    ratio,
                    spec.recipe.epochs,
                    clean_acc,
                    m["acc"],
                    m["asr"],
                    m["ra"],
                    attacked.meta["training"]["train_seconds"],
                )
            )
            if ratio >= 0.1 and clean_acc - m["acc"] > 0.03:
                SPLITS[name] = target_split(attacked.model, data.test, spec.target)
            if name == "inputaware":
                CROSS[ratio] = cross_trigger_accuracy(attacked.model, attacked.trigger, data.test, spec.target)
            write(args, rows)


class Row(NamedTuple):
    attack: str
    ratio: float
    epochs: int
    clean_acc: float
    acc: float
    asr: float
    ra: float
    seconds: float


# Why an attack's quick recipe differs from the preset's (shown for the attacks in the table).
QUICK_RECIPE_NOTES = {
    "wanet": "15 epochs instead of 5: WaNet's warp moves pixels by under a pixel and its noise-mode samples "
    "forbid shortcuts; with 5 epochs it reached 51.5 % ASR at 10 % (and cost 3.8 ACC points), with 15 epochs 99 %.",
    "bpp": "30 epochs instead of 5: the 8-level squeeze changes a grey Fashion-MNIST image by at most ~18/255 "
    "and only on the garment (the black background stays black), and the negative samples forbid any other small "
    "perturbation; measured at 10 %: 5 epochs 2.0 % ASR, 15 epochs 57 %, 30 epochs 87 %.",
    "ssba": "the code encoder is trained for 1 500 steps with a 32-bit code (paper preset: 15 000 steps, 100 bits).",
    "inputaware": "15 epochs instead of 5 (5 epochs reached 72 % ASR at 10 %, 60 % at 5 %), and 3 clean epochs "
    "for the mask network instead of the paper's 25.",
}

# Why an attack can fall short under the quick preset (shown only when it does).
SHORTFALL_REASONS = {
    "sig": "SIG is clean-label: at 10 % of 20 000 images every target-class training image carries the "
    "signal, so the model never sees a clean class-0 image and learns 'class 0 = signal'; the clean-accuracy cost "
    "sits in class 0. BackdoorBench's CIFAR-10 setting at 10 % has the same property.",
    "bpp": "BPP's trigger (8-level colour squeeze with dithering, at most ~18/255 per pixel) is learned slowly, "
    "and its negative samples teach the model to ignore small perturbations; the likely cause is that 5 quick "
    "epochs at quarter width are too few (BackdoorBench trains 100 epochs at full width). Not yet verified with "
    "longer training: run with --preset paper on a GPU.",
    "wanet": "WaNet's warp moves pixels by under a pixel and its noise-mode samples forbid shortcuts, so it "
    "needs long training (100 epochs in BackdoorBench); 5 quick epochs reach about half the ASR and cost clean "
    "accuracy. Not yet verified with longer training: run with --preset paper on a GPU.",
    "lf": "LF's perturbation is optimized against a briefly trained surrogate; on the quick recipe it is learned "
    "more slowly than a patch.",
}


def verdict(name: str, ratio: float, acc: float, asr: float, clean_acc: float) -> str:
    if ratio < 0.1:
        return ""
    notes = []
    if asr < 0.85:
        notes.append("ASR below 85 %")
    if clean_acc - acc > 0.03:
        notes.append("ACC more than 3 points below the clean model")
    return "; ".join(notes) or "meets both targets"


def write(args, rows: list[Row]) -> None:
    lines = [
        "# Attacks, measured",
        "",
        f"Generated by `python experiments/attacks/attack_table.py` on {time.strftime('%Y-%m-%d')}: "
        f"dataset {args.dataset} "
        f"(the offline stand-in), {args.arch}, preset `{args.preset}` (quarter width, 20 000 training images, 5 "
        f"epochs unless the attack's quick recipe says more: column *epochs*), target class 0, seed 0; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU.",
        "",
        "*clean ACC* is a clean model trained with the same recipe (same epochs), so *ACC − clean* is the attack's "
        "cost in clean accuracy.",
        "",
        "| attack | poison ratio | epochs | clean ACC | ACC | ACC − clean | ASR | RA | train s "
        "| targets (at 10 %: ASR ≥ 85 %, ACC within 3 points) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.attack} | {r.ratio:.0%} | {r.epochs} | {r.clean_acc:.2%} | {r.acc:.2%} | "
            f"{100 * (r.acc - r.clean_acc):+.1f} | {r.asr:.2%} | {r.ra:.2%} | {r.seconds:.0f} | "
            f"{verdict(r.attack, r.ratio, r.acc, r.asr, r.clean_acc)} |"
        )
    short = sorted(
        {
            r.attack
            for r in rows
            if verdict(r.attack, r.ratio, r.acc, r.asr, r.clean_acc) not in ("", "meets both targets")
        }
    )
    if short:
        lines += ["", "Where an attack falls short, and why:", ""]
        for n in short:
            split = (
                f" Measured: clean ACC {SPLITS[n][0]:.1%} on target-class test images, {SPLITS[n][1]:.1%} on the "
                "others."
                if n in SPLITS
                else ""
            )
            lines.append(f"* **{n}**: {SHORTFALL_REASONS.get(n, 'not analysed yet.')}{split}")
    in_table = dict.fromkeys(r.attack for r in rows)
    notes = [f"* **{n}**: {QUICK_RECIPE_NOTES[n]}" for n in in_table if n in QUICK_RECIPE_NOTES]
    if notes:
        lines += ["", "Quick-preset changes per attack (`bd list attacks` shows them):", "", *notes]
    if CROSS:
        lines += [
            "",
            "InputAware's cross-trigger test (a trigger works only on the input it was made for): "
            "non-target test images carrying another image's trigger are classified as their own label in "
            + ", ".join(f"{acc:.1%} of cases at {ratio:.0%}" for ratio, acc in sorted(CROSS.items()))
            + " (the authors report 88 % on CIFAR-10).",
        ]
    lines += ["", "Training times are wall-clock on the 2-core VM; some rows shared the CPU with other jobs."]
    lines += [
        "",
        "Each trigger's defining property is a test (tests/bd_core/test_attacks.py, "
        "test_learned_triggers.py): BadNets' pixels are set exactly; Blended is the convex combination; SIG has "
        "amplitude 40 and 6 cycles; LF's energy is inside the low-frequency window; SSBA's residual is bounded "
        "in L-infinity and differs per sample; InputAware's patterns and masks differ across inputs, with "
        "attack, cross-trigger and clean rows in every batch; BPP has at most 8 levels per channel; WaNet's "
        "displacement is bounded by s. Every saved trigger rebuilds the identical poisoned test set in a new "
        "process.",
    ]
    lines += ["", "Trigger galleries (`bd show`): clean row, poisoned row, amplified difference:", ""]
    lines += [f"![{n}](img/{n}-{args.dataset}.png)" for n in ATTACKS]
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
