"""`bd report`: the survey's figures and tables from a result store.

Figures (the survey's numbering; † marks pruning-type defenses, ‡ fine-tuning-type, as there):
  3  box plots of ASR, RDR and ARR per defense, pruning-type row over fine-tuning-type row
  4  ASR against RDR and ARR, one point per experiment
  5  median ASR against median RDR and ARR per defense, with the rectangles spanned by FP's and
     FT's medians (a defense inside one improves on that baseline in both metrics shown)
  6-9  figure 3 split by SPC, attack (A-H as the survey), architecture, dataset
  10 figure 3 split by poison ratio (the survey's appendix Figure 15)
Every figure is drawn per dataset (file suffix) unless `pool` is asked for, says how many
results it summarises, and draws every result as a point over its box. Tables: median, IQR
and variance per dataset and defense, as CSV, markdown and LaTeX (booktabs); all results as
CSV and Parquet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

METRICS = ("acc_post", "asr_post", "ra_post", "arr", "rdr")
LABELS = {"acc_post": "ACC", "asr_post": "ASR", "ra_post": "RA", "arr": "ARR", "rdr": "RDR"}
AXIS = {
    "asr_post": "ASR (%)",
    "rdr": "RDR (ratio, lower is better)",
    "arr": "ARR (ratio, lower is better)",
    "acc_post": "ACC (%)",
    "ra_post": "RA (%)",
}
PERCENT = {"acc_post", "asr_post", "ra_post"}
SHOWN = ("asr_post", "rdr", "arr")
SPLITS = {
    "spc": ("fig6_spc", "SPC"),
    "attack": ("fig7_attack", "attack"),
    "arch": ("fig8_arch", "architecture"),
    "dataset": ("fig9_dataset", "dataset"),
    "poison_ratio": ("fig10_poison_ratio", "poison ratio"),
}
FLAT = (
    "key",
    "status",
    "dataset",
    "arch",
    "attack",
    "poison_ratio",
    "defense",
    "spc",
    "partition",
    "seed",
    "preset",
    "acc_pre",
    "asr_pre",
    "ra_pre",
    "acc_post",
    "asr_post",
    "ra_post",
    "arr",
    "rdr",
    "defense_seconds",
    "error",
    "precision",
    "attacked_model",
    "attacked_model_weights",
    "device",
)

# the survey's orders and letters (Figures 7-9)
ATTACK_ORDER = ("badnets", "blended", "lf", "sig", "bpp", "inputaware", "ssba", "wanet")
ARCH_ORDER = ("vgg19-bn", "preact-resnet18", "efficientnet-b3", "mobilenetv3-large")
DATASET_ORDER = ("cifar10", "gtsrb", "tiny-imagenet", "fashion-mnist", "synthetic")
SHORT = {
    "badnets": "A BadNets",
    "blended": "B Blended",
    "lf": "C LF",
    "sig": "D SIG",
    "bpp": "E BPP",
    "inputaware": "F IAB",
    "ssba": "G SSBA",
    "wanet": "H WaNet",
    "vgg19-bn": "A VGG",
    "preact-resnet18": "B ResNet",
    "efficientnet-b3": "C EfficientNet",
    "mobilenetv3-large": "D MobileNet",
    "cifar10": "A CIFAR-10",
    "gtsrb": "B GTSRB",
    "tiny-imagenet": "C Tiny-ImageNet",
    "fashion-mnist": "Fashion-MNIST",
}
FAMILY_ORDER = ("pruning", "masking", "additive", "synthesis", "fine-tuning", "adversarial", "combined")
PRUNING_TYPE = {"pruning", "masking", "additive"}  # the survey's Section 3; the rest are its Section 4
MARK = {True: "†", False: "‡"}


# ----------------------------------------------------------------------------- selection


def parse_filters(items: list[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for item in items or []:
        column, eq, values = item.partition("=")
        if not eq or column.strip() not in FLAT:
            raise ValueError(f"--where {item!r}: expected column=value[,value] with column one of {', '.join(FLAT)}")
        filters[column.strip()] = [v.strip() for v in values.split(",")]
    return filters


def select(frame: pd.DataFrame, filters: dict[str, list[str]]) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    for column, wanted in filters.items():
        values = frame[column]
        as_text = values.astype(str).isin(wanted)
        numbers = pd.to_numeric(pd.Series(wanted), errors="coerce").dropna()
        as_number = pd.to_numeric(values, errors="coerce").isin(numbers.tolist()) if len(numbers) else False
        keep &= as_text | as_number
    return frame[keep]


def mixed_trainings(frame: pd.DataFrame) -> list[str]:
    """One line per attacked model whose results were computed on more than one training of it
    (same configuration and cache key, other weights: the cache was rebuilt by other code or on
    another machine). A figure then pools them as it would pool training seeds."""
    lines = []
    known = frame.dropna(subset=["attacked_model", "attacked_model_weights"])
    for model, digests in known.groupby("attacked_model").attacked_model_weights.unique().items():
        if len(digests) > 1:
            lines.append(
                f"the results of attacked model {model} come from {len(digests)} trainings of it (weights "
                f"{', '.join(sorted(digests))}); keep one with --where attacked_model_weights=DIGEST"
            )
    return lines


def families(frame: pd.DataFrame) -> dict[str, str]:
    """defense -> family, from the registry ('combined' for a sequence such as bnp+ft; a plugin
    defense that is not loaded: 'other')."""
    from bd_defenses import family_of

    return {d: family_of(d) for d in frame["defense"].unique()}


def defense_order(frame: pd.DataFrame) -> list[str]:
    fam = families(frame)
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(fam, key=lambda d: (rank.get(fam[d], len(rank)), d))


def marked(defense: str, family: str) -> str:
    """The survey's label: name with † (pruning-type) or ‡ (fine-tuning-type)."""
    unmarked = family in ("other", "combined")  # a sequence of defenses belongs to neither of the survey's types
    return defense.upper() if unmarked else f"{defense.upper()}{MARK[family in PRUNING_TYPE]}"


