"""What a grid will cost, projected from the times stored with earlier results.

A unit's time is its defense's time plus its evaluation's, taken from stored rows of the same
defense, arch, preset and device:
  measured      rows with the same SPC: their median;
  scaled (spc)  rows of other SPCs: linear in SPC through the two nearest (proportional to the
                images when only one SPC was measured);
  scaled (arch) no row on this arch: the time on another arch times the median ratio between the
                two archs over every (defense, SPC) measured on both;
  scaled (device) nothing on this device: the time on another device (as above) times the median
                ratio between the two devices over every (defense, arch, SPC) measured on both;
  unknown       nothing to go on (`bd grid --calibrate` runs one short unit per defense).
Attack trainings take the median training time of cached models of the same dataset, arch and
preset on that device. Wall time on N devices is the total over N, as if units one at a time on
each device: side-by-side units on one GPU (--gpu-share) only make it shorter.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bd_cli.runner.experiment import ExperimentSpec

DEFAULT_DEVICE = "cpu"  # rows stored before bd recorded the device all ran on CPUs

Shape = tuple[str, str, str]  # (defense, arch, preset)


@dataclass(frozen=True)
class Timing:
    seconds: float | None
    source: str  # measured, scaled (spc), scaled (arch), scaled (device), unknown
    how: str = ""  # what it was scaled from


@dataclass
class DeviceProjection:
    device: str
    unit_seconds: float = 0.0
    attack_seconds: float = 0.0
    units: Counter = field(default_factory=Counter)  # how -> units
    attacks_unknown: int = 0
    unknown: list[str] = field(default_factory=list)  # defense/arch/preset with no figure at all

    @property
    def total_seconds(self) -> float:
        return self.unit_seconds + self.attack_seconds

    def wall_seconds(self, devices: int = 1) -> float:
        return self.total_seconds / max(1, devices)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "unit_seconds": round(self.unit_seconds, 1),
            "attack_seconds": round(self.attack_seconds, 1),
            "total_seconds": round(self.total_seconds, 1),
            "units_by_source": dict(self.units),
            "attack_trainings_unknown": self.attacks_unknown,
            "unknown": self.unknown,
        }


class CostModel:
    """Measured unit times by device, from result rows (dicts as `ResultStore.query` returns)."""

    def __init__(self, rows: Iterable[dict[str, Any]], trainings: Iterable[dict[str, Any]] = ()) -> None:
        self.times: dict[tuple[str, Shape], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            if row.get("status") != "ok" or row.get("defense_seconds") is None or row.get("spc") is None:
                continue
            details = row.get("details") or {}
            seconds = float(row["defense_seconds"]) + float(details.get("evaluate_seconds") or 0.0)
            shape = (row["defense"], row["arch"], row["preset"])
            self.times[details.get("device") or DEFAULT_DEVICE, shape][int(row["spc"])].append(seconds)
        self._memo: dict[tuple, Any] = {}  # medians and ratios: the rows do not change, a grid asks 10^5 times
        self.trainings: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
        for meta in trainings:  # attacked models' metadata
            report, attack = meta.get("training") or {}, meta.get("attack") or {}
            if report.get("train_seconds") is not None:
                self.trainings[
                    report.get("device") or DEFAULT_DEVICE,
                    attack.get("dataset"),
                    meta.get("arch"),
                    attack.get("preset"),
                ].append(float(report["train_seconds"]))

    def devices(self) -> list[str]:
        return sorted({device for device, _ in self.times} | {device for device, *_ in self.trainings})

    def unit(self, device: str, defense: str, arch: str, preset: str, spc: int) -> Timing:
        timing = self._on_device(device, defense, arch, preset, spc)
        if timing.seconds is not None:
            return timing
        for other, factor in self._device_factors(device, preset):
            base = self._on_device(other, defense, arch, preset, spc)
            if base.seconds is not None:
                return Timing(base.seconds * factor, "scaled (device)", f"{other} x{factor:.3g}")
        return Timing(None, "unknown")

    def _on_device(self, device: str, defense: str, arch: str, preset: str, spc: int) -> Timing:
        timing = self._same_arch(device, (defense, arch, preset), spc)
        if timing.seconds is not None:
            return timing
        for other, factor in self._arch_factors(device, arch, preset):
            base = self._same_arch(device, (defense, other, preset), spc)
            if base.seconds is not None:
                return Timing(base.seconds * factor, "scaled (arch)", f"{other} x{factor:.3g}")
        return Timing(None, "unknown")

    def _same_arch(self, device: str, shape: Shape, spc: int) -> Timing:
        measured = self.times.get((device, shape))
        if not measured:
            return Timing(None, "unknown")
        if spc in measured:
            return Timing(statistics.median(measured[spc]), "measured")
        near = sorted(measured, key=lambda s: (abs(s - spc), s))[:2]
        if len(near) == 1:
            s = near[0]
            return Timing(statistics.median(measured[s]) * spc / s, "scaled (spc)")
        (s1, s2), (t1, t2) = near, (statistics.median(measured[near[0]]), statistics.median(measured[near[1]]))
        slope = (t2 - t1) / (s2 - s1)
        floor = min(t1, t2) * min(1.0, spc / min(s1, s2))  # never below proportional scaling
        return Timing(max(floor, t1 + slope * (spc - s1)), "scaled (spc)")

    def _remembered(self, key: tuple, compute) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _medians(self, preset: str) -> dict[tuple[str, str, str, int], float]:
        """Median time by (device, defense, arch, SPC) for one preset."""
        return self._remembered(
            ("medians", preset),
            lambda: {
                (device, shape[0], shape[1], spc): statistics.median(ts)
                for (device, shape), by_spc in self.times.items()
                if shape[2] == preset
                for spc, ts in by_spc.items()
            },
        )

    def _arch_factors(self, device: str, arch: str, preset: str) -> list[tuple[str, float]]:
        """(other arch, median ratio of this arch's time to it) on this device, over the (defense,
        SPC) measured on both."""
        return self._remembered(("arch", device, arch, preset), lambda: self._arch_ratios(device, arch, preset))

    def _arch_ratios(self, device: str, arch: str, preset: str) -> list[tuple[str, float]]:
        mine: dict = {}
        theirs: dict = defaultdict(dict)
        for (d, defense, a, spc), m in self._medians(preset).items():
            if d == device:
                (mine if a == arch else theirs[a])[defense, spc] = m
        return _ratios(mine, theirs)

    def _device_factors(self, device: str, preset: str) -> list[tuple[str, float]]:
        """(other device, median ratio of this device's time to it), over the (defense, arch,
        SPC) measured on both."""
        return self._remembered(("device", device, preset), lambda: self._device_ratios(device, preset))

    def _device_ratios(self, device: str, preset: str) -> list[tuple[str, float]]:
        mine: dict = {}
        theirs: dict = defaultdict(dict)
        for (d, defense, a, spc), m in self._medians(preset).items():
            (mine if d == device else theirs[d])[defense, a, spc] = m
        return _ratios(mine, theirs)

    def training(self, device: str, dataset: str, arch: str, preset: str) -> float | None:
        times = self.trainings.get((device, dataset, arch, preset))
        return statistics.median(times) if times else None

    def project(self, units: list[ExperimentSpec], attacks_to_train: Iterable[Any], device: str) -> DeviceProjection:
        projection = DeviceProjection(device)
        for unit in units:
            a = unit.attack
            timing = self.unit(device, unit.defense, a.arch, a.preset, unit.spc or 0)
            projection.units[timing.source] += 1
            if timing.seconds is None:
                name = f"{unit.defense}/{a.arch}/{a.preset}"
                if name not in projection.unknown:
                    projection.unknown.append(name)
            else:
                projection.unit_seconds += timing.seconds
        for attack in attacks_to_train:
            seconds = self.training(device, attack.dataset, attack.arch, attack.preset)
            if seconds is None:
                projection.attacks_unknown += 1
            else:
                projection.attack_seconds += seconds
        return projection


def _ratios(mine: dict, theirs: dict[str, dict]) -> list[tuple[str, float]]:
    """[(other, median of mine/theirs over the settings both have)], most shared settings first."""
    found = []
    for other, times in theirs.items():
        ratios = [mine[k] / times[k] for k in mine.keys() & times.keys() if times[k] > 0]
        if ratios:
            found.append((len(ratios), other, statistics.median(ratios)))
    return [(other, ratio) for _, other, ratio in sorted(found, key=lambda x: (-x[0], x[1]))]


def calibration_units(units: list[ExperimentSpec], model: CostModel, device: str) -> list[ExperimentSpec]:
    """One unit per (defense, arch, preset) that has no stored time on `device`: the smallest SPC,
    first partition. They are ordinary units of the grid (stored, and skipped by the full run)."""
    chosen: dict[Shape, ExperimentSpec] = {}
    for unit in sorted(units, key=lambda u: (u.spc or 0, u.partition)):
        shape = (unit.defense, unit.attack.arch, unit.attack.preset)
        if shape not in chosen and not model.times.get((device, shape)):
            chosen[shape] = unit
    return list(chosen.values())


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
