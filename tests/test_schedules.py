"""Learning-rate schedules and the l1 ramp against their formulas, written out here."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from proxcl.schedules import make_l1_schedule, make_lr_schedule


def positions(epochs, spe):
    return [(e, s) for e in range(epochs) for s in range(spe)]


def test_constant():
    sch = make_lr_schedule("constant", 0.03, 5)
    assert {sch.lr_at(e, s, 7) for e, s in positions(5, 7)} == {0.03}
    assert sch.lr_at(40) == 0.03   # past the planned epochs too


def test_step_drops_by_gamma_every_k_epochs():
    sch = make_lr_schedule("step", 0.1, 10, every=4, gamma=0.5)
    want = [0.1] * 4 + [0.05] * 4 + [0.025] * 2
    for e in range(10):
        for s in (0, 3, 9):
            assert sch.lr_at(e, s, 10) == pytest.approx(want[e], rel=1e-12)
    assert make_lr_schedule("step", 1.0, 9).lr_at(3) == pytest.approx(0.1)  # defaults: every 3, 0.1


def test_cosine_endpoints_midpoint_and_within_epoch():
    base, floor, E, spe = 0.2, 0.002, 8, 5
    sch = make_lr_schedule("cosine", base, E, floor=floor)
    assert sch.lr_at(0, 0, spe) == pytest.approx(base)
    assert sch.lr_at(4, 0, spe) == pytest.approx((base + floor) / 2)
    assert sch.lr_at(E, 0, spe) == pytest.approx(floor)
    assert sch.lr_at(E + 3, 2, spe) == pytest.approx(floor)
    # a quarter of 6 epochs (1.5): floor + (base - floor) (1 + cos(pi/4)) / 2, reached mid-epoch
    six = make_lr_schedule("cosine", base, 6, floor=floor)
    assert six.lr_at(1, 5, 10) == pytest.approx(floor + (base - floor) * (1 + math.sqrt(0.5)) / 2)
    lrs = [sch.lr_at(e, s, spe) for e, s in positions(E, spe)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert make_lr_schedule("cosine", 1.0, 4).lr_at(4) == 0.0


def test_hold_cosine_holds_then_follows_the_cosine_over_the_rest():
    base, E, hold, spe = 0.05, 20, 15.0, 10
    sch = make_lr_schedule("hold-cosine", base, E, hold=hold)
    for e, s in positions(15, spe):
        assert sch.lr_at(e, s, spe) == base
    # 2.5 epochs into the 5 left: half way down; 1.25 in: (1 + cos(pi / 4)) / 2 of base
    assert sch.lr_at(17, 5, spe) == pytest.approx(base / 2, rel=1e-12)
    assert sch.lr_at(16, 2, 8) == pytest.approx(base * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert sch.lr_at(E) == 0.0 and sch.lr_at(E + 4, 3, spe) == 0.0
    assert make_lr_schedule("hold-cosine", 1.0, 8).lr_at(4) == 1.0   # default hold: half the epochs
    assert make_lr_schedule("hold-cosine", 1.0, 8).lr_at(6) == pytest.approx(0.5)


def test_l1_ramp_is_linear_and_reaches_l1_at_the_end_of_the_ramp():
    ramp = make_l1_schedule(1e-3, ramp_epochs=2)
    spe = 4
    vals = [ramp.l1_at(e, s, spe) for e, s in positions(4, spe)]
    want = [1e-3 * min(1.0, k / 8) for k in range(1, 17)]
    assert vals == pytest.approx(want, rel=1e-12)
    assert vals[7] == pytest.approx(1e-3) and vals[6] < 1e-3
    const = make_l1_schedule(5e-4)
    assert {const.l1_at(e, s, 3) for e, s in positions(3, 3)} == {5e-4}
    assert make_l1_schedule(0.0, 3).l1_at(1, 0, 2) == 0.0


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["constant", "step", "cosine", "hold-cosine"]), base=st.floats(1e-6, 10.0),
       epochs=st.integers(1, 50), spe=st.integers(1, 300), frac=st.floats(0.0, 1.0),
       data=st.data())
def test_lr_stays_within_base_and_floor_and_never_rises(kind, base, epochs, spe, frac, data):
    kw = {"cosine": {"floor": base * frac}, "hold-cosine": {"floor": base * frac, "hold": epochs * frac * 0.99},
          "step": {"every": data.draw(st.integers(1, 10)),
                                                      "gamma": max(frac, 1e-3)}}.get(kind, {})
    sch = make_lr_schedule(kind, base, epochs, **kw)
    e1 = data.draw(st.integers(0, epochs + 2))
    s1 = data.draw(st.integers(0, spe - 1))
    e2 = data.draw(st.integers(e1, epochs + 2))
    s2 = data.draw(st.integers(s1 if e2 == e1 else 0, spe - 1))
    a, b = sch.lr_at(e1, s1, spe), sch.lr_at(e2, s2, spe)
    lo = kw.get("floor", 0.0)
    assert lo * (1 - 1e-12) <= b <= a * (1 + 1e-12) <= base * (1 + 1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: make_lr_schedule("linear", 0.1, 5), "unknown learning-rate schedule 'linear'"),
    (lambda: make_lr_schedule("constant", 0.0, 5), "learning rate"),
    (lambda: make_lr_schedule("constant", float("inf"), 5), "learning rate"),
    (lambda: make_lr_schedule("cosine", 0.1, 0), "epochs"),
    (lambda: make_lr_schedule("cosine", 0.1, 2.5), "epochs"),
    (lambda: make_lr_schedule("cosine", 0.1, 5, floor=0.2), "floor"),
    (lambda: make_lr_schedule("cosine", 0.1, 5, every=2), "no option 'every'"),
    (lambda: make_lr_schedule("cosine", 0.1, 5, hold=2), "no option 'hold'"),
    (lambda: make_lr_schedule("hold-cosine", 0.1, 5, hold=5), "hold"),
    (lambda: make_lr_schedule("hold-cosine", 0.1, 5, hold=-1), "hold"),
    (lambda: make_lr_schedule("constant", 0.1, 5, gamma=0.5), "no option 'gamma'"),
    (lambda: make_lr_schedule("step", 0.1, 5, every=0), "every"),
    (lambda: make_lr_schedule("step", 0.1, 5, gamma=1.5), "gamma"),
    (lambda: make_lr_schedule("step", 0.1, 5, gamma=-0.1), "gamma"),
    (lambda: make_l1_schedule(-1e-3), "l1"),
    (lambda: make_l1_schedule(1e-3, ramp_epochs=-1), "ramp"),
    (lambda: make_lr_schedule("constant", 0.1, 5).lr_at(-1), "epoch"),
    (lambda: make_lr_schedule("constant", 0.1, 5).lr_at(0, 4, 4), "step_in_epoch"),
    (lambda: make_lr_schedule("constant", 0.1, 5).lr_at(0, 0, 0), "steps_per_epoch"),
    (lambda: make_l1_schedule(1e-3, 2).l1_at(0, 0, 0), "steps_per_epoch"),
])
def test_bad_arguments_raise_one_line(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_cubic_sparsity_follows_zhu_and_gupta():
    """s(x) = s_f + (s_i - s_f) (1 - (x - x0) / (x1 - x0))^3 between x0 and x1, written out."""
    from proxcl.schedules import CubicSparsity
    sch = CubicSparsity(0.99, start=2.0, end=10.0, initial=0.2)
    for x in (0.0, 1.0, 2.0):
        assert sch.at(x) == 0.2
    for x in (3.0, 5.5, 9.75):
        assert sch.at(x) == pytest.approx(0.99 + (0.2 - 0.99) * (1 - (x - 2.0) / 8.0) ** 3, rel=1e-12)
    assert sch.at(10.0) == sch.at(50.0) == 0.99
    xs = [i / 10 for i in range(120)]
    assert all(a <= b for a, b in zip(map(sch.at, xs), map(sch.at, xs[1:])))   # never decreases
    with pytest.raises(ValueError, match="after it starts"):
        CubicSparsity(0.9, 3.0, 3.0)
    with pytest.raises(ValueError, match="sparsities"):
        CubicSparsity(1.0, 0.0, 1.0)


def test_density_controller_raises_lambda_above_the_path_and_stops_below():
    from proxcl.schedules import DensityController
    ctl = DensityController(0.01, l1=1e-3, ramp=4.0)
    assert ctl.density_at(0.0) == pytest.approx(1.0) and ctl.density_at(4.0) == pytest.approx(0.01)
    assert ctl.density_at(2.0) == pytest.approx(1 - 0.99 * (1 - 0.5 ** 3))
    # denser than the path: lambda = l1 exp(I + kp e), growing with every update
    seen = [ctl.update(0.5, 2.0) for _ in range(5)]
    assert all(b > a > 1e-3 for a, b in zip(seen, seen[1:]))
    e = min(1.0, math.log(0.5 / ctl.density_at(2.0)))      # the error is clipped to [-1, 1]
    assert seen[-1] == pytest.approx(1e-3 * math.exp(5 * 0.02 * e + 1.0 * e), rel=1e-12)
    # at or below the path: no shrinkage at all, and the integral is kept
    integral = ctl.integral
    assert ctl.update(0.009, 5.0) == 0.0 and ctl.l1 == 0.0 and ctl.integral == integral
    # its state round-trips (checkpoints)
    other = DensityController(0.01, l1=1e-3, ramp=4.0)
    other.load_state(ctl.state())
    assert other.update(0.5, 2.0) == ctl.update(0.5, 2.0)
    # lambda stays within its bounds however long the density stays above the path
    for _ in range(10_000):
        ctl.update(1.0, 4.0)
    assert ctl.l1 == ctl.l1_max


def test_density_controller_path_can_start_from_a_sparse_initialisation():
    from proxcl.schedules import DensityController
    ctl = DensityController(0.01, l1=1e-3, ramp=4.0, start=0.05)
    assert ctl.density_at(0.0) == pytest.approx(0.05) and ctl.density_at(4.0) == pytest.approx(0.01)
    assert ctl.density_at(2.0) == pytest.approx(0.01 + 0.04 * 0.5 ** 3)
    assert ctl.update(0.05, 0.0) == 0.0          # on the path at the start: no shrinkage yet
    assert ctl.update(0.05, 1.0) > 0.0           # above it once it descends
    with pytest.raises(ValueError, match="start between"):
        DensityController(0.1, l1=1e-3, ramp=4.0, start=0.05)


def test_warmup_ramps_linearly_over_its_epochs_then_leaves_the_schedule():
    from proxcl.schedules import Warmup
    base = make_lr_schedule("cosine", 0.1, 10)
    w = Warmup(base, 1.5)
    spe = 4
    for e, s in positions(10, spe):
        done = e * spe + s + 1
        want = base.lr_at(e, s, spe) * min(1.0, done / (1.5 * spe))
        assert w.lr_at(e, s, spe) == pytest.approx(want, rel=1e-12)
    assert w.lr_at(0, 0, spe) == pytest.approx(0.1 / 6)
    assert Warmup(base, 0).lr_at(0, 0, spe) == base.lr_at(0, 0, spe)
