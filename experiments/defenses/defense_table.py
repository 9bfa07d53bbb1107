"""Measure defenses on cached quick-preset attacked models and write docs/defenses.md:
for each defense and attack, the median and range over mitigation partitions of ACC, ASR,
RA, ARR, RDR and the defense's wall time.

Usage: python experiments/defenses/defense_table.py [--defenses fp,clp] [--attacks badnets,blended]
       [--partitions 3] [--compute N] [--force]
Every run is stored in a SQLite result store (the same kind `bd run` writes; committed beside
this file, experiments/defenses/defenses.sqlite), so a rerun only computes what is missing; the table also reads
the example report's store (experiments/report-example/results.sqlite: FP, CLP, BNP, RNP, i-BAU and FT
at SPC 10 come from its mini-grid, the same units). --set name.key=value overrides one setting.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from pathlib import Path

from bd_cli.runner import ExperimentSpec, run_experiment
from bd_core.attacked import AttackSpec, load_data
from bd_core.paths import cache_root
from bd_core.store import ModelCache, ResultStore
from bd_defenses import DEFENSES, describe, settings_added_since

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studies import DOCS, ROOT, spread, training  # noqa: E402

OUT = DOCS / "defenses.md"
STORE = Path(__file__).with_name("defenses.sqlite")
EXTRA_STORES = [ROOT / "experiments" / "report-example" / "results.sqlite"]
FAMILY_ORDER = ["pruning", "masking", "additive", "synthesis", "fine-tuning", "adversarial", "reviewed"]
METRICS = [("acc_post", "ACC"), ("asr_post", "ASR"), ("ra_post", "RA"), ("arr", "ARR"), ("rdr", "RDR")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--arch", default="preact-resnet18")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--attacks", default="badnets,blended")
    parser.add_argument("--defenses", default=",".join(DEFENSES))
    parser.add_argument("--spc", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=3, help="partitions shown in the table")
    parser.add_argument("--compute", type=int, default=None, help="partitions to compute now (default: --partitions)")
    parser.add_argument("--set", action="append", default=[], help="defense.key=value")
    parser.add_argument("--store", type=Path, default=STORE, help="results store the runs are written to")
    parser.add_argument(
        "--force",
        action="store_true",
        help="run the named defenses again, replacing their stored rows (a defense whose "
        "computation changed without a new setting)",
    )
    args = parser.parse_args()
    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        name_key, value = item.split("=", 1)
        name, key = name_key.split(".", 1)
        overrides.setdefault(name, {})[key] = value
    data = load_data(args.dataset)
    cache = ModelCache(cache_root() / "models")
    store = ResultStore(args.store)
    for defense in args.defenses.split(","):
        for attack in args.attacks.split(","):
            for partition in range(args.partitions if args.compute is None else args.compute):
                spec = ExperimentSpec(
                    AttackSpec(args.dataset, args.arch, attack, 0.1, preset=args.preset),
                    defense,
                    spc=args.spc,
                    partition=partition,
                    defense_settings=overrides.get(defense, {}),
                )
                try:
                    run_experiment(spec, data, cache, store, force=args.force)
                except Exception as e:  # recorded as failed in the store; the table goes on
                    print(f"{defense}/{attack}/{partition} failed: {type(e).__name__}: {e}")
            write(args, store)


def non_default_settings(row: dict) -> str:
    defaults = describe(row["defense"])["hyperparameters"]
    chosen = row["config"]["defense_settings"]
    changed = [f"{k}={v}" for k, v in chosen.items() if defaults.get(k) != v]
    # a setting added since the run was stored: the run had that code's behaviour, not the default's
    changed += [f"before {k} existed" for k in settings_added_since(row["defense"], chosen)]
    return ", ".join(changed) or "defaults"


def write(args, store: ResultStore) -> None:
    query = {"dataset": args.dataset, "arch": args.arch, "preset": args.preset, "spc": args.spc, "poison_ratio": 0.1}
    stored = store.query(**query)
    seen = {r["key"] for r in stored}
    for path in EXTRA_STORES:
        if path.exists():
            with ResultStore(path, readonly=True) as extra:
                stored += [r for r in extra.query(**query) if r["key"] not in seen]
    groups: dict[tuple, list] = {}
    for r in stored:
        if r["partition"] < args.partitions and r["attack"] in args.attacks.split(","):
            groups.setdefault((r["defense"], r["attack"], training(r), non_default_settings(r)), []).append(r)
    rows = [(d, a, model, runs, setting) for (d, a, model, setting), runs in sorted(groups.items())]
    by_family: dict[str, list] = {}
    for row in rows:
        by_family.setdefault(describe(row[0])["family"], []).append(row)
    lines = [
        "# Defenses",
        "",
        f"Measured by `python experiments/defenses/defense_table.py` with preset `{args.preset}` on {args.dataset} "
        f"({args.arch}, poison ratio 10 %, target class 0), SPC {args.spc}, partitions 0–{args.partitions - 1}, "
        f"on a 2-core {platform.processor() or platform.machine()} CPU (1 thread per run, runs side by side).",
        "Each cell: median (min–max) over partitions, in percent; ARR and RDR are the survey's Eq. 41/42 "
        "(lower is better); time is the defense's wall time.",
        "",
        "Approximations: Fashion-MNIST stands in for CIFAR-10/GTSRB/Tiny-ImageNet (offline), and the quick "
        "preset shrinks the model (width x0.25), the training data (20k) and attack training (5 epochs); "
        "the defenses themselves run with the survey's settings unless the row says otherwise.",
        "",
    ]
    for attack in args.attacks.split(","):
        models = {training(r): r for r in stored if r["attack"] == attack and r["status"] == "ok"}
        for model, r in sorted(models.items()):
            lines.append(
                f"- {attack} before any defense, model {model}: ACC {100 * r['acc_pre']:.1f}, "
                f"ASR {100 * r['asr_pre']:.1f}, RA {100 * r['ra_pre']:.1f}"
            )
    if any(len({training(r) for r in stored if r["attack"] == a}) > 1 for a in args.attacks.split(",")):
        lines += [
            "",
            "The quick models were trained more than once under the same cache key (the model cache was "
            "rebuilt between work sessions; attack training on a CPU is reproducible for one thread count, "
            "not across thread counts and machines), so the rows come from several models per attack; each "
            "row names its model by that model's ACC / ASR before any defense.",
        ]
    header = "| family | defense | attack | model | " + " | ".join(h for _, h in METRICS) + " | time (s) | settings |"
    lines += ["", header, "|---|---|---|---|" + "---|" * len(METRICS) + "---|---|"]
    for family in FAMILY_ORDER + sorted(set(by_family) - set(FAMILY_ORDER)):
        for defense, attack, model, runs, setting in by_family.get(family, []):
            ok = [r for r in runs if r.get("status") == "ok"]
            cells = [
                spread([r[k] for r in ok], 1.0 if k in ("arr", "rdr") else 100.0, 3 if k in ("arr", "rdr") else 1)
                for k, _ in METRICS
            ]
            t = spread([r["defense_seconds"] for r in ok], 1.0, 1)
            if len(ok) < args.partitions:
                setting += f" ({len(ok)} of {args.partitions} partitions so far)"
            lines.append(
                f"| {family} | {defense} | {attack} | {model} | " + " | ".join(cells) + f" | {t} | {setting} |"
            )
    text = OUT.read_text() if OUT.exists() else ""
    notes = text.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in text else "\n"
    # experiments/defenses/findings.py's block (between the table and the notes) is kept; rerun it for new rows
    found = re.search(r"<!-- findings -->.*<!-- /findings -->\n*", text, flags=re.S)
    OUT.write_text("\n".join(lines) + "\n\n" + (found.group(0) if found else "") + "<!-- notes -->" + notes)


if __name__ == "__main__":
    main()
