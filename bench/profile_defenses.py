"""Where each defense spends its time on the parity study's work (issue 18): bd's defense under
torch.profiler (`BD_PROFILE`), its operators summed into the network's layers and the rest.

    python bench/profile_defenses.py run --defenses ft,nad --partition 1   # needs experiments/parity/parity.py's setup
    python bench/profile_defenses.py table                                  # into bench/RESULTS.md

`run` defends the parity study's imported model (docs/parity.md) with the same mitigation images
and the same settings as its pairs, 1 thread, one defense at a time; a defense whose parity run
takes over ten minutes gets the shortened schedule in SHORTENED (the per-epoch mix of work is
what the profile shows, and it does not change with the number of epochs). The operator summary
of each run is kept in bench/profiles/<defense>.json (committed; the traces are not).

`table` writes, per defense, the share of the profiled wall time in convolutions (forward and
backward), BatchNorm and linear layers (the network's own arithmetic, which the survey's code
performs too on the same work), in other operators (the three largest named), and outside any
operator (Python). The *ceiling* column is the fork/bd ratio bd would reach on that parity pair
if everything but the network's layers took no time: fork seconds / (bd seconds x layer share).
Where it is under 3, the 3x target needs less arithmetic than the survey's code does, not less
overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROFILES = HERE / "profiles"
sys.path.insert(0, str(ROOT / "experiments" / "parity"))
from parity import DEFENSES, stored_runs  # noqa: E402  (the parity study's settings and record)

# defenses whose parity schedule takes over ten minutes in bd: a shorter run of the same loop
SHORTENED: dict[str, dict] = {
    "sau": {"rounds": 4},
    "pbe": {"epochs": 4},
    "fmp": {"adv_images": 2, "epochs": 2},
    "ft-sam": {"epochs": 5},
    "nc": {"epochs": 4, "unlearn_epochs": 4},
    "bti-dbf": {"pretrain_epochs": 4, "mask_epochs": 2, "generator_epochs": 2, "unlearn_epochs": 2, "rounds": 1},
    "anp": {"iterations": 20},
}

BEGIN, END = "<!-- profiles -->", "<!-- /profiles -->"  # where `table` writes in bench/RESULTS.md
CATEGORIES = ("convolution forward", "convolution backward", "BatchNorm", "linear")


def category(operator: str) -> str | None:
    """The network layer an ATen operator belongs to, or None for everything else."""
    name = operator.lower()
    if "convolution_backward" in name:
        return "convolution backward"
    if "convolution" in name or "conv2d" in name:
        return "convolution forward"
    if "batch_norm" in name:
        return "BatchNorm"
    if name in ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul"):
        return "linear"
    return None


def summarize(profile: dict) -> dict:
    """Seconds per category, other operators and outside operators, from a BD_PROFILE json."""
    spent = dict.fromkeys(CATEGORIES, 0.0)
    others: dict[str, float] = {}
    for op in profile["operators"]:
        seconds = op["self_cpu_us"] / 1e6
        kind = category(op["name"])
        if kind is None:
            others[op["name"]] = others.get(op["name"], 0.0) + seconds
        else:
            spent[kind] += seconds
    in_operators = sum(spent.values()) + sum(others.values())
    top = sorted(others.items(), key=lambda item: -item[1])[:3]
    return {
        "wall": profile["wall_seconds"],
        **spent,
        "other": sum(others.values()),
        "outside": max(0.0, profile["wall_seconds"] - in_operators),
        "top_other": top,
    }


def mitigation_file(work: Path, partition: int) -> Path:
    """The partition's mitigation rows as the fork drew them (every defense draws the same rows
    for a seed, so any run's copy will do)."""
    for path in sorted((work / "runs").glob(f"*/{partition}/mitigation.txt")):
        return path
    raise SystemExit(
        f"no mitigation rows for partition {partition} under {work}/runs: "
        f"run `python experiments/parity/parity.py run --partitions {partition}` first"
    )


