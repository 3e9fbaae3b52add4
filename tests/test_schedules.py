"""Learning-rate schedules: values epoch by epoch, configs, errors."""
import math

import pytest

from xpnet import schedules
from xpnet.errors import ConfigError


def test_constant():
    assert schedules.Constant(0.1).values(4) == [0.1] * 4


def test_step_decay():
    s = schedules.StepDecay(1.0, drop=0.5, every=2)
    assert s.values(7) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_exponential_decay():
    s = schedules.ExponentialDecay(2.0, rate=0.1, every=1)
    assert s.values(4) == pytest.approx([2.0, 0.2, 0.02, 0.002], rel=1e-12)
    s3 = schedules.ExponentialDecay(1.0, rate=0.5, every=3)
    assert s3.values(7) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_inverse_time_decay():
    s = schedules.InverseTimeDecay(1.0, decay=0.5)
    assert s.values(4) == pytest.approx([1.0, 1 / 1.5, 0.5, 1 / 2.5], rel=1e-12)


def test_cosine_decay():
    s = schedules.CosineDecay(1.0, epochs=4, min_lr=0.2)
    expected = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)] + [0.2, 0.2]
    assert s.values(6) == pytest.approx(expected, rel=1e-12)
    assert s(0) == 1.0 and s(2) == pytest.approx(0.6)


def test_linear_warmup():
    s = schedules.LinearWarmup(schedules.StepDecay(1.0, drop=0.5, every=10), warmup_epochs=4, start_lr=0.2)
    assert s.values(6) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert s(10) == 0.5
    # the ramp ends at the inner schedule's rate at warmup_epochs, not at its first rate
    s = schedules.LinearWarmup(schedules.StepDecay(1.0, drop=0.5, every=2), warmup_epochs=4, start_lr=0.1)
    assert s.values(7) == pytest.approx([0.1, 0.1375, 0.175, 0.2125, 0.25, 0.25, 0.125], rel=1e-12)


def test_warmup_halving_seed001_values():
    """Seed 001, section 10, halve_after=5, base rate 1e-3 (the models 10-12 setting)."""
    s = schedules.WarmupHalving(1e-3, k=5)
    peak = 5e-3
    expected = ([1e-3, 2e-3, 3e-3, 4e-3, 5e-3]           # warm-up: (e + 1) * lr
                + [peak] * 5                              # 5..9: epoch 5 is excluded from halving
                + [peak / 2] * 5 + [peak / 4] * 5         # halved at 10 and 15
                + [peak / 8]                              # 20: 20 % 5 == 0 and 20 <= 20
                + [peak / 16] * 3 + [peak / 32] * 3       # after 20: halve when epoch % 3 == 0
                + [peak / 64] * 3)
    assert s.values(30) == pytest.approx(expected, rel=1e-12)


def test_warmup_halving_matches_report_recurrence():
    """Iterating the report's rule on the running rate gives the same numbers as the class."""
    def report_rule(lr, epoch, k):
        if epoch < k:
            return lr if epoch == 0 else lr + lr / epoch
        if epoch % k == 0 and epoch != 5 and epoch <= 20:
            return lr * 0.5
        if epoch % 3 == 0 and epoch > 20:
            return lr * 0.5
        return lr

    lr, got = 5e-4, []
    for epoch in range(40):
        lr = report_rule(lr, epoch, 5)
        got.append(lr)
    assert schedules.WarmupHalving(5e-4, k=5).values(40) == got


def test_warmup_halving_other_k():
    s = schedules.WarmupHalving(1.0, k=3, late_start=8, late_every=4)
    assert s.values(14) == [1, 2, 3, 3, 3, 3, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.75, 0.75]


def test_epoch_bias_correction_factors():
    s = schedules.EpochBiasCorrection(schedules.WarmupHalving(1e-3, k=5, late_start=20, late_every=3))
    inner = s.schedule.values(60)
    for e, want in ((0, 0.316), (4, 0.172), (9, 0.153), (19, 0.160), (49, 0.222)):
        assert s.factor(e) == pytest.approx(want, abs=1e-3)
        assert s(e) == pytest.approx(inner[e] * want, abs=1e-3 * inner[e])
    assert s.factor(20_000) == pytest.approx(1.0)


def _last_step(lr, epochs, steps, t_of):
    """The size of the last Adam step of ``epochs`` epochs of ``steps`` steps on a constant
    gradient 1 (beta 0.9/0.999, eps 1e-8), its bias corrections taken at t_of(epoch, step)."""
    m = v = 0.0
    for e in range(epochs):
        for k in range(steps):
            m, v = 0.9 * m + 0.1, 0.999 * v + 0.001
            t = t_of(e, e * steps + k + 1)
            step = lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)) ** 0.5 + 1e-8)
    return step