def natural_order(column: str, values: Iterable[Any]) -> list[Any]:
    """Groups as the survey orders them: attacks A-H, architectures A-D, datasets A-C, numbers numerically."""
    values = list(dict.fromkeys(values))
    known = {"attack": ATTACK_ORDER, "arch": ARCH_ORDER, "dataset": DATASET_ORDER}.get(column)
    if known:
        return sorted(values, key=lambda v: (known.index(v) if v in known else len(known), str(v)))
    try:
        return sorted(values, key=float)
    except (TypeError, ValueError):
        return sorted(values, key=str)


def group_label(column: str, value: Any) -> str:
    if column == "poison_ratio":
        return f"{float(value):.0%}"
    if column == "spc":
        return f"SPC {int(value)}"
    return SHORT.get(str(value), str(value))


# ----------------------------------------------------------------------------- tables


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Median, IQR and variance of every metric per (dataset, defense): the survey's Table layout."""
    grouped = frame.groupby(["dataset", "defense"], sort=False)[list(METRICS)]
    stats = {
        "median": grouped.median(),
        "iqr": grouped.quantile(0.75) - grouped.quantile(0.25),
        "var": grouped.var(ddof=0),
    }
    out = pd.concat({k: v for k, v in stats.items()}, axis=1)
    out.columns = [f"{LABELS[m]}_{stat}" for stat, m in out.columns]
    out.insert(0, "n", grouped.size())
    order = {d: i for i, d in enumerate(defense_order(frame))}
    keys = sorted(out.index, key=lambda k: (natural_order("dataset", frame["dataset"]).index(k[0]), order[k[1]]))
    return out.loc[keys].reset_index()


def _cell(row: pd.Series, metric: str, latex: bool = False) -> str:
    scale, digits = (100, 1) if metric in PERCENT else (1, 3)
    med, iqr = row[f"{LABELS[metric]}_median"] * scale, row[f"{LABELS[metric]}_iqr"] * scale
    return f"{med:.{digits}f} ({iqr:.{digits}f})" if latex else f"{med:.{digits}f} [{iqr:.{digits}f}]"


