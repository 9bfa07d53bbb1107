"""The same-model parity study of docs/parity.md: bd against the survey's own code.

The survey's code is the BackdoorBench fork WhoDunnett/BackdoorBenchmark. It is fetched beside
this project (never committed) and given its own Python environment; experiments/parity/parity_shim.py runs
its scripts on current torch/NumPy on a CPU. This driver contains none of the fork's code: it
prepares data, calls the fork's scripts, calls bd, and writes the table.

    python experiments/parity/parity.py data --fork ../fork/BackdoorBenchmark   # Fashion-MNIST in CIFAR-10's layout
    python experiments/parity/parity.py attack --fork ... --fork-python ../fork/venv/bin/python   # BadNets, 1 epoch
    python experiments/parity/parity.py import --fork ...                                 # bd import of that record
    python experiments/parity/parity.py run    --fork ... --fork-python ... [--defenses clp,ft] [--partitions 0,1,2]
    python experiments/parity/parity.py noise --defenses ft-sam --seeds 300,400   # bd's seed spread on a pair's images
    python experiments/parity/parity.py fork-noise --defenses nad --partitions 1,2        # the fork's own seed spread
    python experiments/parity/parity.py timing --defenses ft,nad --partitions 1 --sitting all-17  # fork, bd fp32/bf16
    python experiments/parity/parity.py table                                             # docs/parity.md

Every run keeps its outputs under --work (default ../fork/parity): the fork's log, the
mitigation indices it drew, its timing, bd's JSON result. Each finished pair is also merged into
experiments/parity/parity-runs.json, which is committed: the tables are written from it, so the measurements
outlive the work folder. `run` skips finished pairs.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECORD = "parity_badnet_preactresnet18"
RUNS_FILE = HERE / "parity-runs.json"  # every measured pair, "defense/partition/model" -> result
TEST_PER_CLASS = 100  # 1 000 test images: the fork evaluates the test set every epoch of most defenses
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]

# The 19 benchmarked defenses, in the order they are run (cheapest first): bd's name -> the
# fork's script and config, "fork": keys written over that config (schedules shortened for a
# 2-core CPU, and cos_t_max so that the fork's cosine schedule, fixed at T_max 100 in its
# code, anneals over the epochs actually run, as bd's does), "bd": the same in bd's settings.
DEFENSES: dict[str, dict] = {
    "clp": {"script": "clp.py", "config": "clp/cifar10.yaml"},
    "bnp": {"script": "bnp.py", "config": "bnp/cifar10.yaml"},
    "fst": {"script": "fst.py", "config": "fst/cifar10.yaml"},  # 15 epochs: its argparse default beats the config's 10
    "ft": {
        "script": "ft.py",
        "config": "ft/default.yaml",
        "fork": {"epochs": 20, "cos_t_max": 20},
        "bd": {"epochs": 20},
    },
    "nad": {"script": "nad.py", "config": "nad/cifar10.yaml", "fork": {"cos_t_max": 10}},
    "fp": {
        "script": "fp.py",
        "config": "fp/cifar10.yaml",
        "fork": {"epochs": 20, "cos_t_max": 20},
        "bd": {"epochs": 20},
    },
    "pbe": {"script": "pbe.py", "config": "pbe/default.yaml"},
    "i-bau": {"script": "i-bau.py", "config": "i-bau/cifar10.yaml"},
    "mm-bd": {"script": "mm-bd.py", "config": "mm-bd/default.yaml"},
    "nft": {"script": "nft.py", "config": "nft/default.yaml", "fork": {"epochs": 20}, "bd": {"epochs": 20}},
    "rnp": {"script": "rnp.py", "config": "rnp/default.yaml", "bd": {"unlearn_threshold": 0.2}},
    "awm": {"script": "awn.py", "config": "awn/default.yaml"},
    "npd": {
        "script": "npd.py",
        "config": "npd/cifar10_preactresnet18.yaml",
        "fork": {"epochs": 20, "cos_t_max": 20},
        "bd": {"epochs": 20},
        "full_test_sets": True,
    },  # its final test is its own code, not the shared one
    # variant: the authors' code adds the perturbation without clamping the image to [0, 1]
    "sau": {
        "script": "sau.py",
        "config": "sau/cifar10.yaml",
        "fork": {"n_rounds": 20},
        "bd": {"rounds": 20},
        "variants": [{"valid_images": False}],
    },
    "ft-sam": {
        "script": "ft-sam.py",
        "config": "ft-sam/cifar10.yaml",
        "fork": {"epochs": 20, "cos_t_max": 20},
        "bd": {"epochs": 20},
    },
    "nc": {
        "script": "nc.py",
        "config": "nc/cifar10.yaml",
        "fork": {"nc_epoch": 20, "epochs": 20, "cos_t_max": 20},
        "bd": {"epochs": 20, "unlearn_epochs": 20},
    },
    "bti-dbf": {
        "script": "btidbf-u.py",
        "config": "btidbf-u/cifar10.yaml",
        "fork": {"preround": 20, "mround": 10, "uround": 10, "ul_round": 10, "nround": 3},
        "bd": {"pretrain_epochs": 20, "mask_epochs": 10, "generator_epochs": 10, "unlearn_epochs": 10, "rounds": 3},
    },
    # ANP: 2000 iterations of 256 images at full width take hours per tool on one core; both run
    # 100 (the fork counts iterations in blocks of print_every)
    "anp": {
        "script": "anp.py",
        "config": "anp/default.yaml",
        "fork": {"nb_iter": 100, "print_every": 100},
        "bd": {"iterations": 100},
    },
    # FMP: the fork perturbs each of the 4 800 channels in turn with full forward passes (hours at
    # 32 images); both rank the channels on 8 images
    "fmp": {"script": "fmp.py", "config": "fmp/default.yaml", "fork": {"adv_dataset_size": 8}, "bd": {"adv_images": 8}},
}


# ----------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def as_cifar_rows(images: np.ndarray) -> np.ndarray:
    """28x28 grey -> 32x32 RGB (2 black pixels of padding, the grey value in every channel), as
    CIFAR-10's rows of 3072 bytes (R plane, G plane, B plane)."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), 3072)