def run(args: argparse.Namespace) -> None:
    PROFILES.mkdir(exist_ok=True)
    traces = args.work / "profiles"
    rows = mitigation_file(args.work, args.partition)
    for defense in args.defenses.split(","):
        settings = {**DEFENSES[defense].get("bd", {}), **SHORTENED.get(defense, {})}
        cmd = [
            sys.executable,
            "-m",
            "bd_cli.app",
            "defend",
            "--model",
            str(args.work / "model.safetensors"),
            "--defense",
            defense,
            "--partition",
            str(args.partition),
            "--data-dir",
            str(args.data_dir),
            "--device",
            "cpu",
            "--store",
            str(traces / "profile-runs.sqlite"),
            "--format",
            "json",
            "--force",
        ]
        if DEFENSES[defense].get("script") != "clp.py":
            cmd += ["--mitigation-indices", str(rows)]
        for key, value in settings.items():
            cmd += ["--set", f"{key}={value}"]
        folder = traces / defense
        shutil.rmtree(folder, ignore_errors=True)  # one profile per defense: the latest run's
        env = {
            **os.environ,
            "BD_PROFILE": str(folder),
            "BD_PROGRESS": "0",
            "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads),
        }
        began = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"{defense} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        (found,) = (p for p in folder.glob(f"{defense}-*.json") if not p.name.endswith(".trace.json"))
        profile = json.loads(found.read_text())
        profile.update(
            defense=defense,
            partition=args.partition,
            settings=settings,
            shortened=defense in SHORTENED,
            operators=profile["operators"][:60],
        )
        (PROFILES / f"{defense}.json").write_text(json.dumps(profile, indent=1) + "\n")
        print(f"{defense}: profiled {profile['wall_seconds']:.1f} s ({time.perf_counter() - began:.0f} s in all)")


def parity_pair(defense: str, partition: int) -> dict | None:
    """The parity record's pair for the defense (the profiled partition first, then any)."""
    runs = stored_runs()
    keys = sorted(k for k in runs if k.startswith(f"{defense}/"))
    keys.sort(key=lambda k: (k.split("/")[1] != str(partition), "0.818" not in k))
    for key in keys:
        pair = runs[key]
        finished = "acc" in pair["fork"]  # NC's and BTI-DBF's fork runs stop with an error (docs/parity.md)
        if finished and pair["fork"].get("defense_seconds") and (pair.get("bd") or {}).get("defense_seconds"):
            return {"key": key, "fork": pair["fork"]["defense_seconds"], "bd": pair["bd"]["defense_seconds"]}
    return None


def table(args: argparse.Namespace) -> None:
    lines = [
        "| defense | profiled s | conv fwd | conv bwd | BatchNorm | linear | other ops (largest) | "
        "outside ops | fork / bd | ceiling |",
        "|---" * 10 + "|",
    ]
    for path in sorted(PROFILES.glob("*.json")):
        profile = json.loads(path.read_text())
        s = summarize(profile)
        wall = s["wall"]
        share = sum(s[c] for c in CATEGORIES) / wall
        pct = [f"{100 * s[c] / wall:.0f} %" for c in CATEGORIES]
        top = ", ".join(f"{name.removeprefix('aten::')} {100 * sec / wall:.0f}" for name, sec in s["top_other"])
        pair = parity_pair(profile["defense"], profile["partition"])
        ratio = ceiling = "no fork time"
        if pair is not None:
            _, partition, model = pair["key"].split("/")
            ratio = f"{pair['fork'] / pair['bd']:.1f}x (p{partition}, {100 * float(model.split('-')[0]):.1f} % model)"
            ceiling = f"{pair['fork'] / (pair['bd'] * share):.1f}x" if share > 0 else "-"
        name = profile["defense"] + (" (shortened)" if profile.get("shortened") else "")
        lines.append(
            f"| {name} | {wall:.1f} | {' | '.join(pct)} | {100 * s['other'] / wall:.0f} % ({top}) | "
            f"{100 * s['outside'] / wall:.0f} % | {ratio} | {ceiling} |"
        )
    text = "\n".join(lines) + "\n"
    results = HERE / "RESULTS.md"
    page = results.read_text()
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        results.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
        print(f"wrote the table into {results}")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="profile bd's defenses on the parity model")
    go.add_argument("--defenses", required=True, help="comma-separated bd names, e.g. ft,nad")
    go.add_argument("--partition", type=int, default=1)
    go.add_argument("--threads", type=int, default=1)
    go.add_argument("--work", type=Path, default=ROOT.parent / "fork" / "parity")
    go.add_argument("--data-dir", type=Path, default=ROOT.parent / "fork" / "BackdoorBenchmark" / "data" / "cifar10")
    sub.add_parser("table", help="print the summary table of bench/profiles/*.json")
    args = parser.parse_args()
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
