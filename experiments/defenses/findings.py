"""Check the survey's qualitative findings on bd's measured results and write them into
docs/defenses.md (between the `findings` markers): each finding stated, the numbers that
decide it, and whether bd's quick-preset results reproduce it.

Reads the example report's mini-grid (experiments/report-example/results.sqlite: BadNets and Blended,
SPC 2/10/100, 3 partitions) and the defense table's store (experiments/defenses/defenses.sqlite: further
defenses at SPC 10). Usage: python experiments/defenses/findings.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from bd_core.config import keyed_settings
from bd_core.store import ResultStore
from bd_defenses import create_defense, family_of, settings_added_since

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STORES = [ROOT / "experiments" / "report-example" / "results.sqlite", HERE / "defenses.sqlite"]
OUT = ROOT / "docs" / "defenses.md"
PRUNING_TYPE = {"pruning", "masking", "additive"}  # the survey's Section 3
STRONGEST = ["sau", "ft-sam", "i-bau", "bti-dbf"]  # the survey's best performers


def load() -> pd.DataFrame:
    frames = []
    for path in STORES:
        if path.exists():
            with ResultStore(path, readonly=True) as store:
                frames.append(store.to_frame())
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("key")
    frame = frame[(frame.dataset == "fashion-mnist") & (frame.preset == "quick") & (frame.poison_ratio == 0.1)]
    return current_code(frame).assign(family=frame.defense.map(family_of))


def current_code(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop the rows stored before one of their defense's settings existed: they measured an older
    version of that defense (docs/defenses.md lists them as such), not the one the findings are about."""
    pairs = zip(frame.defense, frame.defense_settings, strict=True)
    return frame[[not settings_added_since(d, json.loads(settings)) for d, settings in pairs]]


def at_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose defense ran with its paper defaults (the example grid runs FT shorter)."""
    defaults = {d: json.dumps(keyed_settings(create_defense(d)), sort_keys=True) for d in frame.defense.unique()}
    pairs = zip(frame.defense, frame.defense_settings, strict=True)
    return frame[[json.loads(settings) == json.loads(defaults[d]) for d, settings in pairs]]


def one_setting_across_spc(frame: pd.DataFrame) -> pd.DataFrame:
    """For each defense, the rows of the one setting measured at all three SPC values."""
    groups = frame.groupby(["defense", "defense_settings"])
    return groups.filter(lambda g: g.spc.nunique() >= 3)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def fp_rectangle(frame: pd.DataFrame) -> tuple[str, bool | None]:
    """Finding: no pruning method lies inside FP's median rectangle on ASR, RDR and ARR (all three
    medians below FP's)."""
    med = frame.groupby("defense")[["asr_post", "rdr", "arr"]].median()
    if "fp" not in med.index:
        return "FP not measured", None
    fp = med.loc["fp"]
    others = [d for d in med.index if d != "fp" and family_of(d) in PRUNING_TYPE]
    inside = [d for d in others if (med.loc[d] < fp).all()]
    rows = ", ".join(
        f"{d.upper()} {pct(med.loc[d].asr_post)}/{med.loc[d].rdr:.2f}/{med.loc[d].arr:.3f}" for d in others
    )
    text = (
        f"FP's medians (ASR/RDR/ARR): {pct(fp.asr_post)}/{fp.rdr:.2f}/{fp.arr:.3f}; the other pruning-type "
        f"defenses: {rows}. Inside FP's rectangle: {', '.join(d.upper() for d in inside) or 'none'}."
    )
    return text, not inside


def strongest_below_ft(frame: pd.DataFrame) -> tuple[str, bool | None]:
    """Finding: SAU, FT-SAM, i-BAU and BTI-DBF have lower median ASR than FT (SPC 10, per attack)."""
    at10 = at_defaults(frame[frame.spc == 10])
    parts, verdicts = [], []
    for attack, group in at10.groupby("attack"):
        med = group.groupby("defense").asr_post.median()
        if "ft" not in med.index:
            continue
        measured = [d for d in STRONGEST if d in med.index]
        below = [d for d in measured if med[d] < med["ft"]]
        verdicts += [d in below for d in measured]
        cells = ", ".join(f"{d.upper()} {pct(med[d])}" for d in measured)
        parts.append(
            f"{attack}: FT {pct(med['ft'])}; {cells or 'none of the four measured'}"
            f"{' (below FT: ' + (', '.join(d.upper() for d in below) or 'none') + ')' if measured else ''}"
        )
    missing = sorted({d.upper() for d in STRONGEST} - {d.upper() for d in at10.defense.unique()})
    text = "Median ASR at SPC 10, " + "; ".join(parts) + "."
    if missing:
        text += f" Not measured at these settings yet: {', '.join(missing)}."
    return text, (None if not verdicts else True if all(verdicts) else "partly" if any(verdicts) else False)