@pytest.mark.parametrize("epochs", [3, 5, 12])
def test_epoch_bias_correction_gives_an_epoch_counting_adams_steps(epochs):
    # an Adam whose t is the epoch number (t = epoch + 1, seed 001's author's code) against a
    # per-step Adam at the scaled rate: the same step once the moving averages have settled
    epoch_t = _last_step(1e-3, epochs, 2000, lambda e, k: e + 1)
    scaled = schedules.EpochBiasCorrection(schedules.Constant(1e-3))(epochs - 1)
    per_step = _last_step(scaled, epochs, 2000, lambda e, k: k)
    assert per_step == pytest.approx(epoch_t, rel=2e-3)
    assert epoch_t < 0.3 * 1e-3     # the effect is large: not a rounding-level check


@pytest.mark.parametrize("name", ["seed001-m10", "seed001-m11", "seed001-m12"])
def test_seed001_scaled_lr_variants_are_the_recipe_times_the_factor(name):
    from xpnet import models
    plain, variant = models.get(name), models.get(name + "-scaled-lr")
    base = schedules.get(plain.recipe["schedule"])
    scaled = schedules.get(variant.recipe["schedule"])
    assert isinstance(scaled, schedules.EpochBiasCorrection) and scaled.schedule.get_config() == base.get_config()
    for e in range(60):
        assert scaled(e) == pytest.approx(base(e) * scaled.factor(e), rel=1e-12)
    rest = lambda r: {k: v for k, v in r.items() if k not in ("schedule", "notes")}  # noqa: E731
    assert rest(variant.recipe) == rest(plain.recipe)
    assert [type(l).__name__ for l in variant.build().layers] == [type(l).__name__ for l in plain.build().layers]


@pytest.mark.parametrize("s", [schedules.Constant(0.1), schedules.StepDecay(0.1, 0.3, 4),
                               schedules.ExponentialDecay(0.1, 0.9, 2), schedules.InverseTimeDecay(0.1, 0.01),
                               schedules.CosineDecay(0.1, 10, 0.001), schedules.WarmupHalving(1e-3, 5),
                               schedules.WarmupHalving(1e-3, 4, late_start=12, late_every=2),
                               schedules.WarmupStepDecay(0.1, warmup_epochs=3, drop=0.7, every=4),
                               schedules.LinearWarmup(schedules.CosineDecay(0.1, 10), 3, 0.01),
                               schedules.EpochBiasCorrection(schedules.WarmupHalving(1e-3, 5), 0.8, 0.99)])
def test_config_round_trip(s):
    # arguments other than the defaults: a config that leaves one out rebuilds another schedule
    again = schedules.get(s.get_config())
    assert type(again) is type(s)
    assert again.values(25) == s.values(25)
    assert schedules.get(s) is s


def test_get_by_name_and_callable():
    assert schedules.get("step", lr=1.0, drop=0.1, every=1)(2) == pytest.approx(0.01)
    assert schedules.get("tunable", lr=1.0, k=2)(1) == 2.0
    lam = schedules.get(lambda e: 0.5 ** e)
    assert lam(3) == 0.125


@pytest.mark.parametrize("bad, match", [
    (lambda: schedules.Constant(-1), "lr must be > 0"),
    (lambda: schedules.EpochBiasCorrection(schedules.Constant(0.1), beta_1=1.0), "beta_1 must be < 1, got 1.0"),
    (lambda: schedules.EpochBiasCorrection(schedules.Constant(0.1), beta_2=0), "beta_2 must be > 0"),
    (lambda: schedules.StepDecay(0.1, every=0), "every must be an integer >= 1"),
    (lambda: schedules.CosineDecay(0.1, 10, min_lr=1.0), "min_lr"),
    (lambda: schedules.get("nope"), "unknown schedule 'nope'"),
    (lambda: schedules.get({"lr": 1}), "needs a 'type' key"),
    (lambda: schedules.get("step", lr=0.1, bogus=3), "bad arguments for schedule StepDecay"),
    (lambda: schedules.get(3), "cannot make a schedule"),
])
def test_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        bad()


@pytest.mark.parametrize("bad, match", [
    # these were a bare TypeError from float()/int() naming no schedule
    (lambda: schedules.Constant(None), r"Constant: lr must be a number > 0, got NoneType None"),
    (lambda: schedules.StepDecay(0.1, every=None), r"StepDecay: every must be an integer >= 1, got "
                                                   r"NoneType None"),
    (lambda: schedules.get({"type": "CosineDecay", "lr": 0.1, "epochs": [10]}),
     r"CosineDecay: epochs must be an integer >= 1, got list \[10\]"),
    # and these were converted: a string to its number, True to a learning rate of 1.0
    (lambda: schedules.Constant("0.1"), r"Constant: lr must be a number > 0, got str '0.1'"),
    (lambda: schedules.ExponentialDecay(True, 0.9), r"ExponentialDecay: lr must be a number > 0, got "
                                                    r"bool True"),
    (lambda: schedules.LinearWarmup(schedules.Constant(0.1), 2, start_lr="0"),
     r"LinearWarmup: start_lr must be a number >= 0, got str '0'"),
])
def test_a_value_that_is_not_a_number_is_refused_naming_the_schedule(bad, match):
    with pytest.raises(ConfigError, match=match):
        bad()
    assert schedules.StepDecay(1, drop=0.5, every=2.0).every == 2  # ints and whole floats still do
