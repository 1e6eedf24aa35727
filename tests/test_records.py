"""The record wire format and the sequence tracker."""

from __future__ import annotations

import contextlib
import json

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lanewatch.edge.bus.ingest import SequenceTracker, SeqVerdict, plausible_gap
from lanewatch.edge.bus.records import (
    VALUES,
    DecodeError,
    Kind,
    LinesValues,
    Record,
    SampleValues,
    SpeedValues,
    decode,
)


def _record(**kw: object) -> Record:
    base = dict(kind=Kind.GAMMA_SCAN, lane="l1", source="rpm", seq=7, t_wall_ns=1, t_mono_ns=2, dt_s=0.2)
    base.update(kw)
    return Record(**base)  # type: ignore[arg-type]


@given(
    counts=arrays(np.uint32, st.tuples(st.integers(1, 8), st.integers(1, 4))),
    spectra=st.none() | arrays(np.uint32, st.tuples(st.integers(1, 8), st.integers(1, 64))),
    sample=st.none() | st.integers(0, 2**63 - 1),
    live=st.none() | st.lists(st.floats(-1e300, 1e300), max_size=8),
    run_id=st.text(max_size=16),
)
def test_round_trip(
    counts: np.ndarray, spectra: np.ndarray | None, sample: int | None, live: list[float] | None, run_id: str
) -> None:
    values = SampleValues(sample=sample, live_time_s=live)
    rec = _record(counts=counts, spectra=spectra, values=values, flags=("device_alarm",), run_id=run_id)
    frames = [bytes(f) for f in rec.encode()]
    assert frames[0] == b"rpm/l1"
    back = decode(frames)
    np.testing.assert_array_equal(back.counts, counts)
    if spectra is None:
        assert back.spectra is None
    else:
        np.testing.assert_array_equal(back.spectra, spectra)
    assert (back.kind, back.lane, back.source, back.seq, back.values, back.flags, back.run_id) == (
        rec.kind,
        rec.lane,
        rec.source,
        rec.seq,
        values,
        ("device_alarm",),
        run_id,
    )


def test_every_kind_round_trips_with_values_given_as_a_dict() -> None:
    examples = {
        Kind.SPEED: {"speed_kmh": 7.2, "speed_mph": 4.47, "crossing_s": 0.15},
        Kind.OCCUPANCY_END: {"device_occupancy": 3, "neutron_background_cps": 2.5},
        Kind.TAMPER: {"active": True},
        Kind.SETUP: {"line": "SG1", "fields": ["a", "b"]},
        Kind.LINK: {"up": False, "url": "loop://", "reason": "gone"},
        Kind.XRAY_SCAN_START: {"scan_id": 4, "t_ns": 9, "energies": 2, "pixels": 8, "pixel_spacing_mm": [1.0, 2.0]},
        Kind.XRAY_CALIBRATION: {"scan_id": 4, "frame": "air", "t_ns": [1]},
        Kind.XRAY_LINES: {"scan_id": 4, "first_line": 0, "line_count": 2, "t_ns": [1, 2], "encoder_mm": [0.0, None]},
        Kind.XRAY_SCAN_END: {"scan_id": 4, "lines": 2, "missing": 0, "complete": True},
    }
    for kind, values in examples.items():
        rec = _record(kind=kind, values=values)
        assert isinstance(rec.values, VALUES[kind])
        back = decode([bytes(f) for f in rec.encode()])
        assert back.kind is kind and back.values == rec.values


def test_numpy_scalars_in_values_become_python_numbers() -> None:
    rec = _record(kind=Kind.SPEED, values={"speed_kmh": np.float64(7.5), "crossing_s": np.float32(0.25)})
    assert rec.values == SpeedValues(speed_kmh=7.5, crossing_s=0.25)
    assert type(rec.values.speed_kmh) is float


def test_values_that_do_not_fit_their_kind_are_refused_at_the_producer() -> None:
    with pytest.raises(msgspec.ValidationError, match="object is not a record value"):
        _record(kind=Kind.SETUP, values={"line": "SG1", "fields": [object()]})
    with pytest.raises(msgspec.ValidationError, match=r"missing required field `speed_kmh`"):
        _record(kind=Kind.SPEED, values={"speed_mph": 3})
    with pytest.raises(TypeError, match="SpeedValues"):
        _record(kind=Kind.XRAY_LINES, values=SpeedValues(speed_kmh=3.0))


