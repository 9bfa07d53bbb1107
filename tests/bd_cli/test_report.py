"""`bd report` on a store of known values: the figures draw what the tables say (their data, not
their pixels), in the survey's group order, with one colour per group, labels that do not
overlap, and a label on every axis; the store reaches pandas, Parquet and LaTeX."""

from __future__ import annotations

import itertools
import math

import matplotlib
import pandas as pd
import pytest
from bd_cli import report
from bd_core.store import ResultStore

matplotlib.use("Agg")

DEFENSES = {"fp": 0.30, "clp": 0.31, "bnp": 0.32, "ft": 0.50, "fst": 0.51, "sau": 0.10}  # typical ASR per defense


def value(defense: str, spc: int, attack: str, partition: int) -> float:
    base = DEFENSES[defense] + {2: 0.2, 10: 0.1, 100: 0.0}[spc] + (0.05 if attack == "blended" else 0.0)
    return min(1.0, base + 0.01 * partition)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "results.sqlite"
    with ResultStore(path) as results:
        for i, (defense, spc, attack, partition) in enumerate(
            itertools.product(DEFENSES, (2, 10, 100), ("blended", "badnets"), range(3))
        ):
            asr = value(defense, spc, attack, partition)
            results.put(
                {
                    "key": f"k{i}",
                    "status": "ok",
                    "dataset": "fashion-mnist",
                    "arch": "preact-resnet18",
                    "attack": attack,
                    "poison_ratio": 0.1,
                    "defense": defense,
                    "spc": spc,
                    "partition": partition,
                    "seed": 0,
                    "preset": "quick",
                    "acc_pre": 0.9,
                    "asr_pre": 0.99,
                    "ra_pre": 0.01,
                    "acc_post": 0.85,
                    "asr_post": asr,
                    "ra_post": 0.9 - asr,
                    "arr": 0.05 + asr / 10,
                    "rdr": asr,
                    "defense_seconds": 1.0,
                    "details": {"defense": {}, "device": "cpu"},
                    "config": {"defense_settings": {"u": 3.0}, "attack": {"attack_settings": {"patch": 3}}},
                }
            )
        results.put({"key": "bad", "status": "failed", "dataset": "fashion-mnist", "defense": "ft", "error": "boom"})
    return path


@pytest.fixture(scope="module")
def frame(store):
    with ResultStore(store, readonly=True) as results:
        return results.to_frame()


def test_to_frame_is_flat_with_metrics_and_settings(store, frame):
    assert len(frame) == 6 * 3 * 2 * 3 and (frame.status == "ok").all()
    for column in (
        "acc_pre",
        "asr_pre",
        "ra_pre",
        "acc_post",
        "asr_post",
        "ra_post",
        "arr",
        "rdr",
        "spc",
        "defense_settings",
        "attack_settings",
    ):
        assert column in frame.columns
    assert frame.defense_settings.iloc[0] == '{"u": 3.0}' and (frame.device == "cpu").all()
    with ResultStore(store, readonly=True) as results:
        assert len(results.to_frame(status=None)) == len(frame) + 1


def _artist(fig, gid):
    found = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]
    assert found, gid
    return found[0]


def test_split_figure_draws_the_tables_medians_in_natural_order_and_one_colour_per_group(frame):
    fig = report.figure_split(frame, "spc", "test")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["SPC 2", "SPC 10", "SPC 100"]  # numbers numerically
    for patch, spc in zip(legend.get_patches(), (2, 10, 100), strict=True):
        box = _artist(fig, f"box|fp|{spc}")
        assert box.get_facecolor() == pytest.approx(patch.get_facecolor())  # legend and boxes agree
        assert box.get_edgecolor() == pytest.approx(patch.get_edgecolor())
    asr_axes = fig.axes[0]
    for defense, spc in itertools.product(DEFENSES, (2, 10, 100)):
        median = next(a for a in asr_axes.get_children() if a.get_gid() == f"median|{defense}|{spc}")
        want = frame[(frame.defense == defense) & (frame.spc == spc)].asr_post.median() * 100
        assert median.get_ydata()[0] == pytest.approx(want)
    report._plt().close(fig)


