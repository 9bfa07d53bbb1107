"""Training throughput and defense times on a GPU (called by bench/gpu.sh; runs on a CPU too,
with --smoke, so it is exercised where no GPU is lent).

1. Training throughput of full-width PreAct-ResNet18 on 32 px images, the `paper` recipe's
   batch of 128 and a larger one, with bf16 autocast and channels_last, its batches made by bd's
   pipeline (BadNets poisoning, crop, flip, normalize in one `apply_trigger` call) from uint8
   images resident on the device; the pipeline alone is timed too, to show it is not the
   bottleneck.
2. One defense per family on a model trained there (synthetic 32 px data: the machine has no
   datasets and no network), each defense's wall time and its metrics.
Writes <out>/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DEFENSES = {
    "pruning": "clp",
    "masking": "anp",
    "additive": "npd",
    "synthesis": "nc",
    "fine-tuning": "ft",
    "adversarial": "sau",
}


def timer(device: str):
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        return lambda: (end.record(), torch.cuda.synchronize(), start.elapsed_time(end) / 1e3)[-1]
    began = time.perf_counter()
    return lambda: time.perf_counter() - began


def training_throughput(device: str, batch: int, steps: int) -> dict:
    from bd_core.attacks import BadNets
    from bd_core.data import Augment, make_synthetic
    from bd_core.models import create_model

    data = make_synthetic("train", n_train=max(4 * batch, 2048), size=32, channels=3)
    images, labels = data.images.to(device), data.labels.to(device)
    trigger = BadNets().fit(data, 0)
    mean, std = (t.to(device) for t in data.mean_std())
    augment, g = Augment(4, True), torch.Generator().manual_seed(0)
    model = create_model("preact-resnet18", 10, 3, 32, 1.0).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    amp = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def batch_at(i: int):
        rows = torch.arange(i * batch, (i + 1) * batch, device=device) % len(images)
        offsets, flip = augment.draw(batch, g)
        poisoned = (rows % 10) == 0
        x = trigger.apply(images[rows], poisoned, mean, std, offsets.to(device), augment.padding, flip.to(device))
        return x.contiguous(memory_format=torch.channels_last), labels[rows]

    def step(i: int) -> None:
        x, y = batch_at(i)
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):  # warm-up: cuDNN autotuning, allocator
        step(i)
    elapsed = timer(device)
    for i in range(steps):
        step(i)
    seconds = elapsed()
    pipeline = timer(device)
    for i in range(steps):
        batch_at(i)
    pipeline_seconds = pipeline()
    return {
        "batch": batch,
        "steps": steps,
        "images_per_s": round(batch * steps / seconds),
        "pipeline_images_per_s": round(batch * steps / pipeline_seconds),
        "pipeline_share": round(pipeline_seconds / seconds, 4),
    }


def bd(*args: str, seconds_left: float) -> dict:
    """One `bd` command in its own process, killed when the run's time is up (a device lease
    is short: what finished is kept, what did not says so)."""
    cmd = [sys.executable, "-m", "bd_cli.app", *args, "--format", "json"]
    began = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(seconds_left, 1))
    except subprocess.TimeoutExpired:
        return {"error": [f"stopped after {seconds_left:.0f} s (the run's deadline)"], "seconds": seconds_left}
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:], "seconds": time.perf_counter() - began}
    text = done.stdout
    return {**json.loads(text[text.index("{") :]), "seconds": round(time.perf_counter() - began, 1)}


def defenses(device: str, store: Path, smoke: bool, deadline: float, save) -> dict:
    """Train one attacked model (synthetic data, paper recipe sized to the machine), then one
    defense per family on it, until `deadline` (time.monotonic); `save` is called after each."""
    preset = "quick" if smoke else "paper"
    model = [
        "--dataset",
        "synthetic",
        "--arch",
        "preact-resnet18",
        "--attack",
        "badnets",
        "--preset",
        preset,
        "--device",
        device,
    ]
    results = {"attack": bd("attack", *model, seconds_left=deadline - time.monotonic())}
    save(results)
    sizes = (
        {
            "anp": ["--set", "iterations=200"],
            "nc": ["--set", "epochs=20", "--set", "unlearn_epochs=20"],
            "sau": ["--set", "rounds=20"],
            "npd": ["--set", "epochs=20"],
        }
        if smoke
        else {}
    )
    for family, name in DEFENSES.items():
        left = deadline - time.monotonic()
        if left < 5:
            results[family] = {"error": ["not started: the run's deadline had passed"]}
        else:
            results[family] = bd(
                "defend", "--defense", name, *model, "--store", str(store), *sizes.get(name, []), seconds_left=left
            )
        save(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--seconds", type=float, default=600, help="stop starting (and kill) defenses after this")
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("/tmp/bd-gpu-results.sqlite"),
        help="results store of the defenses (kept out of --out: only a few files come back)",
    )
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}

    def save(defense_rows: dict | None = None) -> None:
        if defense_rows is not None:
            report["defenses"] = defense_rows
        (args.out / "gpu_bench.json").write_text(json.dumps(report, indent=1))

    steps = 2 if args.smoke else 50
    batches = [8] if args.smoke else [128, 512]
    report["training"] = [training_throughput(device, b, steps) for b in batches]
    save({})
    print(json.dumps(report["training"], indent=1), flush=True)
    defenses(device, args.store, args.smoke, deadline, save)


if __name__ == "__main__":
    main()