def write_data(fork: Path) -> Path:
    """Fashion-MNIST in CIFAR-10's pickle layout at <fork>/data/cifar10/cifar-10-batches-py:
    the first 50 000 training images in five batches, and 100 test images per class."""
    folder = fork / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:50_000]
    train_y = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:50_000]
    test_x, test_y = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    keep = np.sort(np.concatenate([np.flatnonzero(test_y == c)[:TEST_PER_CLASS] for c in range(10)]))
    test_x, test_y = test_x[keep], test_y[keep]
    batches = [
        (f"data_batch_{i + 1}", train_x[i * 10_000 : (i + 1) * 10_000], train_y[i * 10_000 : (i + 1) * 10_000])
        for i in range(5)
    ] + [("test_batch", test_x, test_y)]
    for name, x, y in batches:
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": [int(v) for v in y],
                    "data": as_cifar_rows(x),
                    "filenames": [f"{i}.png" for i in range(len(y))],
                },
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": FASHION_CLASSES, "num_cases_per_batch": 10_000, "num_vis": 3072}, f)
    print(f"wrote {folder}: 50 000 training and {len(test_y)} test images (Fashion-MNIST, padded to 32x32 RGB)")
    return folder.parent


# ----------------------------------------------------------------------------- running the two tools


SHRUNK_TEST_IMAGES = 20  # the fork's logging-only test evaluations see this many images (parity_shim.py)


def fork_env(out: Path, threads: int, shrink: bool = False, reseed: int | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "BD_PARITY_OUT": str(out),
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "CUDA_VISIBLE_DEVICES": "",
        "BD_PARITY_TEST_IMAGES": str(SHRUNK_TEST_IMAGES if shrink else 0),
        "BD_PARITY_RESEED": "" if reseed is None else str(reseed),
    }
    env.pop("PYTHONPATH", None)
    return env


