"""bd's one optimisation loop: what every trainer, mask, trigger and perturbation learner relies on."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from bd_core.errors import BdError, Diverged
from bd_core.models.state import check_finite
from bd_core.train import optimize

torch.manual_seed(0)
X, W_TRUE = torch.randn(64, 5), torch.randn(5, 1)
Y = X @ W_TRUE


def batches():
    return [(X[:32], Y[:32]), (X[32:], Y[32:])]


def mse(model):
    return lambda x, y: ((model(x) - y) ** 2).mean()


def test_minimises_and_returns_the_mean_loss_per_epoch():
    model = nn.Linear(5, 1, bias=False)
    by_hand = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        before = float(mse(model)(X, Y))
    losses = optimize(mse(model), batches, opt, epochs=20)
    assert len(losses) == 20 and losses[-1] < 0.05 * before
    # epoch 1's value: the mean over its batches of each batch's loss before its own update
    hand_opt, first = torch.optim.SGD(by_hand.parameters(), lr=0.1), []
    for x, y in batches():
        hand_opt.zero_grad()
        loss = mse(by_hand)(x, y)
        loss.backward()
        hand_opt.step()
        first.append(loss.item())
    assert abs(losses[0] - sum(first) / 2) < 1e-6


def test_after_epoch_stops_early_and_the_scheduler_steps_once_per_epoch():
    model = nn.Linear(5, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []
    losses = optimize(
        mse(model), batches, opt, epochs=10, scheduler=sched, after_epoch=lambda epoch: seen.append(epoch) or epoch == 3
    )
    assert seen == [1, 2, 3] and len(losses) == 3
    assert opt.param_groups[0]["lr"] == 1.0 * 0.5**3


def test_gradients_a_step_backwards_itself_add_to_its_returned_loss():
    """A step may backward one part of its objective and return the rest (ANP, SAM): the update
    is the one of the whole objective, and nothing from the previous step leaks in."""
    torch.manual_seed(1)
    a, b = nn.Linear(5, 1, bias=False), nn.Linear(5, 1, bias=False)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.05), torch.optim.SGD(b.parameters(), lr=0.05)

    def split_step(x, y):
        (0.3 * (a(x) - y).pow(2).mean()).backward()
        return 0.7 * (a(x) - y).pow(2).mean()

    optimize(split_step, batches, opt_a, epochs=3)
    optimize(mse(b), batches, opt_b, epochs=3)
    torch.testing.assert_close(a.weight, b.weight)


def test_a_step_may_set_the_gradients_itself_and_return_its_loss_detached():
    """i-BAU computes an implicit hypergradient: the loop uses the gradients the step set."""
    model = nn.Linear(5, 1, bias=False)
    start = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def fixed_gradient(x, y):
        model.weight.grad = torch.ones_like(model.weight)
        with torch.no_grad():
            return ((model(x) - y) ** 2).mean()

    optimize(fixed_gradient, batches, opt, epochs=1)
    torch.testing.assert_close(model.weight, start - 2 * 0.5 * torch.ones_like(start))  # two batches


def test_before_update_sees_the_gradients_and_after_step_the_new_weights():
    model = nn.Linear(5, 1, bias=False)
    start = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads, weights = [], []

    def zero_the_gradient():
        grads.append(model.weight.grad.abs().sum().item())
        model.weight.grad.zero_()

    optimize(
        mse(model),
        batches,
        opt,
        epochs=2,
        before_update=zero_the_gradient,
        after_step=lambda: weights.append(model.weight.detach().clone()),
    )
    assert len(grads) == 4 and all(g > 0 for g in grads)
    assert len(weights) == 4 and all(torch.equal(w, start) for w in weights)


def test_the_mode_is_set_at_the_start_of_every_epoch():
    model = nn.Sequential(nn.Linear(5, 1, bias=False), nn.Dropout(0.0))
    modes = []

    def step_that_switches_to_eval(x, y):
        modes.append(model.training)
        model.eval()
        return ((model(x) - y) ** 2).mean()

    optimize(
        step_that_switches_to_eval,
        batches,
        torch.optim.SGD(model.parameters(), lr=0.01),
        epochs=2,
        model=model,
        training=True,
    )
    assert modes == [True, False, True, False]
    modes.clear()
    optimize(
        step_that_switches_to_eval,
        batches,
        torch.optim.SGD(model.parameters(), lr=0.01),
        epochs=1,
        model=model.train(),
        training=False,
    )
    assert modes == [False, False]


def test_tick_replaces_the_loops_own_progress_bar():
    model = nn.Linear(5, 1, bias=False)
    ticks = []
    optimize(mse(model), batches, torch.optim.SGD(model.parameters(), lr=0.01), epochs=4, tick=lambda: ticks.append(1))
    assert len(ticks) == 4


def test_a_non_finite_loss_stops_the_run_with_a_clear_reason():
    """A learning rate that makes SGD blow up must end the run, not hand back NaN weights whose
    predictions (one class for every input) would read as a perfect attack."""
    model = nn.Linear(5, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e3)
    reason = r"FT fine-tuning diverged: the loss became (inf|nan) at epoch \d+, batch \d"
    with pytest.raises(Diverged, match=reason) as e:
        optimize(mse(model), batches, opt, epochs=50, description="FT fine-tuning")
    assert not isinstance(e.value, BdError)  # a failed run to store, not a request error to refuse


def test_non_finite_weights_are_named():
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    check_finite(model, "the model")  # finite: no error
    with torch.no_grad():
        model[1].running_var[2] = float("nan")
    with pytest.raises(Diverged, match=r"the model: 1.running_var holds non-finite values"):
        check_finite(model, "the model")
