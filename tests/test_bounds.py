"""The robustness benchmark's yardsticks: the bound blind to the shadow's depth, and the depth-fitted filter."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from benchmarks.portals import PORTALS, Generator, _known, _read, _SimClock, offline
from benchmarks.robustness import _invariant, bound_detects, configs, depth_fitted_detects, shadow_known_detects
from lanewatch.drivers.sim.physics import GAMMA_DT_S, NEUTRON_DT_S, Passage
from lanewatch.edge.config import DetectionConfig

finite = st.floats(-100.0, 100.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, 12, elements=finite),
    arrays(np.float64, 12, elements=finite),
    arrays(np.float64, 12, elements=st.one_of(st.just(0.0), st.floats(1e-3, 500.0))),
)
def test_invariant_weights_do_not_see_the_nuisance(w: np.ndarray, nuisance: np.ndarray, var: np.ndarray) -> None:
    out = _invariant(w, nuisance, var)
    ok = var > 0
    norm = float(np.sum(nuisance[ok] ** 2 / var[ok]))
    if norm > 1e-9 * max(float(np.sum(var[ok])), 1e-300):
        # The statistic's mean moves by sum(out * nuisance) when the expected counts move along the nuisance.
        assert abs(float(np.sum(out * nuisance))) <= 1e-6 * (1.0 + float(np.sum(np.abs(w * nuisance))))
        assert np.all(out[~ok] == 0.0)
        np.testing.assert_allclose(_invariant(out, nuisance, var), out, atol=1e-9 * (1.0 + float(np.abs(out).max())))
    else:
        np.testing.assert_array_equal(out, w)


def _passage(amplitude: float, depth: float) -> Passage:
    """A 40-sample gross passage on 4 channels: a uniform shadow of ``depth`` over the vehicle (the last 5 samples,
    the hold-in, unshadowed), a point source of ``amplitude`` counts per sample at its peak in the middle, counts equal
    to their means (rounded)."""
    n, m = 40, 8
    per_channel = np.full((4, 1), 250.0)
    unshadowed = np.broadcast_to(per_channel * GAMMA_DT_S, (n, 4, 1)).copy()
    level = np.ones(n)
    level[: n - 5] = 1.0 - depth
    background = unshadowed * level[:, None, None]
    k = np.arange(n) - 18
    signal = amplitude / 4.0 * (1.0 / (1.0 + (k / 5.0) ** 2))[:, None, None] * np.ones((1, 4, 1))
    neutron = np.full((m, 4), 0.6)
    return Passage(
        index=0,
        gamma=np.rint(background + signal).astype(np.int64),
        neutron=np.rint(neutron).astype(np.int64),
        speed_kmh=7.2,
        length_m=14.0,
        background_gamma_cps=per_channel,
        background_neutron_cps=np.full(4, 3.0),
        truth={},
        expected_background=background,
        expected_signal=signal,
        expected_neutron_background=neutron * NEUTRON_DT_S,
        expected_ship=np.zeros((m, 4)),
        expected_neutron_signal=np.zeros((m, 4)),
    )


def test_the_yardsticks_find_a_strong_source_under_an_unknown_shadow_and_nothing_without_one() -> None:
    cfg = configs()["gross"]
    alpha = cfg.gamma_false_alarm_probability + cfg.neutron_false_alarm_probability
    strong, none = _passage(60.0, 0.2), _passage(0.0, 0.2)
    assert depth_fitted_detects(strong, cfg, alpha)
    assert not depth_fitted_detects(none, cfg, alpha)
    for blind in (False, True):
        assert bound_detects(strong, True, alpha, blind=blind)
    # A source whose excess over the shadowed level is clear when the shadow is known, but not once the depth must be
    # fitted with it: each yardstick that is told the depth finds it, each blind to it does not.
    moderate = _passage(20.0, 0.2)
    assert shadow_known_detects(moderate, cfg, alpha) and not depth_fitted_detects(moderate, cfg, alpha)
    assert bound_detects(moderate, True, alpha) and not bound_detects(moderate, True, alpha, blind=True)


def test_portals_offline_reads_each_vehicle_and_scores_it_against_its_truth() -> None:
    """The independent generator run without sockets: each vehicle's lines read back with the RPM driver's parser
    give as many gamma samples as its truth has, and the detectors that know the truth see no source where there is
    none and each strong one."""
    clock = _SimClock()
    gen = Generator(PORTALS[0], "A", 3, clock)
    strong = 0
    for _ in range(60):
        veh = gen.vehicle()
        clock.t += veh.duration_s + gen.gap_s()
        gamma, neutron, speed = _read(veh)
        assert veh.expected_gross is not None and veh.source_gross is not None
        assert gamma.shape == (veh.expected_gross.size, 4) and neutron.shape[1] == 4 and speed > 0
        searched, bound = _known(veh, gamma.sum(axis=1), speed, DetectionConfig())
        if veh.kind == "benign":
            assert not bound
        if veh.kind in ("cs137", "co60") and veh.strength_sigma >= 10.0:
            strong += 1
            assert searched and bound
    assert strong >= 2
    rows = offline([5], 4)
    assert len(rows) == 4 * len(PORTALS)
    assert {r["portal"] for r in rows} == {p.name for p in PORTALS}
