"""`--tune`: a tunable defense's decisive setting chosen from its candidates by the defender's
clean-data signals alone, recorded with the signals that chose it."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from bd_core.data import make_synthetic, mitigation_set
from bd_core.errors import BdError
from bd_core.models import create_model
from bd_defenses import DEFENSES, Context, Defense, MitigationData, create_defense, tunable_names, with_tuning
from bd_defenses.tuning import Tuned, choose


def test_every_tunable_defense_lists_its_default_among_ordered_candidates():
    assert {"fp", "anp", "clp", "bnp", "ft", "ft-sam", "nad", "sau", "i-bau", "nc"} <= set(tunable_names())
    for name in tunable_names():
        cls = DEFENSES[name]
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert len(cls.tune) >= 3, name
        assert all(set(c) <= set(fields) for c in cls.tune), name
        assert any(all(fields[k] == v for k, v in c.items()) for c in cls.tune), f"{name}: the default is a candidate"


def test_the_candidates_are_part_of_the_stored_settings():
    """Results made with other candidates are stored under another key, never reused."""
    tuned = create_defense("clp/tuned")
    assert list(dataclasses.asdict(tuned)["candidates"]) == [{"u": 4.0}, {"u": 3.0}, {"u": 2.0}]
    other = Tuned(tuned.inner, candidates=({"u": 1.0}, {"u": 3.0}))
    assert dataclasses.asdict(other) != dataclasses.asdict(tuned)


def test_rule_takes_the_strongest_candidate_within_the_tolerance():
    signals = [{"acc": 0.90}, {"acc": 0.89}, {"acc": 0.80}]
    assert choose(signals, 0.02) == 1  # the last is 10 points below the best
    assert choose(signals, 0.2) == 2
    assert choose([{"acc": 0.5}, {"acc": 0.9}, {"acc": 0.5}], 0.0) == 1  # the best is always allowed


def test_names_and_refusals():
    assert with_tuning("bnp+pbe") == "bnp/tuned+pbe"
    assert create_defense("CLP/Tuned").name == "clp/tuned"
    with pytest.raises(BdError, match="no tunable setting"):
        create_defense("pbe/tuned")
    with pytest.raises(BdError, match="no tunable setting"):
        with_tuning("pbe")
    with pytest.raises(BdError, match="only variant"):
        create_defense("clp/best")


def test_selection_sees_only_the_defenders_data():
    """The API boundary: a tuned defense is called as any defense is, with the model, the clean
    mitigation set and a context that holds run settings only (device, seed, arithmetic, and the
    folder where a tuned unit keeps its finished candidates' signals)."""
    params = list(inspect.signature(Tuned.__call__).parameters)
    assert params == ["self", "model", "data", "ctx"]
    assert {f.name for f in dataclasses.fields(MitigationData)} == {"clean", "unlabeled"}
    assert {f.name for f in dataclasses.fields(Context)} == {"device", "seed", "record", "precision", "trials"}


def test_tuned_clp_records_its_candidates_and_follows_the_rule():
    torch.manual_seed(0)
    clean = mitigation_set(make_synthetic("train", n_train=300, size=28, channels=1), 10, 0)
    model = create_model("preact-resnet18", 10, 1, 28, 0.125).eval()
    defense = create_defense("clp/tuned", {"tolerance": "0.05"})
    ctx = Context(seed=1)
    out = defense(copy.deepcopy(model), MitigationData(clean), ctx)
    tuning = ctx.record["tuning"]
    signals = tuning["candidates"]
    assert [c["settings"] for c in signals] == [{"u": 4.0}, {"u": 3.0}, {"u": 2.0}]
    chosen = signals.index(next(c for c in signals if c["settings"] == tuning["chosen"]))
    assert chosen == choose(signals, 0.05)
    for c in signals:
        assert 0 <= c["acc"] <= 1 and 0 <= c["agreement"] <= 1 and c["entropy"] >= 0 and 0 < c["confidence"] <= 1
    # the result is the chosen candidate applied on its own (all 100 images served as the check set)
    alone = create_defense("clp", tuning["chosen"])(copy.deepcopy(model), MitigationData(clean), Context(seed=1))
    for (name, a), b in zip(out.state_dict().items(), alone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # a milder u prunes no more channels than a stronger one, so the candidates differ as ordered
    pruned = [
        create_defense("clp", c["settings"])(copy.deepcopy(model), MitigationData(clean), Context(seed=1))
        for c in signals
    ]
    zeros = [
        sum(int((m.weight == 0).sum()) for m in p.modules() if isinstance(m, torch.nn.BatchNorm2d)) for p in pruned
    ]
    assert zeros == sorted(zeros)


def test_tuned_on_a_held_out_split_reruns_the_choice_on_all_images():
    """With 100+ held-out images the candidates fit on the rest and the chosen setting then runs on all of D_m."""
    torch.manual_seed(0)
    clean = mitigation_set(make_synthetic("train", n_train=1200, size=28, channels=1), 100, 0)
    model = create_model("preact-resnet18", 10, 1, 28, 0.125).eval()
    ctx = Context(seed=0)
    out = create_defense("bnp/tuned")(copy.deepcopy(model), MitigationData(clean), ctx)
    assert ctx.record["tuning"]["check"].startswith("held-out 200 of 1000")
    alone = create_defense("bnp", ctx.record["tuning"]["chosen"])(
        copy.deepcopy(model), MitigationData(clean), Context(seed=0)
    )
    for (name, a), b in zip(out.state_dict().items(), alone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_tuned_anp_learns_its_masks_once_and_each_candidate_equals_running_it_alone(
    monkeypatch, backdoored, synthetic_data
):
    """ANP's tolerance acts only after its mask optimisation: the candidates share that costly
    stage, and every candidate's model and record are exactly what running it alone gives."""
    from bd_defenses.anp import ANP

    _, attacked, _, _ = backdoored
    model, clean = attacked.model, mitigation_set(synthetic_data.train, 2, 0)
    anp = create_defense("anp", {"iterations": "30", "mask_lr": "0.2"})
    candidates = ({"acc_ratio": 0.0}, {"acc_ratio": 0.1}, {"acc_ratio": 1.0})
    learned, learn_masks = [], ANP.learn_masks
    monkeypatch.setattr(ANP, "learn_masks", lambda *a: (learned.append(1), learn_masks(*a))[1])
    torch.manual_seed(3)  # ANP's random starts come from torch's global generator, as the runner seeds it
    shared = anp.run_candidates(candidates, model, MitigationData(clean), Context(seed=1))
    assert len(learned) == 1
    for (out, record), settings in zip(shared, candidates, strict=True):
        torch.manual_seed(3)
        ctx = Context(seed=1)
        alone = dataclasses.replace(anp, **settings)(copy.deepcopy(model), MitigationData(clean), ctx)
        assert record == ctx.record
        assert_same_weights(out, alone)
    pruned = [record["pruned"] for _, record in shared]
    assert pruned[0] <= pruned[1] <= pruned[2] and pruned[0] < pruned[2]  # the tolerance was what differed


def test_tuned_nc_reverse_engineers_once_and_each_candidate_equals_running_it_alone(
    monkeypatch, backdoored, synthetic_data
):
    """NC's threshold acts only after reverse-engineering every class: the candidates share it, and
    candidates that flag the same classes share one unlearning; each equals running it alone."""
    from bd_defenses.nc import NC

    _, attacked, _, _ = backdoored
    clean = mitigation_set(synthetic_data.train, 2, 0)
    nc = create_defense("nc", {"epochs": "10", "batch_size": "20", "unlearn_epochs": "3"})
    # none flagged; every class below the median with a positive index; the same set again
    candidates = ({"anomaly_threshold": 1e6}, {"anomaly_threshold": 0.01}, {"anomaly_threshold": 0.001})
    calls, reverse_engineer = [], NC.reverse_engineer
    monkeypatch.setattr(NC, "reverse_engineer", lambda *a: (calls.append(1), reverse_engineer(*a))[1])
    torch.manual_seed(4)
    shared = nc.run_candidates(candidates, attacked.model, MitigationData(clean), Context(seed=2))
    assert len(calls) == 1
    flagged = [record["flagged"] for _, record in shared]
    assert flagged[0] == [] and flagged[1] == flagged[2] != []
    assert shared[1][0] is shared[2][0]  # one unlearning for the same flagged classes
    for (out, record), settings in zip(shared, candidates, strict=True):
        torch.manual_seed(4)
        ctx = Context(seed=2)
        alone = dataclasses.replace(nc, **settings)(copy.deepcopy(attacked.model), MitigationData(clean), ctx)
        assert record == ctx.record
        assert_same_weights(out, alone)
    assert_same_weights(shared[0][0], attacked.model)  # nothing flagged: the model unchanged


def test_tuned_uses_the_shared_candidate_runs(monkeypatch):
    """`--tune` reaches the shared first stage of ANP and NC, candidates varying anything else run
    each alone, and the tuned result equals running the chosen setting alone."""
    from bd_defenses.anp import ANP

    assert DEFENSES["anp"].second_stage_settings == {"acc_ratio"}
    assert DEFENSES["nc"].second_stage_settings == {"anomaly_threshold"}
    clean = mitigation_set(make_synthetic("train", n_train=300, size=28, channels=1), 10, 0)
    model = create_model("preact-resnet18", 10, 1, 28, 0.125).eval()
    ctx = Context(seed=1)
    torch.manual_seed(0)
    out = create_defense("anp/tuned", {"iterations": "5"})(copy.deepcopy(model), MitigationData(clean), ctx)
    torch.manual_seed(0)
    alone_ctx = Context(seed=1)
    alone = create_defense("anp", {"iterations": "5", **ctx.record["tuning"]["chosen"]})(
        copy.deepcopy(model), MitigationData(clean), alone_ctx
    )
    assert_same_weights(out, alone)
    assert {k: v for k, v in ctx.record.items() if k != "tuning"} == alone_ctx.record
    learned, learn_masks = [], ANP.learn_masks
    monkeypatch.setattr(ANP, "learn_masks", lambda *a: (learned.append(1), learn_masks(*a))[1])
    candidates = ({"acc_ratio": 0.1}, {"acc_ratio": 0.1, "mask_lr": 0.1})  # the second changes the masks too
    create_defense("anp", {"iterations": "2"}).run_candidates(candidates, model, MitigationData(clean), Context(seed=1))
    assert len(learned) == 2


@dataclass(frozen=True)
class Jitter(Defense):
    """A stand-in defense that draws from torch's global generator, as ANP does: a resumed tuned
    unit must hand each candidate the generator state an unstopped run would."""

    name: ClassVar[str] = "jitter"
    family: ClassVar[str] = "test"
    paper: ClassVar[str] = "test"
    tune: ClassVar[tuple[dict[str, Any], ...]] = ({"scale": 0.01}, {"scale": 0.02}, {"scale": 0.05})
    scale: float = 0.02

    def __call__(self, model, data, ctx):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * self.scale)
        ctx.report(draw=float(torch.rand(())))
        return model


class Stop(Exception):
    pass


def stop_jitter_once_at(call_number: int, monkeypatch) -> list[float]:
    """Make Jitter's `call_number`-th call raise Stop (once); returns the scales it is called with."""
    calls, call = [], Jitter.__call__

    def stopping(self, *a):
        calls.append(self.scale)
        if len(calls) == call_number and not getattr(stopping, "done", False):
            stopping.done = True
            raise Stop
        return call(self, *a)

    monkeypatch.setattr(Jitter, "__call__", stopping)
    return calls


def held_out_case():
    torch.manual_seed(0)  # 500 images: the smallest set with a held-out part (100 images)
    clean = mitigation_set(make_synthetic("train", n_train=600, size=28, channels=1), 50, 0)
    return create_model("preact-resnet18", 10, 1, 28, 0.125).eval(), MitigationData(clean)


def tuned_run(defense, model, data, trials):
    torch.manual_seed(5)  # as the runner seeds it before a defense
    ctx = Context(seed=5, trials=trials)
    return defense(copy.deepcopy(model), data, ctx), ctx.record


def test_a_stopped_tuned_unit_resumes_after_its_finished_candidates(tmp_path, monkeypatch, capsys):
    model, data = held_out_case()
    tuned = Tuned(Jitter())
    unstopped, record = tuned_run(tuned, model, data, tmp_path / "unstopped")
    assert not (tmp_path / "unstopped").exists()  # cleared once the unit finished
    calls = stop_jitter_once_at(2, monkeypatch)
    with pytest.raises(Stop):
        tuned_run(tuned, model, data, tmp_path / "unit")
    assert len(list((tmp_path / "unit").glob("*.json"))) == 1
    calls.clear()
    capsys.readouterr()
    resumed, resumed_record = tuned_run(tuned, model, data, tmp_path / "unit")
    assert calls == [0.02, 0.05, resumed_record["tuning"]["chosen"]["scale"]]  # the first was not run again
    said = capsys.readouterr().err  # a log says which candidates ran, which were kept, and the choice
    assert "jitter: 1 of 3 candidates kept from an earlier run" in said
    assert "candidate 1 of 3" not in said and "candidate 2 of 3: scale=0.02 on 400 images" in said
    assert f"chose scale={resumed_record['tuning']['chosen']['scale']}; running it on all 500 images" in said
    assert resumed_record["tuning"].pop("resumed_candidates") == 1
    assert resumed_record == record
    assert_same_weights(resumed, unstopped)
    assert not (tmp_path / "unit").exists()


def test_a_tuned_unit_with_a_shared_stage_resumes_at_its_final_run(tmp_path, monkeypatch):
    """ANP's candidates share one mask optimisation, kept as one; stopped in the final run on all
    images, the unit resumes there, and equals a run never stopped."""
    from bd_defenses.anp import ANP

    model, data = held_out_case()
    tuned = create_defense("anp/tuned", {"iterations": "4", "pruning_step": "0.3"})
    unstopped, record = tuned_run(tuned, model, data, tmp_path / "unstopped")
    learned, learn_masks = [], ANP.learn_masks
    monkeypatch.setattr(ANP, "learn_masks", lambda *a: (learned.append(1), learn_masks(*a))[1])
    monkeypatch.setattr(ANP, "__call__", lambda *a: (_ for _ in ()).throw(Stop))
    with pytest.raises(Stop):
        tuned_run(tuned, model, data, tmp_path / "unit")
    assert len(learned) == 1 and len(list((tmp_path / "unit").glob("*.json"))) == 3
    monkeypatch.undo()
    monkeypatch.setattr(ANP, "learn_masks", lambda *a: (learned.append(1), learn_masks(*a))[1])
    resumed, resumed_record = tuned_run(tuned, model, data, tmp_path / "unit")
    assert len(learned) == 2  # only the final run learned masks again
    assert resumed_record["tuning"].pop("resumed_candidates") == 3
    assert resumed_record == record
    assert_same_weights(resumed, unstopped)


def test_a_damaged_or_foreign_trial_file_is_not_resumed(tmp_path):
    from bd_defenses.tuning import TrialLog

    log, candidate, ctx = TrialLog(tmp_path), Jitter(scale=0.01), Context(seed=1)
    log.path(candidate, ctx).parent.mkdir(parents=True, exist_ok=True)
    log.path(candidate, ctx).write_text('{"settings": {"scale": 0.01}, "signals": {')
    assert log.load(candidate, ctx) is None
    log.save(candidate, ctx, {"settings": {"scale": 0.01}, "signals": {"acc": 0.5}, "rng": {"cpu": ""}})
    assert log.load(candidate, ctx)["signals"] == {"acc": 0.5}
    assert log.load(Jitter(scale=0.02), ctx) is None  # another setting
    assert log.load(candidate, Context(seed=2)) is None  # another seed
    assert log.load(candidate, Context(seed=1, device="cuda")) is None  # another device


def test_tuned_parts_of_a_combination_resume_apart(tmp_path, monkeypatch):
    """bnp/tuned+ft/tuned-like sequences: each tuned part keeps its candidates in its own folder,
    and a combination stopped in its second part resumes to what an unstopped one gives."""
    from bd_defenses.combined import Combined

    model, data = held_out_case()
    combined = Combined((Tuned(Jitter()), Tuned(Jitter(scale=0.05))))
    unstopped, record = tuned_run(combined, model, data, tmp_path / "unstopped")
    assert not (tmp_path / "unstopped").exists()
    stop_jitter_once_at(6, monkeypatch)  # the first part makes 4 calls (3 candidates, final run)
    with pytest.raises(Stop):
        tuned_run(combined, model, data, tmp_path / "unit")
    assert [p.name for p in (tmp_path / "unit").iterdir()] == ["part1"]  # the first part finished and cleared
    resumed, resumed_record = tuned_run(combined, model, data, tmp_path / "unit")
    assert resumed_record["steps"][1]["tuning"].pop("resumed_candidates") == 1
    for step, again in zip(record["steps"], resumed_record["steps"], strict=True):
        assert {k: v for k, v in step.items() if k != "seconds"} == {k: v for k, v in again.items() if k != "seconds"}
    assert_same_weights(resumed, unstopped)
    assert not (tmp_path / "unit").exists()
