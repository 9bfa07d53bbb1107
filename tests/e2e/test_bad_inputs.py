"""Every bad input a hostile user tried, fed to the real `bd` process: exit status 2, one line on
stderr that names the problem, no traceback, and the results store untouched (rows and bytes)."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def bd(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bd_cli.app", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/bd-pwned-by-batches-meta",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store holding one row, a model file, and data folders broken in every way tried."""
    from bd_core.attacked import AttackSpec
    from bd_core.attacks import BadNets
    from bd_core.attacks.base import PatternTrigger
    from bd_core.data import make_synthetic
    from bd_core.models import create_model
    from bd_core.store import ResultStore, save_model

    root = tmp_path_factory.mktemp("world")
    env = {**os.environ, "BD_CACHE": str(root / "cache"), "BD_PROGRESS": "0", "BD_DATA": str(root / "empty")}
    store = root / "results.sqlite"
    with ResultStore(store) as results:
        results.put(
            {
                "key": "kept",
                "status": "ok",
                "dataset": "synthetic",
                "arch": "preact-resnet18",
                "attack": "badnets",
                "poison_ratio": 0.1,
                "defense": "ft",
                "spc": 10,
                "partition": 0,
                "seed": 0,
                "preset": "quick",
                "acc_pre": 0.9,
                "asr_pre": 0.99,
                "ra_pre": 0.01,
                "acc_post": 0.85,
                "asr_post": 0.3,
                "ra_post": 0.6,
                "arr": 0.0556,
                "rdr": 0.333,
                "defense_seconds": 1.0,
                "details": {},
                "config": {},
            }
        )
    meta = {"arch": "preact-resnet18", "num_classes": 10, "in_channels": 3, "image_size": 32, "width": 0.125}
    model, trigger = (
        create_model("preact-resnet18", 10, 3, 32, 0.125),
        BadNets().fit(make_synthetic("train", n_train=8), 0),
    )
    save_model(root / "no-attack.safetensors", model, meta, trigger)
    save_model(root / "huge.safetensors", model, {**meta, "num_classes": 10**12}, trigger)
    # a complete model file of a 1x28x28 network whose BadNets pattern is 3x5x5
    gray = {
        **meta,
        "in_channels": 1,
        "image_size": 28,
        "metrics": {"acc": 0.9, "asr": 0.9, "ra": 0.1},
        "attack": AttackSpec("synthetic", "preact-resnet18", "badnets").config(),
    }
    save_model(
        root / "misfit-trigger.safetensors",
        create_model("preact-resnet18", 10, 1, 28, 0.125),
        gray,
        PatternTrigger(torch.full((3, 5, 5), 255.0), torch.ones(1, 5, 5)),
    )
    (root / "junk.sqlite").write_bytes(random.Random(1).randbytes(4096))
    (root / "a-file").write_text("not a folder")

    def cifar(name: str, drop: str | None = None, meta_bytes: bytes | None = None) -> Path:
        folder = root / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            if batch != drop:
                with open(folder / batch, "wb") as f:
                    pickle.dump({"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))}, f)
        (folder / "batches.meta").write_bytes(meta_bytes or pickle.dumps({"label_names": [str(i) for i in range(10)]}))
        return root / name

    def fashion(name: str, broken: bytes) -> Path:
        folder = root / name / "fashion-mnist"
        folder.mkdir(parents=True)
        for f in FMNIST.glob("*.gz"):
            shutil.copy(f, folder / f.name)
        (folder / "train-images-idx3-ubyte.gz").write_bytes(broken)
        return root / name

    gtsrb = root / "gtsrb-bad" / "GTSRB"
    for sub in ("Final_Training/Images/00000", "Final_Training/Images/notes", "Final_Test/Images"):
        (gtsrb / sub).mkdir(parents=True)
    (gtsrb / "GT-final_test.csv").write_text("Filename;ClassId\n")
    return {
        "root": root,
        "env": env,
        "store": store,
        "cifar-missing": cifar("cifar-missing", drop="data_batch_3"),
        "cifar-evil-meta": cifar("cifar-evil-meta", meta_bytes=pickle.dumps({"label_names": RunsCode()})),
        # seeded junk, so every run sees the same bytes; seed 454's hold a BYTEARRAY8 claiming
        # 4e18 bytes, which once printed an unraisable SystemError beside the one line
        "cifar-junk-meta": cifar("cifar-junk-meta", meta_bytes=random.Random(454).randbytes(300)),
        "fmnist-random-gz": fashion("fmnist-random-gz", random.Random(2).randbytes(2048)),
        "fmnist-truncated-gz": fashion(
            "fmnist-truncated-gz", FMNIST.joinpath("train-images-idx3-ubyte.gz").read_bytes()[:5000]
        ),
        "gtsrb-bad": root / "gtsrb-bad",
    }


CASES = [
    # (name, arguments with {placeholders}, the words the one line must contain)
    ("store of random bytes", ["report", "--store", "{root}/junk.sqlite"], "is not a bd results file"),
    (
        "store of random bytes (writer)",
        ["run", "--dataset", "synthetic", "--store", "{root}/junk.sqlite"],
        "is not a bd results file",
    ),
    ("store that is a directory", ["run", "--dataset", "synthetic", "--store", "{root}"], "is a directory"),
    ("store under /proc", ["run", "--dataset", "synthetic", "--store", "/proc/bd-results.sqlite"], "/proc/bd-results"),
    (
        "store whose parent is a file",
        ["run", "--dataset", "synthetic", "--store", "{root}/a-file/r.sqlite"],
        "cannot use",
    ),
    (
        "model file without an attack section",
        ["defend", "--model", "{root}/no-attack.safetensors", "--dataset", "synthetic"],
        "no 'attack' section",
    ),
    ("model file with absurd num_classes", ["defend", "--model", "{root}/huge.safetensors"], "num_classes"),
    (
        "model file whose trigger does not fit",
        ["defend", "--model", "{root}/misfit-trigger.safetensors"],
        "trigger does not fit the model's 1x28x28 images",
    ),
    (
        "learning rate not finite",
        ["run", "--dataset", "synthetic", "--defense", "ft", "--set", "lr=inf", "--store", "{store}"],
        "lr must be a finite number, got inf",
    ),
    (
        "absurd learning rate",
        ["run", "--dataset", "synthetic", "--defense", "ft", "--set", "lr=1e30", "--store", "{store}"],
        "lr must be in (0, 1], got 1e+30",
    ),
    (
        "absurd setting of a combined part",
        ["run", "--dataset", "synthetic", "--defense", "bnp+ft", "--set", "ft.momentum=nan", "--store", "{store}"],
        "momentum must be a finite",
    ),
    (
        "missing CIFAR batch",
        ["attack", "--dataset", "cifar10", "--data-dir", "{cifar-missing}"],
        "data_batch_3 is missing",
    ),
    ("malicious batches.meta", ["attack", "--dataset", "cifar10", "--data-dir", "{cifar-evil-meta}"], "batches.meta"),
    ("corrupt batches.meta", ["attack", "--dataset", "cifar10", "--data-dir", "{cifar-junk-meta}"], "batches.meta"),
    (
        "random bytes as .gz",
        ["attack", "--dataset", "fashion-mnist", "--data-dir", "{fmnist-random-gz}"],
        "not a valid .gz file",
    ),
    ("truncated .gz", ["attack", "--dataset", "fashion-mnist", "--data-dir", "{fmnist-truncated-gz}"], "is truncated"),
    ("non-numeric GTSRB class folder", ["attack", "--dataset", "gtsrb", "--data-dir", "{gtsrb-bad}"], "notes"),
    (
        "grid poison ratio not a number",
        ["grid", "--poison-ratio", "abc", "--store", "{store}"],
        "'abc' is not a number",
    ),
    ("grid spc not an integer", ["grid", "--spc", "x", "--store", "{store}"], "'x' is not an integer"),
    ("grid negative partitions", ["grid", "--partitions", "-3", "--store", "{store}"], "at least 1"),
    (
        "target outside the classes",
        ["run", "--dataset", "synthetic", "--target", "99", "--store", "{store}"],
        "target class 99",
    ),
    (
        "unknown defense",
        ["run", "--dataset", "synthetic", "--defense", "nope", "--store", "{store}"],
        "unknown defense",
    ),
    (
        "mitigation indices out of range",
        ["run", "--dataset", "synthetic", "--mitigation-indices", "{root}/a-file", "--store", "{store}"],
        "not an integer index",
    ),
]


@pytest.mark.parametrize("name, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(world, name, args, words):
    before = digest(world["store"])
    filled = [a.format(**{k: v for k, v in world.items() if isinstance(v, (str, Path))}) for a in args]
    result = bd(*filled, env=world["env"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert words in lines[0]
    assert digest(world["store"]) == before  # the one stored row, byte for byte
    assert not Path("/tmp/bd-pwned-by-batches-meta").exists()


def test_a_damaged_dataset_cache_is_rebuilt_from_the_source(world, tmp_path):
    from bd_core.data import load_dataset
    from bd_core.data.datasets import SPECS

    env = {**world["env"], "BD_CACHE": str(tmp_path)}
    data = tmp_path / "data"
    folder = data / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / batch, "wb") as f:
            pickle.dump(
                {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(20)]}, f
            )
    code = (
        "import sys; from bd_core.data import load_dataset; "
        "s = load_dataset('cifar10', 'test', root=__import__('pathlib').Path(sys.argv[1])); print(s.digest())"
    )
    first = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, env=env)
    cached = list((tmp_path / "datasets").glob("cifar10-test-*.safetensors"))
    assert first.returncode == 0 and len(cached) == 1, first.stderr
    cached[0].write_bytes(random.Random(3).randbytes(1000))
    second = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr
    assert "is damaged" in second.stderr and "decoding it again" in second.stderr
    assert second.stdout == first.stdout  # the same images, decoded again
    assert SPECS["cifar10"].cached and load_dataset  # the cached path is the one exercised


def _unshare() -> list[str] | None:
    for cmd in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        try:
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=20).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


UNSHARE = _unshare()
needs_mounts = pytest.mark.skipif(UNSHARE is None, reason="needs unshare to mount a private tmpfs")


@needs_mounts
def test_read_only_store_can_be_read_but_not_written(world, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    cli, store, out = f"{sys.executable} -m bd_cli.app", f"{mount}/results.sqlite", tmp_path
    script = f"""set -e
mount -t tmpfs tmpfs {mount}
cp {world["store"]} {mount}/results.sqlite
mount -o remount,ro {mount}
{cli} report --store {store} --out {tmp_path}/report --no-pdf \
    > {out}/report.out 2> {out}/report.err || echo "report $?" >> {out}/codes
{cli} grid --dry-run --store {store} --dataset synthetic \
    > {out}/dry.out 2> {out}/dry.err || echo "dry $?" >> {out}/codes
{cli} run --dataset synthetic --store {store} > {out}/run.out 2> {out}/run.err || echo "run $?" >> {out}/codes
"""
    subprocess.run([*UNSHARE, "sh", "-c", script], env=world["env"], check=True, timeout=600)
    codes = (tmp_path / "codes").read_text().split("\n") if (tmp_path / "codes").exists() else []
    assert "run 2" in codes and not any(c.startswith(("report", "dry")) for c in codes), codes
    assert "1 results" in (tmp_path / "report.out").read_text()
    assert "1 units" in (tmp_path / "dry.out").read_text() or "units" in (tmp_path / "dry.out").read_text()
    run_err = [line for line in (tmp_path / "run.err").read_text().splitlines() if line.strip()]
    assert len(run_err) == 1 and "cannot write the results file" in run_err[0], run_err


@needs_mounts
def test_disk_full_keeps_the_computed_row(world, tmp_path):
    """The store sits on a 200 KiB tmpfs that is then filled: the row cannot be written, bd says so
    in one line and keeps the row in a side file."""
    from bd_core.attacks import BadNets
    from bd_core.data import make_synthetic
    from bd_core.models import create_model
    from bd_core.store import save_model

    torch.manual_seed(0)
    spec = {
        "format": 1,
        "dataset": "synthetic",
        "arch": "preact-resnet18",
        "attack": "badnets",
        "poison_ratio": 0.1,
        "target": 0,
        "seed": 0,
        "preset": "quick",
    }
    meta = {
        "arch": "preact-resnet18",
        "num_classes": 10,
        "in_channels": 3,
        "image_size": 32,
        "width": 0.125,
        "attack": spec,
        "metrics": {"acc": 0.5, "asr": 0.9, "ra": 0.1},
    }
    model_file = tmp_path / "m.safetensors"
    save_model(
        model_file,
        create_model("preact-resnet18", 10, 3, 32, 0.125),
        meta,
        BadNets().fit(make_synthetic("train", n_train=8), 0),
    )
    mount = tmp_path / "small"
    mount.mkdir()
    env = {**world["env"], "TMPDIR": str(tmp_path)}
    # the disk fills while the defense runs: after bd opened the store, before it writes the row
    script = f"""set -e
mount -t tmpfs -o size=300k tmpfs {mount}
{sys.executable} -c "from bd_core.store import ResultStore; ResultStore('{mount}/results.sqlite').close()"
( set +e; {sys.executable} -m bd_cli.app defend --model {model_file} --defense ft --set epochs=60 \
    --store {mount}/results.sqlite > {tmp_path}/out 2> {tmp_path}/err; echo $? > {tmp_path}/code ) &
for i in $(seq 1 1200); do [ -e {mount}/results.sqlite-shm ] && break; sleep 0.05; done
dd if=/dev/zero of={mount}/filler bs=1k count=1000 2>/dev/null || true
wait
"""
    subprocess.run([*UNSHARE, "sh", "-c", script], env=env, check=True, timeout=600)
    err = (tmp_path / "err").read_text()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert (tmp_path / "code").read_text().strip() == "2", err
    assert "Traceback" not in err and len(errors) == 1, err
    assert "could not write the result" in errors[0] and "full" in errors[0] and "kept in" in errors[0]
    kept = Path(errors[0].split("kept in ")[-1].strip())
    assert kept.exists() and '"status": "ok"' in kept.read_text() and '"defense": "ft"' in kept.read_text()