def write_tables(frame: pd.DataFrame, failed: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = summary(frame)
    fam = families(frame)
    paths = [out / "results.csv", out / "results.parquet", out / "summary.csv", out / "summary.md", out / "summary.tex"]
    everything = pd.concat([frame, failed], ignore_index=True)
    everything.to_csv(paths[0], index=False)
    everything.to_parquet(paths[1], index=False)
    table.to_csv(paths[2], index=False)
    lines = [
        f"# bd report\n\n{len(frame)} successful experiments, {len(failed)} failed.\n",
        "Median [IQR] per dataset and defense; ACC/ASR/RA in percent, ARR/RDR as ratios (lower is better). "
        "† pruning-type, ‡ fine-tuning-type (the survey's families); variances are in summary.csv.\n",
    ]
    for dataset, rows in table.groupby("dataset", sort=False):
        lines += [
            f"## {dataset}\n",
            "| defense | n | " + " | ".join(LABELS[m] for m in METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        lines += [
            f"| {marked(r.defense, fam[r.defense])} | {r.n} | " + " | ".join(_cell(r, m) for m in METRICS) + " |"
            for _, r in rows.iterrows()
        ]
        lines.append("")
    if len(failed):
        lines += ["## Failed units", ""] + [
            f"- {r.defense} / {r.attack} / spc {r.spc} / p{r.partition}: "
            f"{str(r.error or '').splitlines()[0] if r.error else ''}"
            for r in failed.itertuples()
        ]
    paths[3].write_text("\n".join(lines) + "\n")
    paths[4].write_text(latex_table(table, fam, len(frame)))
    return paths


def latex_table(table: pd.DataFrame, fam: dict[str, str], n: int) -> str:
    """booktabs: one block per dataset, a row per defense, median (IQR) of every metric."""
    head = " & ".join(["Defense", "$n$"] + [LABELS[m] + (" (\\%)" if m in PERCENT else "") for m in METRICS])
    lines = [
        "% bd report: median (IQR) per dataset and defense; needs \\usepackage{booktabs}",
        "\\begin{tabular}{l r " + "r " * len(METRICS) + "}",
        "\\toprule",
        head + " \\\\",
        "\\midrule",
    ]
    for i, (dataset, rows) in enumerate(table.groupby("dataset", sort=False)):
        if i:
            lines.append("\\midrule")
        lines.append(f"\\multicolumn{{{2 + len(METRICS)}}}{{l}}{{\\textit{{{latex_escape(dataset)}}}}} \\\\")
        for _, r in rows.iterrows():
            label = latex_escape(r.defense.upper()) + (
                "$^\\dagger$" if fam[r.defense] in PRUNING_TYPE else "$^\\ddagger$"
            )
            lines.append(" & ".join([label, str(int(r.n))] + [_cell(r, m, latex=True) for m in METRICS]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", f"% {n} results", ""]
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    return "".join("\\" + c if c in "&%$#_{}" else c for c in str(text))


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def values(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame[metric].astype(float) * (100 if metric in PERCENT else 1)


def boxes(ax, data: list[list[float]], positions: list[float], width: float, color, gids: list[str]) -> None:
    """Box, whiskers, caps and median in one colour; every value a point on top, so a box of no
    spread (or of one result) is still seen. Artists carry `gid` for tests and readers."""
    shown = [d if d else [math.nan] for d in data]
    parts = ax.boxplot(
        shown,
        positions=positions,
        widths=width,
        patch_artist=True,
        manage_ticks=False,
        showfliers=False,
        medianprops={"color": "black", "linewidth": 1.5},
        boxprops={"facecolor": (*color[:3], 0.35), "edgecolor": color},
        whiskerprops={"color": color},
        capprops={"color": color},
    )
    for box, median, gid in zip(parts["boxes"], parts["medians"], gids, strict=True):
        box.set_gid(f"box|{gid}")
        median.set_gid(f"median|{gid}")
    for d, x, gid in zip(data, positions, gids, strict=True):
        if d:
            offsets = [x + width * 0.3 * (((i * 0.618) % 1) - 0.5) for i in range(len(d))]
            ax.scatter(offsets, d, s=7, color=color, edgecolors="none", alpha=0.8, zorder=3, gid=f"points|{gid}")


def figure3(frame: pd.DataFrame, title: str):
    """Rows pruning-type, fine-tuning-type (and combined defenses, if any) x three metrics, one box
    per defense."""
    plt = _plt()
    fam = families(frame)
    order = defense_order(frame)
    rows = [
        [d for d in order if fam[d] in PRUNING_TYPE],
        [d for d in order if fam[d] not in PRUNING_TYPE and fam[d] != "combined"],
        [d for d in order if fam[d] == "combined"],
    ]
    rows = [r for r in rows if r]
    width = max(9.0, 0.5 * max(len(r) for r in rows) * 3 + 3)
    fig, axes = plt.subplots(len(rows), 3, figsize=(width, 3.3 * len(rows)), squeeze=False)
    palette = plt.colormaps["tab10"]
    for r, names in enumerate(rows):
        for c, metric in enumerate(SHOWN):
            ax = axes[r][c]
            for j, d in enumerate(names):
                color = palette(FAMILY_ORDER.index(fam[d]) if fam[d] in FAMILY_ORDER else 9)
                boxes(ax, [values(frame[frame.defense == d], metric).tolist()], [j], 0.6, color, [d])
            ax.set_xticks(range(len(names)), [marked(d, fam[d]) for d in names], rotation=60, ha="right")
            ax.set_xlim(-0.6, len(names) - 0.4)
            ax.set_ylabel(AXIS[metric])
            ax.set_xlabel("defense")
            ax.grid(axis="y", alpha=0.3)
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor=(*palette(i)[:3], 0.35), edgecolor=palette(i), label=f)
        for i, f in enumerate(FAMILY_ORDER)
        if f in set(fam.values())
    ]
    fig.legend(handles=handles, title="family", loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small")
    fig.suptitle(f"Figure 3: ASR, RDR and ARR per defense, {title} († pruning, ‡ fine-tuning)")
    fig.tight_layout()
    return fig


def figure_split(frame: pd.DataFrame, column: str, title: str):
    """Figures 6-10: for each defense, one box per group value, the groups in the survey's order."""
    plt = _plt()
    fam = families(frame)
    order = defense_order(frame)
    groups = natural_order(column, frame[column])
    palette = plt.colormaps["tab10"]
    width = 0.8 / max(1, len(groups))
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.55 * len(order) * max(2, len(groups)) + 2), 9.5), sharex=True)
    for ax, metric in zip(axes, SHOWN, strict=True):
        for i, g in enumerate(groups):
            mine = frame[frame[column] == g]
            data = [values(mine[mine.defense == d], metric).tolist() for d in order]
            pos = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(order))]
            boxes(ax, data, pos, width * 0.85, palette(i % 10), [f"{d}|{g}" for d in order])
        ax.set_ylabel(AXIS[metric])
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(order)), [marked(d, fam[d]) for d in order], rotation=60, ha="right")
    axes[-1].set_xlabel("defense")
    handles = [
        plt.Rectangle(
            (0, 0),
            1,
            1,
            facecolor=(*palette(i % 10)[:3], 0.35),
            edgecolor=palette(i % 10),
            label=group_label(column, g),
        )
        for i, g in enumerate(groups)
    ]
    axes[0].legend(
        handles=handles, title=SPLITS[column][1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small"
    )
    number = SPLITS[column][0][3:].split("_")[0]
    fig.suptitle(f"Figure {number}: ASR, RDR and ARR per defense by {SPLITS[column][1]}, {title}")
    fig.tight_layout()
    return fig


def figure4(frame: pd.DataFrame, title: str):
    plt = _plt()
    fam = families(frame)
    palette = plt.colormaps["tab20"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, metric in zip(axes, ("rdr", "arr"), strict=True):
        for i, d in enumerate(defense_order(frame)):
            mine = frame[frame.defense == d]
            ax.scatter(
                values(mine, "asr_post"),
                values(mine, metric),
                s=14,
                alpha=0.75,
                color=palette(i % 20),
                label=marked(d, fam[d]),
                gid=f"points|{d}",
            )
        ax.set_xlabel(AXIS["asr_post"])
        ax.set_ylabel(AXIS[metric])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), title="defense")
    fig.suptitle(f"Figure 4: ASR against RDR and ARR, one point per experiment, {title}")
    fig.tight_layout()
    return fig