def run_logged(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    return code, time.perf_counter() - began


def attack(args: argparse.Namespace) -> None:
    """Train the fork's BadNets PreAct-ResNet18: 1 epoch at full width on the 50 000 images."""
    record = args.fork / "record" / RECORD
    if (record / "attack_result.pt").exists():
        print(f"{record} exists")
        return
    record.parent.mkdir(exist_ok=True)  # a fresh clone of the fork has no record/ folder
    cmd = [
        str(args.fork_python),
        str(HERE / "parity_shim.py"),
        str(args.fork / "attack" / "badnet.py"),
        "--yaml_path",
        "../config/attack/prototype/cifar10.yaml",
        "--bd_yaml_path",
        "../config/attack/badnet/default.yaml",
        "--save_folder_name",
        RECORD,
        "--epochs",
        str(args.epochs),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--dataset_path",
        "../data/cifar10",
        "--random_seed",
        "0",
        "--amp",
        "False",
        "--pin_memory",
        "False",
    ]
    code, seconds = run_logged(cmd, args.work / "attack.log", fork_env(args.work / "attack", args.threads))
    print(f"fork attack exit {code} after {seconds:.0f} s; log {args.work / 'attack.log'}")


def import_model(args: argparse.Namespace) -> Path:
    model = args.work / "model.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "bd_cli.app",
        "import",
        str(args.fork / "record" / RECORD),
        "--out",
        str(model),
        "--data-dir",
        str(args.fork / "data" / "cifar10"),
        "--device",
        "cpu",
        "--format",
        "json",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=bd_env(args.threads))
    print(result.stdout or result.stderr)
    (args.work / "import.json").write_text(result.stdout)
    return model


