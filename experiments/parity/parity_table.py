"""The tables of docs/parity.md, from parity-runs.json (every pair parity.py measured).

Each defense ran in both tools on the same imported model and the same mitigation images
(the fork's own SPC 10 draw for random seeds 0-2, given to bd with --mitigation-indices).
The summary table shows medians over the partitions and the largest per-partition gap; the
detail table every partition. Text between the markers is replaced, the rest of the file kept.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studies import replace_between  # noqa: E402

BEGIN, END = "<!-- parity-table -->", "<!-- /parity-table -->"
DETAIL_BEGIN, DETAIL_END = "<!-- parity-detail -->", "<!-- /parity-detail -->"
TIMING_BEGIN, TIMING_END = "<!-- timing-sitting -->", "<!-- /timing-sitting -->"
POOLS_BEGIN, POOLS_END = "<!-- seed-pools -->", "<!-- /seed-pools -->"
TOLERANCE = 0.05  # 5 points of ASR or ACC


def load_runs(runs_file: Path, order: list[str]) -> dict[str, list[tuple[int, dict]]]:
    """The stored pairs by defense (in the driver's order): (partition, result), keyed in the file
    by defense/partition/model."""
    stored = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    runs: dict[str, list[tuple[int, dict]]] = {}
    for defense in order:
        for key in sorted(k for k in stored if k.split("/")[0] == defense):
            runs.setdefault(defense, []).append((int(key.split("/")[1]), stored[key]))
    return runs


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def by_model(parts: list[tuple[int, dict]]) -> list[tuple[str, dict[int, dict]]]:
    """The partitions of one defense grouped by the attacked model they ran on (its ACC / ASR):
    the fork's attack training gave two models on two machines, and a median over both would
    mix a 61.7 % and an 81.8 % model."""
    groups: dict[str, dict[int, dict]] = {}
    for partition, r in sorted(parts, key=lambda pr: pr[0]):
        model = r.get("model") or {}
        groups.setdefault(f"{pct(model.get('acc'))} / {pct(model.get('asr'))}", {})[partition] = r
    return sorted(groups.items(), key=lambda kv: min(kv[1]))


def summary_rows(runs: dict[str, list[tuple[int, dict]]], defenses: dict[str, dict]) -> list[str]:
    rows = []
    for defense, every in runs.items():
        for model, parts in by_model(every):
            rows.append(summary_row(defense, model, parts, defenses))
    return rows


def summary_row(defense: str, model: str, parts: dict[int, dict], defenses: dict[str, dict]) -> str:
    measured = {p: r for p, r in parts.items() if r.get("bd") and "acc" in r["fork"] and "acc" in r["bd"]}
    pairs = [(r["fork"], r["bd"]) for r in measured.values()]
    # the medians cover only partitions both tools finished; the others are named as pending
    pending = [str(p) for p in parts if p not in measured]
    partitions = ",".join(str(p) for p in measured) + (
        f" ({','.join(pending)}: bd pending)" if pending and measured else ""
    )
    if not pairs:
        partitions = ",".join(str(p) for p in parts)
        failed = next(iter(parts.values()))
        why = (
            "fork failed" if "acc" not in failed["fork"] else "bd not run yet" if not failed.get("bd") else "bd failed"
        )
        return f"| {defense} | {model} | {partitions} | {why} |" + " |" * 12
    cell = {
        side: {m: median([p[i][m] for p in pairs]) for m in ("acc", "asr", "ra")}
        for i, side in enumerate(("fork", "bd"))
    }
    gap = {m: max(abs(f[m] - b[m]) for f, b in pairs) for m in ("acc", "asr")}
    fork_s = median([f.get("defense_seconds") for f, _ in pairs if f.get("defense_seconds") is not None])
    bd_s = median([b["defense_seconds"] for _, b in pairs])
    ratio = f"{fork_s / bd_s:.1f}x" if fork_s and bd_s else "–"
    verdict = parity_verdict([r for r in parts.values() if r.get("bd") and "acc" in r["bd"]])
    shortened = ", ".join(f"{k} {v}" for k, v in defenses[defense].get("bd", {}).items()) or "defaults"
    return (
        f"| {defense} | {model} | {partitions} | {pct(cell['fork']['acc'])} | {pct(cell['bd']['acc'])} | "
        f"{pct(cell['fork']['asr'])} | {pct(cell['bd']['asr'])} | "
        f"{pct(cell['fork']['ra'])} | {pct(cell['bd']['ra'])} | "
        f"{100 * gap['acc']:.1f} | {100 * gap['asr']:.1f} | {seconds(fork_s)} | {seconds(bd_s)} | {ratio} | "
        f"{shortened} | {verdict} |"
    )


def close(fork: dict, bd: dict) -> bool:
    return all(abs(fork[m] - bd[m]) <= TOLERANCE for m in ("acc", "asr"))


def inside_spread(fork: dict, runs: list[dict]) -> bool:
    """The fork's run lies within 5 points of the range bd's runs with several seeds span."""
    return all(
        min(r[m] for r in runs) - TOLERANCE <= fork[m] <= max(r[m] for r in runs) + TOLERANCE for m in ("acc", "asr")
    )


def spreads_meet(result: dict) -> bool:
    """Both tools run with several seeds on the same images: their ranges come within 5 points of
    each other on ACC and on ASR."""
    forks, bds = tool_runs(result, "fork"), tool_runs(result, "bd")
    return all(
        max(min(r[m] for r in forks), min(r[m] for r in bds)) - min(max(r[m] for r in forks), max(r[m] for r in bds))
        <= TOLERANCE
        for m in ("acc", "asr")
    )


def within_bd_spread(result: dict) -> bool:
    return bool(result.get("bd_seeds")) and inside_spread(result["fork"], tool_runs(result, "bd"))


def parity_verdict(results: list[dict]) -> str:
    """Every partition within ±5; else within bd's own seed spread; else the two tools' seed
    spreads meet; else the same algorithm at the fork's chosen value; else explained below."""
    if all(close(r["fork"], r["bd"]) for r in results):
        return "within ±5"
    if all(close(r["fork"], r["bd"]) or within_bd_spread(r) for r in results):
        return "within bd's seed spread ±5"
    if all(
        close(r["fork"], r["bd"])
        or within_bd_spread(r)
        or r.get("fork_seeds")
        and r.get("bd_seeds")
        and spreads_meet(r)
        for r in results
    ):
        return "the tools' seed spreads meet ±5"
    choices = [r.get("bd_at_fork_choice") for r in results]
    if all(c and "acc" in c and close(r["fork"], c) for r, c in zip(results, choices, strict=True)):
        return "within ±5 at the fork's choice; selection rule differs"
    variants = [
        next((v for v in r.get("bd_variants") or [] if "acc" in v and close(r["fork"], v)), None) for r in results
    ]
    if all(variants):
        return f"within ±5 with the fork's {variant_setting(variants[0], results[0])}; see below"
    return "differs: see below"


def variant_setting(variant: dict, result: dict) -> str:
    """The settings a variant run changed against the pair's own bd run."""
    own = (result.get("bd") or {}).get("settings") or {}
    return ", ".join(f"{k}={v}" for k, v in (variant.get("settings") or {}).items() if own.get(k) != v)


def detail_rows(runs: dict[str, list[tuple[int, dict]]]) -> list[str]:
    rows = []
    for defense, parts in runs.items():
        for partition, r in parts:
            f, b = r["fork"], r.get("bd") or {}
            model = r.get("model") or {}
            rows.append(
                f"| {defense} | {partition} | {pct(model.get('acc'))} / {pct(model.get('asr'))} | "
                f"{pct(f.get('acc'))} / {pct(f.get('asr'))} / {pct(f.get('ra'))} | "
                f"{pct(b.get('acc'))} / {pct(b.get('asr'))} / {pct(b.get('ra'))} | "
                f"{seconds(f.get('defense_seconds'))} | {seconds(f.get('evaluation_seconds'))} | "
                f"{seconds(f.get('process_seconds'))} | {seconds(b.get('defense_seconds'))} | "
                f"{seconds(b.get('process_seconds'))} | {extra_runs(r)} |"
            )
    return rows


def extra_runs(result: dict) -> str:
    """bd's further runs of a pair: other seeds on the same images, and the fork's chosen value."""
    parts = []
    if result.get("bd_seeds"):
        seeds = result["bd_seeds"]
        parts.append("bd's other seeds: " + ", ".join(f"{pct(r.get('acc'))}/{pct(r.get('asr'))}" for r in seeds))
    if result.get("fork_seeds"):
        seeds = result["fork_seeds"]
        parts.append("fork's other seeds: " + ", ".join(f"{pct(r.get('acc'))}/{pct(r.get('asr'))}" for r in seeds))
    for variant in result.get("bd_variants") or []:
        if "acc" in variant:
            setting = variant_setting(variant, result)
            parts.append(f"with {setting}: {pct(variant['acc'])}/{pct(variant['asr'])}/{pct(variant['ra'])}")
    choice = result.get("bd_at_fork_choice")
    if choice and "acc" in choice:
        setting = ", ".join(f"{k} {v}" for k, v in (choice.get("settings") or {}).items())
        parts.append(f"at the fork's choice ({setting}): {pct(choice['acc'])}/{pct(choice['asr'])}/{pct(choice['ra'])}")
    return "; ".join(parts) or "–"


def rank_sum(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mann-Whitney U of `a` against `b` (pairs with a > b, ties a half) and its two-sided p from
    the normal approximation with the tie correction: a rank test, because one run of these
    defenses can land anywhere in a 70-point range."""
    u = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b)
    n1, n2 = len(a), len(b)
    n = n1 + n2
    ties = sum(t**3 - t for t in Counter(a + b).values())
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return u, 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)  # continuity-corrected
    return u, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def tool_runs(result: dict, side: str) -> list[dict]:
    """Every finished run of one tool on a pair's images: the first and its further seeds."""
    return [r for r in [result[side], *(result.get(f"{side}_seeds") or [])] if r.get("acc") is not None]


def pool_rows(runs: dict[str, list[tuple[int, dict]]]) -> list[str]:
    """Per defense whose pairs both tools ran with several seeds: every run of each tool pooled
    over those partitions (the same images per partition in both), medians, ranges, and the
    rank test of the two tools' ASRs."""
    rows = []
    for defense, parts in runs.items():
        seeded = [(p, r) for p, r in parts if r.get("fork_seeds") and r.get("bd_seeds")]
        if not seeded:
            continue
        fork = [x for _, r in seeded for x in tool_runs(r, "fork")]
        bd = [x for _, r in seeded for x in tool_runs(r, "bd")]
        u, p = rank_sum([r["asr"] for r in fork], [r["asr"] for r in bd])
        cells = []
        for side in (fork, bd):
            asr = [r["asr"] for r in side]
            cells.append(
                f"{len(side)} | {pct(median([r['acc'] for r in side]))} | {pct(median(asr))} | "
                f"{pct(min(asr))}-{pct(max(asr))}"
            )
        partitions = ",".join(str(p) for p, _ in seeded)
        rows.append(f"| {defense} | {partitions} | {cells[0]} | {cells[1]} | {u:g} | {p:.2f} |")
    return rows


def largest_sitting(timing: dict[str, dict]) -> str | None:
    """The timing sitting (experiments/parity/parity-timing.json keys sitting/defense/partition) that timed the
    most defenses: the one the tables show."""
    counts = Counter(key.split("/")[0] for key in timing)
    return max(counts, key=lambda s: (counts[s], s)) if counts else None


def ratio(fork: dict, bd: dict | None) -> str:
    if not bd or not bd.get("defense_seconds") or not fork.get("defense_seconds"):
        return "–"
    value = fork["defense_seconds"] / bd["defense_seconds"]
    return f"**{value:.1f}x**" if value >= 3 else f"{value:.1f}x"


def acc_asr(run: dict | None) -> str:
    return "–" if not run or "acc" not in run else f"{pct(run['acc'])}/{pct(run['asr'])}"


def timing_rows(timing: dict[str, dict], sitting: str, order: list[str]) -> list[str]:
    """One row per defense of one sitting: the fork, bd fp32 and (where the defense can) bd bf16
    on the same images one after the other; defense seconds, ratios, and each run's ACC/ASR."""
    rows = []
    for defense in order:
        for key in sorted(k for k in timing if k.startswith(f"{sitting}/{defense}/")):
            r = timing[key]
            fork, bd, bf16 = r["fork"], r.get("bd"), r.get("bd_bf16")
            schedule = ", ".join(f"{k} {v}" for k, v in (r.get("schedule") or {}).get("bd", {}).items())
            schedule = schedule or "the parity table's"
            rows.append(
                f"| {defense} | {key.split('/')[2]} | {schedule} | "
                f"{seconds(fork.get('defense_seconds'))} | {seconds((bd or {}).get('defense_seconds'))} | "
                f"{seconds((bf16 or {}).get('defense_seconds'))} | "
                f"{ratio(fork, bd)} | {ratio(fork, bf16)} | {acc_asr(fork)} | {acc_asr(bd)} | {acc_asr(bf16)} |"
            )
    return rows


def timing_table(timing_file: Path, order: list[str]) -> str | None:
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    sitting = largest_sitting(timing)
    if sitting is None:
        return None
    return "\n".join(
        [
            f"Sitting `{sitting}` (experiments/parity/parity-timing.json); seconds of defense time, ACC/ASR in %:",
            "",
            "| defense | partition | schedule (both tools) | fork s | bd fp32 s | bd bf16 s | fork / bd fp32 | "
            "fork / bd bf16 | fork ACC/ASR | bd fp32 ACC/ASR | bd bf16 ACC/ASR |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *timing_rows(timing, sitting, order),
        ]
    )


def write_timing(timing_file: Path, targets: list[Path], order: list[str]) -> None:
    """The largest timing sitting's table, between its markers in each target that has them."""
    table = timing_table(timing_file, order)
    for target in targets:
        text = target.read_text()
        if table is not None and TIMING_BEGIN in text:
            target.write_text(replace_between(text, TIMING_BEGIN, TIMING_END, table))
            print(f"wrote the timing sitting into {target}")


def write_table(runs_file: Path, target: Path, defenses: dict[str, dict]) -> None:
    runs = load_runs(runs_file, list(defenses))
    summary = [
        "| defense | model ACC / ASR | partitions | fork ACC | bd ACC | fork ASR | bd ASR | fork RA | bd RA | "
        "max ΔACC | max ΔASR | fork s | bd s | fork/bd time | schedule (both tools) | parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *summary_rows(runs, defenses),
    ]
    detail = [
        "| defense | partition | model ACC / ASR | fork ACC / ASR / RA | bd ACC / ASR / RA | fork defense s | "
        "fork test-eval s | fork process s | bd defense s | bd process s | further runs (ACC/ASR[/RA]) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *detail_rows(runs),
    ]
    text = target.read_text() if target.exists() else "# Parity with the survey's code\n"
    text = replace_between(text, BEGIN, END, "\n".join(summary))
    text = replace_between(text, DETAIL_BEGIN, DETAIL_END, "\n".join(detail))
    pools = [
        "| defense | partitions | fork runs | fork median ACC | fork median ASR | fork ASR range | bd runs | "
        "bd median ACC | bd median ASR | bd ASR range | Mann-Whitney U (ASR, fork vs bd) | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *pool_rows(runs),
    ]
    text = replace_between(text, POOLS_BEGIN, POOLS_END, "\n".join(pools))
    target.write_text(text)
    print(f"wrote {target}: {len(runs)} defenses")