def low_asr_without_recovery(frame: pd.DataFrame) -> tuple[str, bool | None]:
    """Finding: several defenses lower ASR without restoring RA (RA stays far below ACC)."""
    med = frame.groupby(["defense", "attack"])[["acc_post", "asr_post", "ra_post"]].median()
    hits = med[(med.asr_post < 0.5) & (med.ra_post < med.acc_post - 0.2)]
    names = sorted({d for d, _ in hits.index})
    cells = "; ".join(
        f"{d.upper()} on {a}: ASR {pct(r.asr_post)}, RA {pct(r.ra_post)}, ACC {pct(r.acc_post)}"
        for (d, a), r in hits.iterrows()
    )
    text = f"Median ASR below 50 % with RA more than 20 points under ACC: {cells or 'none'}."
    return text, len(names) >= 2


def pruning_stable_across_spc(frame: pd.DataFrame) -> tuple[str, bool | None]:
    """Finding: pruning-type defenses are more stable across SPC than fine-tuning-type ones: the
    spread (max - min) of their median ASR over SPC 2/10/100 is smaller."""
    frame = one_setting_across_spc(frame)
    full = frame.groupby("defense").spc.nunique()
    names = [d for d in full.index if full[d] >= 3]
    if not names:
        return "no defense measured at all three SPC values", None
    medians = frame[frame.defense.isin(names)].groupby(["defense", "attack", "spc"]).asr_post.median()
    swing = medians.groupby(["defense", "attack"]).agg(lambda s: s.max() - s.min()).groupby("defense").median()
    pruning = swing[[d for d in swing.index if family_of(d) in PRUNING_TYPE]]
    tuning = swing[[d for d in swing.index if family_of(d) not in PRUNING_TYPE]]
    cells = ", ".join(f"{d.upper()} {pct(v)}" for d, v in swing.items())
    text = (
        f"Swing of median ASR across SPC 2/10/100 (points, median over attacks): {cells}. "
        f"Pruning-type median swing {pct(pruning.median())}, fine-tuning-type {pct(tuning.median())}."
    )
    if pruning.empty or tuning.empty:
        return text, None
    return text, bool(pruning.median() < tuning.median())


FINDINGS = [
    ("No pruning method inside FP's median rectangle on ASR, RDR and ARR (survey Sec. 6, Fig. 5)", fp_rectangle),
    ("SAU, FT-SAM, i-BAU and BTI-DBF below FT on median ASR (survey Sec. 6, Fig. 5)", strongest_below_ft),
    ("Low ASR without RA recovery for several methods (survey F3, RDR collapse)", low_asr_without_recovery),
    ("Pruning more stable across SPC than fine-tuning (survey Sec. 6.1, F1)", pruning_stable_across_spc),
]


def main() -> None:
    frame = load()
    lines = [
        "<!-- findings -->",
        "",
        f"## The survey's findings on these results ({len(frame)} results, `python experiments/defenses/findings.py`)",
        "",
        "| finding | bd's numbers | reproduced? |",
        "|---|---|---|",
    ]
    for title, check in FINDINGS:
        text, verdict = check(frame)
        word = {True: "yes", False: "**no**", "partly": "**partly**", None: "not decidable yet"}[verdict]
        lines.append(f"| {title} | {text} | {word} |")
    lines += ["", "<!-- /findings -->"]
    block = "\n".join(lines)
    doc = OUT.read_text()
    if "<!-- findings -->" in doc:
        doc = re.sub(r"<!-- findings -->.*<!-- /findings -->", lambda _: block, doc, flags=re.S)
    else:
        doc = doc.replace("<!-- notes -->", block + "\n\n<!-- notes -->", 1)
    OUT.write_text(doc)
    print(block)


if __name__ == "__main__":
    main()