def bd_env(threads: int) -> dict[str, str]:
    return {**os.environ, "BD_PROGRESS": "0", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def fork_choice(defense: str, out: Path) -> dict | None:
    """The value the fork's selection rule chose, as a bd setting: bd then runs the same algorithm
    with that value, so the algorithm and the selection rule are judged separately."""
    log = (out / "fork.log").read_text(errors="replace") if (out / "fork.log").exists() else ""
    if defense == "fp":  # "End prune. Pruned N/512": the fork masks seq_sort[0:N-1], N-1 channels
        found = re.findall(r"End prune\. Pruned (\d+)/", log)
        return {"channels": max(0, int(found[-1]) - 1)} if found else None
    return None


FINAL = re.compile(r"Final test_acc:\s*([0-9.eE+-]+)\s+test_asr:\s*([0-9.eE+-]+)\s+test_ra:\s*([0-9.eE+-]+)")


def fork_config(args: argparse.Namespace, defense: str, out: Path, overrides: dict) -> Path:
    """The fork's config for `defense` with `overrides` (the parity study's keys) written over it
    (a copy in the run's folder; the fork's own files stay as fetched)."""
    import yaml  # the fork's environment has PyYAML; bd's gets it with ray

    config = yaml.safe_load((args.fork / "config" / "defense" / DEFENSES[defense]["config"]).read_text())
    config.update(overrides)
    path = out / "fork-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def accepted_flags(args: argparse.Namespace, script: str) -> set[str]:
    """The command-line flags a fork script defines (its --help, read once)."""
    cache = args.work / "help" / f"{script}.txt"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        command = [str(args.fork_python), str(HERE / "parity_shim.py"), str(args.fork / "defense" / script), "--help"]
        result = subprocess.run(command, capture_output=True, text=True, env=fork_env(cache.parent, args.threads))
        cache.write_text(result.stdout)
    return set(re.findall(r"(--[a-zA-Z_]+)", cache.read_text()))


def run_fork(
    args: argparse.Namespace,
    defense: str,
    partition: int,
    out: Path,
    schedule: dict | None = None,
    reseed: int | None = None,
) -> dict:
    """The fork's defense on partition `partition`'s images; `schedule` replaces the parity
    study's keys (a timing sitting's shorter schedule); `reseed` gives the defense other
    randomness after the same draw of D_m (experiments/parity/parity_shim.py)."""
    spec = DEFENSES[defense]
    overrides = spec.get("fork", {}) if schedule is None else schedule
    wanted = {
        "--yaml_path": str(fork_config(args, defense, out, overrides)),
        "--model": "preactresnet18",
        "--spc": "10",
        "--random_seed": str(partition),
        "--result_base": "../record",
        "--result_file": RECORD,
        "--dataset": "cifar10",
        "--dataset_path": "../data/cifar10",
        "--device": "cpu",
        "--num_workers": "0",
    }
    flags = accepted_flags(args, spec["script"])
    # the fork's scripts let an argparse default win over the config file: a shortened schedule
    # goes on the command line wherever the script defines the flag
    wanted.update({f"--{key}": str(value) for key, value in overrides.items()})
    cmd = [str(args.fork_python), str(HERE / "parity_shim.py"), str(args.fork / "defense" / spec["script"])]
    for flag, value in wanted.items():
        if flag in flags:  # e.g. CLP is data-free and takes no --spc
            cmd += [flag, value]
    for stale in ("final.json", "timing.json", "indices.json"):
        (out / stale).unlink(missing_ok=True)
    shrink = not spec.get("full_test_sets", False)
    code, seconds = run_logged(cmd, out / "fork.log", fork_env(out, args.threads, shrink, reseed))
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
    result = {"exit": code, "process_seconds": round(seconds, 1), **timing}
    if shrink and (out / "final.json").exists():  # the final test, on the full test sets
        result.update(json.loads((out / "final.json").read_text()))
    elif not shrink:
        found = FINAL.findall((out / "fork.log").read_text(errors="replace"))
        if found:
            acc, asr, ra = (float(v) for v in found[-1])
            result.update(acc=acc, asr=asr, ra=ra)
    return result


def mitigation_rows(out: Path) -> list[int] | None:
    """The training rows the fork drew as D_m (train and validation parts), or None for a
    data-free defense that drew none."""
    if not (out / "indices.json").exists():
        return None
    drawn = json.loads((out / "indices.json").read_text())
    return sorted(drawn["train"] + drawn["val"])


def run_bd(
    args: argparse.Namespace,
    defense: str,
    partition: int,
    out: Path,
    extra: dict | None = None,
    precision: str = "fp32",
    schedule: dict | None = None,
) -> dict:
    """bd's defense on the fork's images of `out`; `extra` goes over the parity study's settings,
    `schedule` replaces them (a timing sitting's shorter schedule)."""
    spec = DEFENSES[defense]
    settings = {**(spec.get("bd", {}) if schedule is None else schedule), **(extra or {})}
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
        str(partition),
        "--precision",
        precision,
        "--data-dir",
        str(args.fork / "data" / "cifar10"),
        "--device",
        "cpu",
        "--store",
        str(args.work / "bd-results.sqlite"),
        "--format",
        "json",
        "--force",
    ]
    rows = mitigation_rows(out)
    if rows is not None:
        (out / "mitigation.txt").write_text("\n".join(str(i) for i in rows) + "\n")
        cmd += ["--mitigation-indices", str(out / "mitigation.txt")]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    began = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=bd_env(args.threads))
    seconds = time.perf_counter() - began
    log = (
        "bd-extra.log"
        if extra
        else f"bd-{precision}.log"
        if precision != "fp32"
        else "bd.log"
        if str(partition) == out.name
        else f"bd-seed-{partition}.log"
    )
    (out / log).write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        return {"exit": result.returncode, "process_seconds": round(seconds, 1)}
    row = json.loads(result.stdout)
    return {
        "exit": 0,
        "process_seconds": round(seconds, 1),
        "defense_seconds": row["defense_seconds"],
        "acc": row["acc_post"],
        "asr": row["asr_post"],
        "ra": row["ra_post"],
        "settings": settings,
        "precision": precision,
        "details": row["details"]["defense"],
    }


