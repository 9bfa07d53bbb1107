"""`bd report`: the survey's figures and tables from a result store.

Figure 3: box plots of ASR, RDR and ARR per defense. Figures 6-10: the same split by SPC,
attack, architecture, dataset and poison ratio. Figure 4: ASR against RDR and ARR. Figure 5:
each defense's median (ARR, RDR) with its median ASR, against the rectangles spanned by FP's
and FT's medians (a defense inside a rectangle improves on that baseline in both). Tables:
median, IQR and variance of every metric per defense, as CSV and markdown.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

METRICS = ("acc_post", "asr_post", "ra_post", "arr", "rdr")
LABELS = {"acc_post": "ACC", "asr_post": "ASR", "ra_post": "RA", "arr": "ARR", "rdr": "RDR"}
SPLITS = {"spc": "fig6_spc", "attack": "fig7_attack", "arch": "fig8_arch", "dataset": "fig9_dataset",
          "poison_ratio": "fig10_poison_ratio"}
FLAT = ("key", "status", "dataset", "arch", "attack", "poison_ratio", "defense", "spc", "partition", "seed", "preset",
        "acc_pre", "asr_pre", "ra_pre", "acc_post", "asr_post", "ra_post", "arr", "rdr", "defense_seconds", "error")


def parse_filters(items: list[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for item in items or []:
        column, eq, values = item.partition("=")
        if not eq or column.strip() not in FLAT:
            raise ValueError(f"--where {item!r}: expected column=value[,value] with column one of {', '.join(FLAT)}")
        filters[column.strip()] = [v.strip() for v in values.split(",")]
    return filters


def select(rows: list[dict[str, Any]], filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [r for r in rows if all(str(r.get(c)) in vals or _num_in(r.get(c), vals) for c, vals in filters.items())]


def _num_in(value: Any, wanted: list[str]) -> bool:
    try:
        return any(float(value) == float(w) for w in wanted)
    except (TypeError, ValueError):
        return False


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for defense in sorted({r["defense"] for r in rows}):
        mine = [r for r in rows if r["defense"] == defense]
        row: dict[str, Any] = {"defense": defense, "n": len(mine)}
        for m in METRICS:
            v = [float(r[m]) for r in mine]
            q1, med, q3 = quartiles(v)
            row[f"{LABELS[m]}_median"] = med
            row[f"{LABELS[m]}_iqr"] = q3 - q1
            row[f"{LABELS[m]}_var"] = statistics.pvariance(v)
        out.append(row)
    return out


def write_tables(rows: list[dict[str, Any]], failed: list[dict[str, Any]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.csv", out / "summary.csv", out / "summary.md"]
    with paths[0].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FLAT, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows + failed)
    summary = summary_rows(rows)
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    lines = [f"# bd report\n\n{len(rows)} successful experiments, {len(failed)} failed.\n",
             "Median [IQR] (variance) per defense; ACC/ASR/RA in percent, ARR/RDR as ratios (lower is better).\n",
             "| defense | n | " + " | ".join(LABELS[m] for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for s in summary:
        cells = []
        for m in METRICS:
            scale, digits = (100, 1) if m.endswith("_post") else (1, 3)
            lab = LABELS[m]
            cells.append(f"{s[f'{lab}_median'] * scale:.{digits}f} [{s[f'{lab}_iqr'] * scale:.{digits}f}] "
                         f"({s[f'{lab}_var'] * scale * scale:.{digits + 1}f})")
        lines.append(f"| {s['defense']} | {s['n']} | " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Failed units", ""] + [f"- {r['defense']} / {r['attack']} / spc {r['spc']} / p{r['partition']}: "
                                              f"{(r.get('error') or '').splitlines()[0] if r.get('error') else ''}" for r in failed]
    paths[2].write_text("\n".join(lines) + "\n")
    return paths


def _save(fig, out: Path, name: str, pdf: bool) -> list[Path]:
    paths = [out / f"{name}.png"] + ([out / f"{name}.pdf"] if pdf else [])
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def draw_figures(rows: list[dict[str, Any]], out: Path, pdf: bool = True) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    defenses = sorted({r["defense"] for r in rows})
    written: list[Path] = []
    shown = ("asr_post", "rdr", "arr")

    # Figure 3: box plots per defense
    fig, axes = plt.subplots(1, 3, figsize=(max(9, 1.1 * len(defenses) * 3), 3.6))
    for ax, m in zip(axes, shown, strict=True):
        ax.boxplot([[r[m] for r in rows if r["defense"] == d] for d in defenses], tick_labels=defenses)
        ax.set_title(LABELS[m])
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle("Figure 3: ASR, RDR and ARR per defense")
    written += _save(fig, out, "fig3_box", pdf)

    # Figures 6-10: split by a column
    for column, name in SPLITS.items():
        values = sorted({r[column] for r in rows}, key=str)
        fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.9 * len(defenses) * max(1, len(values))), 9), sharex=True)
        width = 0.8 / max(1, len(values))
        for ax, m in zip(axes, shown, strict=True):
            for i, v in enumerate(values):
                data = [[r[m] for r in rows if r["defense"] == d and r[column] == v] or [float("nan")] for d in defenses]
                pos = [j + (i - (len(values) - 1) / 2) * width for j in range(len(defenses))]
                bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False)
                for box in bp["boxes"]:
                    box.set_facecolor(plt.cm.tab10(i % 10))
                ax.plot([], [], color=plt.cm.tab10(i % 10), label=f"{column}={v}", linewidth=6)
            ax.set_ylabel(LABELS[m])
        axes[0].legend(fontsize="small", ncols=min(len(values), 5))
        axes[-1].set_xticks(range(len(defenses)), defenses, rotation=60)
        fig.suptitle(f"ASR, RDR and ARR per defense by {column}")
        written += _save(fig, out, name, pdf)

    # Figure 4: ASR against RDR and ARR
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, m in zip(axes, ("rdr", "arr"), strict=True):
        for i, d in enumerate(defenses):
            mine = [r for r in rows if r["defense"] == d]
            ax.scatter([r["asr_post"] for r in mine], [r[m] for r in mine], s=12, alpha=0.7,
                       color=plt.cm.tab20(i % 20), label=d)
        ax.set_xlabel("ASR")
        ax.set_ylabel(LABELS[m])
    axes[1].legend(fontsize="x-small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Figure 4: ASR against RDR and ARR (one point per experiment)")
    written += _save(fig, out, "fig4_scatter", pdf)

    # Figure 5: median rectangles against FP and FT
    med = {d: {m: statistics.median([r[m] for r in rows if r["defense"] == d]) for m in shown} for d in defenses}
    fig, ax = plt.subplots(figsize=(7, 5.5))
    x0 = min(0.0, *(med[d]["arr"] for d in defenses)) - 0.01
    y0 = min(0.0, *(med[d]["rdr"] for d in defenses)) - 0.01
    for base, color in (("fp", "tab:blue"), ("ft", "tab:orange")):
        if base in med:  # the bottom-left region: better than the baseline in ARR and RDR
            ax.add_patch(plt.Rectangle((x0, y0), med[base]["arr"] - x0, med[base]["rdr"] - y0, fill=False,
                                       edgecolor=color, linestyle="--",
                                       label=f"{base.upper()} median (ASR {med[base]['asr_post']:.1%})"))
    pts = ax.scatter([med[d]["arr"] for d in defenses], [med[d]["rdr"] for d in defenses],
                     c=[med[d]["asr_post"] for d in defenses], cmap="viridis_r", vmin=0, vmax=1, s=60)
    for d in defenses:
        ax.annotate(d, (med[d]["arr"], med[d]["rdr"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    fig.colorbar(pts, label="median ASR")
    ax.set_xlabel("median ARR")
    ax.set_ylabel("median RDR")
    ax.set_xlim(left=x0)
    ax.set_ylim(bottom=y0)
    ax.legend(fontsize="small", loc="upper right")
    fig.suptitle("Figure 5: median ARR/RDR (colour: median ASR) against FP and FT")
    written += _save(fig, out, "fig5_medians", pdf)
    return written