def figure5(frame: pd.DataFrame, title: str):
    """Median ASR against median RDR and ARR; FP's and FT's medians span the rectangles from the
    origin: a defense inside one improves on that baseline in both metrics of the panel."""
    plt = _plt()
    fam = families(frame)
    order = defense_order(frame)
    med = {d: {m: float(values(frame[frame.defense == d], m).median()) for m in SHOWN} for d in order}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, metric in zip(axes, ("rdr", "arr"), strict=True):
        for base, color in (("fp", "tab:blue"), ("ft", "tab:orange")):
            if base in med:
                ax.add_patch(
                    plt.Rectangle(
                        (0, min(0.0, med[base][metric])),
                        med[base]["asr_post"],
                        abs(med[base][metric]),
                        fill=False,
                        edgecolor=color,
                        linestyle="--",
                        linewidth=1.5,
                        label=f"inside {base.upper()}'s medians",
                        gid=f"rect|{base}",
                    )
                )
        xs, ys = [med[d]["asr_post"] for d in order], [med[d][metric] for d in order]
        ax.scatter(
            xs,
            ys,
            s=36,
            color=[
                plt.colormaps["tab10"](FAMILY_ORDER.index(fam[d]) % 10 if fam[d] in FAMILY_ORDER else 9) for d in order
            ],
            zorder=3,
            gid="medians",
        )
        ax.set_xlabel("median " + AXIS["asr_post"])
        ax.set_ylabel("median " + AXIS[metric])
        ax.set_xlim(-3, 103)
        low, high = min(0.0, *ys), max(0.05, *ys)
        ax.set_ylim(low - 0.08 * (high - low), high + 0.15 * (high - low))
        ax.grid(alpha=0.3)
        place_labels(fig, ax, xs, ys, [marked(d, fam[d]) for d in order])
    if axes[1].get_legend_handles_labels()[0]:  # the rectangles' key, where FP or FT was run
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    fig.suptitle(f"Figure 5: median ASR against median RDR and ARR per defense, {title}")
    fig.tight_layout()
    return fig