def attacked_model(args: argparse.Namespace) -> dict:
    """The imported model both tools defend, as bd measured it (the fork's attack training is not
    reproducible run to run on a CPU: the same recipe gave ACC 61.7 % and 81.8 %)."""
    measured = json.loads((args.work / "import.json").read_text())
    return {m: round(measured[m], 4) for m in ("acc", "asr", "ra")}


def stored_runs(record: Path = RUNS_FILE) -> dict[str, dict]:
    return json.loads(record.read_text()) if record.exists() else {}


def run_key(defense: str, partition: int, model: dict) -> str:
    """A pair's key in the record: the fork's attack training gave different models on different
    machines (ACC 81.8 % and 61.7 %), and the same partition is measured on each."""
    return f"{defense}/{partition}/{model['acc']:.3f}-{model['asr']:.3f}"


def keep(
    defense: str,
    partition: int,
    out: Path,
    result: dict,
    record: Path = RUNS_FILE,
    key: str | None = None,
    fields: tuple[str, ...] = (),
) -> None:
    """Write a pair's result into its run folder and into the committed record. With `fields`,
    only those fields of the stored pair are replaced (bd's and the fork's further seeds run side
    by side in two processes, each adding its own field to the same pair)."""
    with open(record.with_suffix(".lock"), "w") as lock:  # runs of two partitions side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = stored_runs(record)
        key = key or run_key(defense, partition, result["model"])
        if fields and key in runs:
            result = {**runs[key], **{f: result[f] for f in fields}}
        runs[key] = result
        record.write_text(json.dumps(dict(sorted(runs.items())), indent=1) + "\n")
        (out / "result.json").write_text(json.dumps(result, indent=1))


def run(args: argparse.Namespace) -> None:
    names = defense_names(args)
    for partition in [int(p) for p in args.partitions.split(",")]:  # every defense once before any twice
        for defense in names:
            out = args.work / "runs" / defense / str(partition)
            result_file = out / "result.json"
            stored = (
                json.loads(result_file.read_text())
                if result_file.exists()
                else stored_runs().get(run_key(defense, partition, attacked_model(args)))
            )
            if (args.bd_only or stored and not stored.get("bd")) and not (out / "fork.log").exists() and stored:
                print(
                    f"{defense} partition {partition}: its fork run folder is gone (mitigation images unknown); "
                    "rerun it with --force",
                    flush=True,
                )
                continue
            if args.bd_only or (stored and not stored.get("bd") and not args.force):
                # bd changed, or its run was interrupted: run bd again against the fork's stored run
                if stored is None or "acc" not in stored["fork"]:
                    continue
                fork = stored["fork"]
            else:
                if stored is not None and not args.force:
                    continue
                out.mkdir(parents=True, exist_ok=True)
                print(f"{defense} partition {partition}: fork ...", flush=True)
                fork = run_fork(args, defense, partition, out)
                print(f"  fork {fork}", flush=True)
                # kept at once: an interrupted bd run is redone by the next `run` without the fork's
                keep(defense, partition, out, {"model": attacked_model(args), "fork": fork, "bd": None})
                if "acc" not in fork:
                    continue
            print(f"{defense} partition {partition}: bd ...", flush=True)
            bd = run_bd(args, defense, partition, out)
            print(f"  bd {bd}", flush=True)
            result = {"model": attacked_model(args), "fork": fork, "bd": bd}
            for variant in DEFENSES[defense].get("variants", []):  # one code difference switched to the fork's
                result.setdefault("bd_variants", []).append(run_bd(args, defense, partition, out, variant))
                print(f"  bd with {variant}: {result['bd_variants'][-1]}", flush=True)
            choice = fork_choice(defense, out)
            if choice is not None:  # the same algorithm, at the value the fork's rule chose
                result["bd_at_fork_choice"] = run_bd(args, defense, partition, out, choice)
                print(f"  bd at the fork's choice {choice}: {result['bd_at_fork_choice']}", flush=True)
            keep(defense, partition, out, result)


