"""Write docs/beyond.md's measured tables from experiments/beyond/beyond.sqlite: defender-only tuning
(`name/tuned`) against each defense's defaults, combined defenses against their parts, and
every defense on the ViT. The runs themselves are `bd grid` commands (listed in beyond.md),
stored in experiments/beyond/beyond.sqlite; this script only reads the store.

Usage: python experiments/beyond/beyond.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from bd_core.errors import BdError
from bd_core.models import MODELS
from bd_core.store import ResultStore
from bd_defenses import DEFENSES, create_defense

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studies import DOCS, replace_between, spread, training  # noqa: E402

OUT = DOCS / "beyond.md"
STORE = Path(__file__).with_name("beyond.sqlite")
METRICS = [
    ("acc_post", "ACC", 100.0),
    ("asr_post", "ASR", 100.0),
    ("ra_post", "RA", 100.0),
    ("arr", "ARR", 1.0),
    ("rdr", "RDR", 1.0),
]
COMBINATIONS = ["bnp+ft", "clp+nad", "fp+i-bau"]


def cells(runs: list[dict]) -> str:
    return " | ".join(spread([r[k] for r in runs], scale) for k, _, scale in METRICS)


def model(runs: list[dict]) -> str:
    """The trained instance(s) of the attacked model the runs defended, named as experiments/defenses/defense_table.py
    names them (ACC / ASR before any defense): one configuration was trained twice under one cache
    key, and a comparison is fair only within one instance."""
    return ", ".join(sorted({training(r) for r in runs})) or "–"


def chosen(runs: list[dict]) -> str:
    counts = Counter(
        ", ".join(f"{k}={v:g}" for k, v in r["details"]["defense"]["tuning"]["chosen"].items()) for r in runs
    )
    return "; ".join(f"{setting} ×{n}" for setting, n in sorted(counts.items()))


def grouped(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Runs by (arch, attack, SPC, defense); one per partition, the last stored (a tuned defense
    rerun with other candidates is stored under another key)."""
    latest = {(r["arch"], r["attack"], r["spc"], r["defense"], r["partition"]): r for r in rows}
    groups: dict[tuple, list[dict]] = {}
    for (arch, attack, spc, defense, _), r in latest.items():
        groups.setdefault((arch, attack, spc, defense), []).append(r)
    return groups


def tuning_table(groups: dict[tuple, list[dict]]) -> list[str]:
    lines = [
        "| attack | SPC | defense | runs | model | " + " | ".join(h for _, h, _ in METRICS) + " | chosen |",
        "|---|---|---|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    for (arch, attack, spc, defense), runs in sorted(groups.items()):
        if arch != "preact-resnet18" or not defense.endswith("/tuned") or "+" in defense:
            continue
        base = groups.get((arch, attack, spc, defense.removesuffix("/tuned")), [])
        lines.append(
            f"| {attack} | {spc} | {base[0]['defense'] if base else defense} (defaults) | {len(base)} | "
            f"{model(base)} | {cells(base)} | – |"
        )
        lines.append(
            f"| {attack} | {spc} | **{defense}** | {len(runs)} | {model(runs)} | {cells(runs)} | {chosen(runs)} |"
        )
    return lines


def combination_table(groups: dict[tuple, list[dict]]) -> list[str]:
    lines = [
        "| attack | SPC | defense | runs | model | " + " | ".join(h for _, h, _ in METRICS) + " |",
        "|---|---|---|---|---|" + "---|" * len(METRICS),
    ]
    for combo in COMBINATIONS:
        for (arch, attack, spc, defense), runs in sorted(groups.items()):
            if arch != "preact-resnet18" or defense != combo:
                continue
            for part in combo.split("+"):
                base = groups.get((arch, attack, spc, part), [])
                lines.append(f"| {attack} | {spc} | {part} | {len(base)} | {model(base)} | {cells(base)} |")
            lines.append(f"| {attack} | {spc} | **{combo}** | {len(runs)} | {model(runs)} | {cells(runs)} |")
    return lines


def vit_table(groups: dict[tuple, list[dict]], rows: list[dict]) -> list[str]:
    vit = [r for r in rows if r["arch"] == "vit"]
    if not vit:
        return ["(no ViT runs stored yet)"]
    attacks = sorted({r["attack"] for r in vit}, key=lambda a: (a != "badnets", a))  # BadNets first
    lines = [
        "Each attack on the ViT before any defense (quick preset, poison ratio 10 %):",
        "",
        "| attack | ACC | ASR | RA |",
        "|---|---|---|---|",
    ]
    for attack in attacks:
        pre = next(r for r in vit if r["attack"] == attack and r["acc_pre"] is not None)
        lines.append(
            f"| {attack} | {pre['acc_pre'] * 100:.1f} | {pre['asr_pre'] * 100:.1f} | {pre['ra_pre'] * 100:.1f} |"
        )
    lines += [
        "",
        "Every defense on them (SPC 10, partition 0):",
        "",
        "| defense | attack | ACC | ASR | RA | ARR | RDR | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_unit = {(r["defense"], r["attack"]): r for r in sorted(vit, key=lambda r: r["status"] == "ok")}  # a success wins
    for name in sorted(DEFENSES):
        refusal = None
        try:
            refusal = create_defense(name).refusal(MODELS["vit"].facts, "vit")
        except BdError:
            pass
        if refusal:
            lines.append(f"| {name} | all | refused: {refusal} | | | | | |")
            continue
        for attack in attacks:
            r = by_unit.get((name, attack))
            if r is None:
                if attack == "badnets":
                    lines.append(f"| {name} | {attack} | not run yet | | | | | |")
            elif r["status"] != "ok":
                lines.append(f"| {name} | {attack} | failed: {r['error'].splitlines()[0]} | | | | | |")
            else:
                lines.append(
                    f"| {name} | {attack} | {r['acc_post'] * 100:.1f} | {r['asr_post'] * 100:.1f} | "
                    f"{r['ra_post'] * 100:.1f} | {r['arr']:.3f} | {r['rdr']:.3f} | {r['defense_seconds']:.0f} "
                    f"|"
                )
    return lines


def main(store_path: Path = STORE) -> None:
    with ResultStore(store_path, readonly=True) as store:
        rows = store.query()
    ok = [r for r in rows if r["status"] == "ok"]
    groups = grouped(ok)
    text = OUT.read_text()
    for marker, table in (
        ("tuning", tuning_table(groups)),
        ("combinations", combination_table(groups)),
        ("vit", vit_table(groups, rows)),
    ):
        text = replace_between(text, f"<!-- {marker} -->", f"<!-- /{marker} -->", "\n".join(table))
    OUT.write_text(text)
    print(f"wrote {OUT}: {len(ok)} runs")


if __name__ == "__main__":
    # a path: a snapshot of the store (`sqlite3 experiments/beyond/beyond.sqlite ".backup SNAP"`) while a grid writes it
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else STORE)