def place_labels(fig, ax, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Put each label next to its point where it overlaps no other label and no point: candidate
    offsets at growing distance around the point, the first free one wins (a greedy repel)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = []
    to_display = ax.transData.transform
    for x, y in zip(xs, ys, strict=True):
        px, py = to_display((x, y))
        taken.append((px - 4, py - 4, px + 4, py + 4))
    for (x, y), text in sorted(zip(zip(xs, ys, strict=True), labels, strict=True), key=lambda t: (-t[0][1], t[0][0])):
        placed = None
        for radius in (6, 12, 20, 30, 42, 56, 72, 90, 110):
            for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)):
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                label = ax.annotate(
                    text,
                    (x, y),
                    xytext=(dx * radius, dy * radius),
                    textcoords="offset points",
                    fontsize=8,
                    ha=ha,
                    va=va,
                    gid="label",
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5} if radius > 12 else None,
                )
                box = label.get_window_extent(renderer)
                edges = (box.x0, box.y0, box.x1, box.y1)
                inside = ax.get_window_extent(renderer)
                fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
                if fits and not any(_overlap(edges, t) for t in taken):
                    placed = edges
                    break
                label.remove()
            if placed:
                break
        if placed is None:  # nowhere free: the farthest candidate, still drawn
            label = ax.annotate(text, (x, y), xytext=(8, 8), textcoords="offset points", fontsize=8, gid="label")
            box = label.get_window_extent(renderer)
            placed = (box.x0, box.y0, box.x1, box.y1)
        taken.append(placed)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _save(fig, out: Path, name: str, pdf: bool) -> list[Path]:
    paths = [out / f"{name}.png"] + ([out / f"{name}.pdf"] if pdf else [])
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    _plt().close(fig)
    return paths


def figures(frame: pd.DataFrame, pool: bool = False) -> list[tuple[str, Any]]:
    """(file stem, figure) for every figure: per dataset (stem suffix) unless `pool`."""
    datasets = natural_order("dataset", frame["dataset"])
    if pool:
        scopes = [("", frame, f"{len(datasets)} datasets pooled")]
    else:
        scopes = [(f"-{d}", frame[frame.dataset == d], d) for d in datasets]
    out = []
    for suffix, part, where in scopes:
        title = f"{where}, n = {len(part)} results"
        out.append((f"fig3_box{suffix}", figure3(part, title)))
        out.append((f"fig4_scatter{suffix}", figure4(part, title)))
        out.append((f"fig5_medians{suffix}", figure5(part, title)))
        for column, (stem, _) in SPLITS.items():
            if column != "dataset":
                out.append((f"{stem}{suffix}", figure_split(part, column, title)))
    out.append(("fig9_dataset", figure_split(frame, "dataset", f"n = {len(frame)} results")))
    return out


def draw_figures(frame: pd.DataFrame, out: Path, pdf: bool = True, pool: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem, fig in figures(frame, pool):
        written += _save(fig, out, stem, pdf)
    return written