def apart(fork: dict, bd: dict) -> bool:
    """A pair more than 5 points apart in ACC or ASR: worth more runs of either tool."""
    return max(abs(fork["acc"] - bd["acc"]), abs(fork["asr"] - bd["asr"])) > 0.05


SEED_OFFSETS = (100, 200)  # further runs of a pair: the same D_m, other seeds of the defense's own randomness


def defense_names(args: argparse.Namespace) -> list[str]:
    return list(DEFENSES) if args.defenses == "all" else [d.strip() for d in args.defenses.split(",")]


def pairs_apart(args: argparse.Namespace):
    """(defense, partition, folder, result) of every stored pair of the current model whose two
    runs are more than 5 points apart: the pairs worth more runs of either tool."""
    model = attacked_model(args)
    for defense in defense_names(args):
        for partition in [int(p) for p in args.partitions.split(",")]:
            result = stored_runs().get(run_key(defense, partition, model))
            if not result or "acc" not in result["fork"] or "acc" not in (result.get("bd") or {}):
                continue
            if apart(result["fork"], result["bd"]):
                yield defense, partition, args.work / "runs" / defense / str(partition), result


def add_further_runs(args: argparse.Namespace, field: str, run_one) -> None:
    """For every pair apart, run one tool again with each --seeds offset not yet stored in the
    pair's `field` (all of them with --force), keeping each run as it ends. run_one(defense,
    partition, folder, offset) returns the run's entry."""
    for defense, partition, folder, result in pairs_apart(args):
        done = {r["seed"]: r for r in result.get(field) or []}
        for offset in [o for o in args.seeds if args.force or o not in done]:
            done[offset] = {**run_one(defense, partition, folder, offset), "seed": offset}
            print(f"{defense} p{partition}: {field} {offset} {done[offset]}", flush=True)
            result[field] = [done[o] for o in sorted(done)]
            keep(defense, partition, folder, result, fields=(field,))


def measured(run: dict) -> dict:
    return {k: run.get(k) for k in ("acc", "asr", "ra", "defense_seconds")}


def noise(args: argparse.Namespace) -> None:
    """For every pair more than 5 points apart in ACC or ASR, run bd again on the same mitigation
    images with other seeds (the seed is base seed + partition, so partition p + 100 and p + 200
    name the same images with other randomness): is the gap within bd's own spread? --seeds
    names the offsets; those already stored are kept unless --force."""
    add_further_runs(
        args,
        "bd_seeds",
        lambda defense, partition, folder, offset: measured(run_bd(args, defense, partition + offset, folder)),
    )


def fork_noise(args: argparse.Namespace) -> None:
    """The fork's own run-to-run spread, where bd's seeds alone do not settle a gap: for every
    stored pair of the current model still more than 5 points apart, the fork again on the same
    mitigation images with other randomness after its draw (--seeds, by default 100 and 200; the
    draw itself follows --random_seed, so the images are the pair's), kept beside bd's seeds."""

    def run_one(defense: str, partition: int, folder: Path, offset: int) -> dict:
        out = folder / f"fork-seed-{offset}"
        out.mkdir(parents=True, exist_ok=True)
        run = run_fork(args, defense, partition, out, reseed=offset)
        pair_rows = mitigation_rows(folder)  # None where the pair's folder is from another machine
        return {**measured(run), "same_images": None if pair_rows is None else mitigation_rows(out) == pair_rows}

    add_further_runs(args, "fork_seeds", run_one)


TIMING_FILE = HERE / "parity-timing.json"  # same-work timing sittings, "sitting/defense/partition" -> runs

# A timing sitting measures time, not results: the four defenses whose parity schedules take
# 20-65 minutes per fork run get shorter ones (the same loops, fewer of their units), equal in
# both tools. The ratio per unit of work is what the sitting compares.
TIMING_SCHEDULES: dict[str, dict] = {
    "anp": {"fork": {"nb_iter": 20, "print_every": 20}, "bd": {"iterations": 20}},
    "fmp": {"fork": {"adv_dataset_size": 2}, "bd": {"adv_images": 2}},
    "sau": {"fork": {"n_rounds": 5}, "bd": {"rounds": 5}},
    "pbe": {"fork": {"training_epochs": 5}, "bd": {"epochs": 5}},
}
FORK_CANNOT_FINISH = ("nc", "bti-dbf")  # docs/parity.md: the fork's scripts stop with an error


