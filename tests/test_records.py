"""The record wire format and the sequence tracker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lanewatch.edge.bus.ingest import MAX_SEQ_JUMP, SequenceTracker, SeqVerdict
from lanewatch.edge.bus.records import DecodeError, Kind, Record, decode


def _record(**kw: object) -> Record:
    base = dict(kind=Kind.GAMMA_SCAN, lane="l1", source="rpm", seq=7, t_wall_ns=1, t_mono_ns=2, dt_s=0.2, run_id="r1")
    base.update(kw)
    return Record(**base)  # type: ignore[arg-type]


@given(
    counts=arrays(np.uint32, st.tuples(st.integers(1, 8), st.integers(1, 4))),
    spectra=st.none() | arrays(np.uint32, st.tuples(st.integers(1, 8), st.integers(1, 64))),
    values=st.dictionaries(st.text(max_size=5), st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)),
)
def test_round_trip(counts: np.ndarray, spectra: np.ndarray | None, values: dict) -> None:
    rec = _record(counts=counts, spectra=spectra, values=values, flags=("device_alarm",))
    frames = [bytes(f) for f in rec.encode()]
    assert frames[0] == b"rpm/l1"
    back = decode(frames)
    np.testing.assert_array_equal(back.counts, counts)
    if spectra is None:
        assert back.spectra is None
    else:
        np.testing.assert_array_equal(back.spectra, spectra)
    assert (back.kind, back.lane, back.source, back.seq, back.run_id, back.values, back.flags) == (
        rec.kind,
        rec.lane,
        rec.source,
        rec.seq,
        "r1",
        values,
        ("device_alarm",),
    )


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
    "values": {},
    "flags": [],
    "arrays": [],
}


@pytest.mark.parametrize(
    ("frames", "kind"),
    [
        ([b"x"], "frames"),
        ([b"t", b"{not json"], "header"),
        ([b"t", b"\xff\xfe"], "header"),
        (_frames({**GOOD, "v": 9}), "version"),
        (_frames({**GOOD, "kind": "nope"}), "field"),
        (_frames({**GOOD, "seq": "x"}), "field"),
        (_frames({k: v for k, v in GOOD.items() if k != "lane"}), "field"),
        (_frames({**GOOD, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [2]}]}, b"123"), "array"),
        (_frames({**GOOD, "arrays": [{"name": "counts", "dtype": "<u4", "shape": [1]}]}), "frames"),
        (_frames({**GOOD, "arrays": [{"name": "evil", "dtype": "<u4", "shape": [1]}]}, b"1234"), "array"),
    ],
)
def test_bad_messages_raise_decode_error_with_kind(frames: list[bytes], kind: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(frames)
    assert info.value.kind == kind


def test_sequence_tracker_counts_gaps_duplicates_and_restarts() -> None:
    t = SequenceTracker()
    key = ("l1", "rpm")
    assert t.observe(key, 5, "a").missed == 0  # first seen: joining late is not a gap
    assert t.observe(key, 6, "a").missed == 0
    assert t.observe(key, 9, "a").missed == 2
    assert t.observe(key, 9, "a").stale
    assert t.observe(key, 3, "a").restarted == "seq-back"
    assert t.observe(key, 4, "a") == SeqVerdict()
    assert t.observe(key, 0, "b").restarted == "run_id"
    assert t.observe(key, 1, "b").missed == 0
    assert t.observe(("l2", "rpm"), 100, "c").missed == 0


def test_a_poisoned_seq_does_not_blind_the_stream_after_it() -> None:
    """One record numbered 10**15 from a faulty source: a restart, then the real stream goes on as another."""
    t = SequenceTracker()
    key = ("l1", "rpm")
    assert t.observe(key, 100, "run").missed == 0
    assert t.observe(key, 10**15, "run").restarted == "seq-jump"
    assert t.observe(key, 101, "run").restarted == "seq-back"
    verdicts = [t.observe(key, seq, "run") for seq in range(102, 1000)]
    assert verdicts == [SeqVerdict()] * len(verdicts), "no real record is dropped as stale or counted missed"
    assert t.observe(key, 1000 + MAX_SEQ_JUMP, "run").missed == MAX_SEQ_JUMP, "a big but plausible gap is a gap"