def test_an_unknown_encoder_reading_crosses_the_bus_as_null() -> None:
    rec = _record(
        kind=Kind.XRAY_LINES,
        values={"scan_id": 1, "first_line": 0, "line_count": 2, "t_ns": [1, 2], "encoder_mm": [float("nan"), 5.0]},
    )
    back = decode([bytes(f) for f in rec.encode()])
    assert isinstance(back.values, LinesValues) and back.values.encoder_mm == [None, 5.0]


def _frames(header: dict, *arrays: bytes) -> list[bytes]:
    return [b"rpm/l1", json.dumps(header).encode(), *arrays]


GOOD = {
    "v": 1,
    "kind": "speed",
    "lane": "l1",
    "source": "rpm",
    "seq": 1,
    "t_wall_ns": 1,
    "t_mono_ns": 1,
    "dt_s": 0,
    "values": {"speed_kmh": 5.0},
    "flags": [],
    "arrays": [],
}
COUNTS = {**GOOD, "kind": "gamma_scan", "values": {}}


def _raw(text: str) -> list[bytes]:
    return [b"rpm/l1", text.encode()]


@pytest.mark.parametrize(
    ("frames", "kind"),
    [
        ([b"x"], "frames"),
        ([b"t", b"{not json"], "header"),
        ([b"t", b"\xff\xfe"], "header"),
        (_frames({**GOOD, "v": 9}), "version"),
        (_frames({**GOOD, "kind": "nope"}), "field"),
        (_frames({**GOOD, "seq": "x"}), "field"),
        (_frames({**GOOD, "seq": -1}), "field"),
        (_frames({**GOOD, "seq": 2**64}), "field"),
        (_frames({k: v for k, v in GOOD.items() if k != "lane"}), "field"),
        (_frames({**GOOD, "values": {}}), "field"),
        (_frames({**GOOD, "values": {"speed_kmh": "fast"}}), "field"),
        (_frames({**GOOD, "values": {"speed_kmh": 1, "extra": 2}}), "field"),
        (_raw(json.dumps(GOOD).replace('"speed_kmh": 5.0', '"speed_kmh": 1e400')), "field"),
        (_frames({**GOOD, "kind": "tamper", "values": {"active": 1}}), "field"),
        (_frames({**GOOD, "extra": 1}), "field"),
        (_frames({**GOOD, "run_id": 5}), "field"),
        (_frames({**GOOD, "run_id": "r" * 65}), "field"),
        (_raw(json.dumps(GOOD).replace('"seq": 1', '"seq": Infinity')), "header"),
        (_raw(json.dumps(GOOD).replace('"dt_s": 0', '"dt_s": NaN')), "header"),
        (_raw("[" * 100_000 + "]" * 100_000), "field"),
        (_raw('{"v": 1, "values": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}"), "header"),
        ([b"t", b" " * (1 << 20) + b"{}"], "header"),
        (_frames({**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [2]}]}, b"123"), "array"),
        (_frames({**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [1]}]}), "frames"),
        (_frames({**COUNTS, "arrays": [{"name": "evil", "dtype": "<u4", "shape": [1]}]}, b"1234"), "field"),
        (_frames({**COUNTS, "arrays": [{"name": "counts", "dtype": ",<u4", "shape": [1]}]}, b"1234"), "field"),
        (_frames({**COUNTS, "arrays": [{"name": "counts", "dtype": "O", "shape": [1]}]}, b"12345678"), "field"),
        (_frames({**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [1, -1]}]}, b"1234"), "field"),
        (_frames({**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [1] * 5}]}, b"1234"), "field"),
        (_frames({**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": []}]}, b"1234"), "field"),
        (
            _frames(
                {**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [2**28, 2**28, 2**28, 2**28]}]},
                b"1234",
            ),
            "array",
        ),
        (
            _frames({**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [1]}] * 2}, b"1234", b"1234"),
            "array",
        ),
    ],
)
def test_bad_messages_raise_decode_error_with_kind(frames: list[bytes], kind: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(frames)
    assert info.value.kind == kind


def test_a_shape_beyond_any_integer_is_a_decode_error() -> None:
    header = json.dumps({**COUNTS, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [1, 1]}]})
    with pytest.raises(DecodeError):
        decode([*_raw(header.replace("[1, 1]", "[1e3098, 1]")), b"1234"])