def timing(args: argparse.Namespace) -> None:
    """One same-work timing sitting (bench/RESULTS.md): per defense and partition, the fork, then
    bd in fp32, then bd with --precision bf16 where the defense can run in it, one after the
    other on the same images, kept in experiments/parity/parity-timing.json under the sitting's name."""
    from bd_defenses import DEFENSES as DEFENSE_CLASSES  # noqa: PLC0415  (bd's environment runs this driver)

    names = (
        [d for d in DEFENSES if d not in FORK_CANNOT_FINISH]
        if args.defenses == "all"
        else [d.strip() for d in args.defenses.split(",")]
    )
    for partition in [int(p) for p in args.partitions.split(",")]:
        for defense in names:
            key = f"{args.sitting}/{defense}/{partition}"
            if key in stored_runs(TIMING_FILE) and not args.force:
                continue
            out = args.work / "timing" / args.sitting / defense / str(partition)
            out.mkdir(parents=True, exist_ok=True)
            short = TIMING_SCHEDULES.get(defense, {})
            print(f"{key}: fork ...", flush=True)
            result = {"model": attacked_model(args), "fork": run_fork(args, defense, partition, out, short.get("fork"))}
            if short:
                result["schedule"] = short
            if "acc" in result["fork"]:
                result["bd"] = run_bd(args, defense, partition, out, schedule=short.get("bd"))
                if "bf16" in DEFENSE_CLASSES[defense].precisions:  # the registry says which can
                    result["bd_bf16"] = run_bd(
                        args, defense, partition, out, precision="bf16", schedule=short.get("bd")
                    )
            print(f"  {json.dumps({k: v for k, v in result.items() if k != 'model'}, default=str)[:400]}", flush=True)
            keep(defense, partition, out, result, record=TIMING_FILE, key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["data", "attack", "import", "run", "noise", "fork-noise", "timing", "table"])
    parser.add_argument("--fork", type=Path, default=ROOT.parent / "fork" / "BackdoorBenchmark")
    parser.add_argument("--fork-python", type=Path, default=ROOT.parent / "fork" / "venv" / "bin" / "python")
    parser.add_argument("--work", type=Path, default=ROOT.parent / "fork" / "parity")
    parser.add_argument("--defenses", default="all")
    parser.add_argument("--partitions", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=1, help="attack training epochs of the fork")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="run again even where a result is stored")
    parser.add_argument(
        "--seeds",
        default=",".join(str(o) for o in SEED_OFFSETS),
        type=lambda text: [int(o) for o in text.split(",")],
        help="noise/fork-noise: the seed offsets of the further runs (default 100,200)",
    )
    parser.add_argument("--bd-only", action="store_true", help="rerun only bd, against the stored fork runs")
    parser.add_argument(
        "--sitting",
        default=time.strftime("%Y-%m-%d"),
        help="a timing sitting's name in experiments/parity/parity-timing.json (default: today's date)",
    )
    args = parser.parse_args()
    args.fork, args.work = args.fork.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step == "data":
        write_data(args.fork)
    elif args.step == "attack":
        attack(args)
    elif args.step == "import":
        import_model(args)
    elif args.step == "run":
        run(args)
    elif args.step == "noise":
        noise(args)
    elif args.step == "fork-noise":
        fork_noise(args)
    elif args.step == "timing":
        timing(args)
    else:
        from parity_table import write_table, write_timing  # noqa: PLC0415  (experiments/parity/parity_table.py)

        write_table(RUNS_FILE, ROOT / "docs" / "parity.md", DEFENSES)
        write_timing(TIMING_FILE, [ROOT / "docs" / "parity.md", ROOT / "bench" / "RESULTS.md"], list(DEFENSES))


if __name__ == "__main__":
    main()