def test_attacks_follow_the_surveys_letters(frame):
    fig = report.figure_split(frame, "attack", "test")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["A BadNets", "B Blended"]
    report._plt().close(fig)


def test_figure3_marks_families_and_shows_points(frame):
    fig = report.figure3(frame, "test")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["BNP†", "CLP†", "FP†"]  # pruning-type row, in family then name order
    points = _artist(fig, "points|fp")
    assert len(points.get_offsets()) == 18  # every result drawn, even where a box has no spread
    report._plt().close(fig)


def test_figure5_labels_never_overlap_and_rectangles_are_fp_and_ft(frame):
    fig = report.figure5(frame, "test")
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_gid() == "label"]
        assert len(labels) == len(DEFENSES)
        boxes = [t.get_window_extent(renderer) for t in labels]
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)
        rects = {p.get_gid() for p in ax.patches}
        assert {"rect|fp", "rect|ft"} <= rects
    report._plt().close(fig)


def test_every_axis_has_a_label_and_every_figure_its_count(frame):
    for stem, fig in report.figures(frame):
        axes = [ax for ax in fig.axes if ax.get_visible()]
        for ax in axes:
            assert ax.get_ylabel(), (stem, ax)
        assert any(ax.get_xlabel() for ax in axes), stem
        assert f"n = {len(frame)} results" in fig._suptitle.get_text(), stem
        report._plt().close(fig)


def test_tables_parquet_and_latex(frame, tmp_path):
    failed = frame.iloc[:0]
    paths = report.write_tables(frame, failed, tmp_path)
    table = report.summary(frame)
    fp = table[table.defense == "fp"].iloc[0]
    assert fp.ASR_median == pytest.approx(frame[frame.defense == "fp"].asr_post.median())
    q = frame[frame.defense == "fp"].asr_post.quantile([0.25, 0.75])
    assert fp.ASR_iqr == pytest.approx(q[0.75] - q[0.25])
    assert pd.read_parquet(tmp_path / "results.parquet").shape[0] == len(frame)
    tex = (tmp_path / "summary.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "FP$^\\dagger$" in tex and "SAU$^\\ddagger$" in tex
    assert f"{fp.ASR_median * 100:.1f} ({fp.ASR_iqr * 100:.1f})" in tex
    assert "fashion-mnist" in (tmp_path / "summary.md").read_text()
    assert all(p.exists() for p in paths)
    assert not math.isnan(fp.ARR_var)


def test_report_warns_when_one_attacked_model_was_trained_twice(tmp_path):
    """Rows of one attacked model (cache key) computed on two different trainings of it are named,
    with the filter that keeps one; rows stored before the digest existed are left alone."""
    from bd_cli.app import app
    from typer.testing import CliRunner

    path = tmp_path / "r.sqlite"
    with ResultStore(path) as results:
        for i, weights in enumerate(["aaaa000011112222", "bbbb000011112222", "aaaa000011112222", None]):
            results.put(
                {
                    "key": f"k{i}",
                    "status": "ok",
                    "dataset": "fashion-mnist",
                    "arch": "preact-resnet18",
                    "attack": "badnets",
                    "poison_ratio": 0.1,
                    "defense": "clp",
                    "spc": 10,
                    "partition": i,
                    "seed": 0,
                    "preset": "quick",
                    "acc_pre": 0.9,
                    "asr_pre": 0.99,
                    "ra_pre": 0.01,
                    "acc_post": 0.85,
                    "asr_post": 0.5,
                    "ra_post": 0.4,
                    "arr": 0.05,
                    "rdr": 0.4,
                    "defense_seconds": 1.0,
                    "config": {},
                    "details": {"defense": {}, "attacked_model": "47c769", "attacked_model_weights": weights},
                }
            )
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--store", str(path), "--out", str(tmp_path / "out"), "--no-pdf"])
    assert result.exit_code == 0, result.output
    assert "attacked model 47c769 come from 2 trainings" in result.output
    assert "--where attacked_model_weights=DIGEST" in result.output
    one = runner.invoke(
        app,
        [
            "report",
            "--store",
            str(path),
            "--out",
            str(tmp_path / "one"),
            "--no-pdf",
            "--where",
            "attacked_model_weights=aaaa000011112222",
        ],
    )
    assert one.exit_code == 0 and "trainings" not in one.output