@given(st.binary(max_size=256) | st.text(max_size=256).map(str.encode))
def test_any_bytes_are_a_record_or_a_decode_error(header: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode([b"t", header])


def test_sequence_tracker_counts_gaps_duplicates_and_restarts() -> None:
    t = SequenceTracker(started_s=0.0)
    key = ("l1", "rpm")
    first = t.observe(key, 5, "a", now_s=1.0)
    assert first.missed == 0 and first.joined == 5  # first seen: the caller judges the 5 records before it
    assert t.observe(key, 6, "a", now_s=1.1).missed == 0
    assert t.observe(key, 9, "a", now_s=1.2).missed == 2
    assert t.observe(key, 9, "a", now_s=1.3).stale
    assert t.observe(key, 3, "a", now_s=1.4).restarted == "seq-back"
    assert t.observe(key, 4, "a", now_s=1.5) == SeqVerdict()
    assert t.observe(key, 0, "b", now_s=1.6) == SeqVerdict(restarted="run_id")
    assert t.observe(key, 1, "b", now_s=1.7).missed == 0
    assert t.observe(key, 3, "c", now_s=1.8) == SeqVerdict(restarted="run_id", missed=3), "a new run's 0-2 were lost"
    assert t.observe(("l2", "rpm"), 100, "c", now_s=2.0).joined == 100
    assert t.observe(("l3", "rpm"), 10**15, "d", now_s=2.0).joined == 0, "a poisoned first seq is not a gap of 10**15"


def test_a_poisoned_seq_does_not_blind_the_stream_after_it() -> None:
    """One record numbered 10**15 from a faulty source: a restart, then the real stream goes on as another."""
    t = SequenceTracker(started_s=0.0)
    key = ("l1", "rpm")
    assert t.observe(key, 100, "run", now_s=1.0) == SeqVerdict(joined=100)
    assert t.observe(key, 10**15, "run", now_s=1.1).restarted == "seq-jump"
    assert t.observe(key, 101, "run", now_s=1.2).restarted == "seq-back"
    verdicts = [t.observe(key, seq, "run", now_s=1.2 + seq / 1000) for seq in range(102, 1000)]
    assert verdicts == [SeqVerdict()] * len(verdicts), "no real record is dropped as stale or counted missed"


def test_records_missed_are_at_most_what_the_source_could_have_numbered_meanwhile() -> None:
    """A key that may publish for the lane sends a large seq (below any fixed cap): a restart, not a million records
    missed; a gap as large as the time since the previous record allows is a gap. A new run and a source first
    seen are judged the same way."""
    t = SequenceTracker(started_s=0.0)
    key = ("l1", "rpm")
    t.observe(key, 0, "run", now_s=10.0)
    jump = t.observe(key, 999_999, "run", now_s=10.2)
    assert jump.restarted == "seq-jump" and jump.missed == 0
    t.observe(key, 1, "run", now_s=10.4)  # the real stream again: seq-back, a restart, nothing missed
    allowed = plausible_gap(60.0)
    assert t.observe(key, 2 + allowed, "run", now_s=70.4).missed == allowed, "a minute's worth of records: a gap"
    assert t.observe(key, 10 * allowed, "run", now_s=70.5).restarted == "seq-jump"
    assert t.observe(key, 999_999, "new", now_s=70.6) == SeqVerdict(restarted="run_id"), "a new run's big first seq"
    assert t.observe(key, 100, "newer", now_s=70.7) == SeqVerdict(restarted="run_id", missed=100)
    assert t.observe(("l2", "rpm"), 999_999, "x", now_s=1.0).joined == 0
    assert t.observe(("l3", "rpm"), plausible_gap(1.0), "x", now_s=1.0).joined == plausible_gap(1.0)
