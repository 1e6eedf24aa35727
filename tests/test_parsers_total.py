"""Every parser of outside input is total: it returns a result or raises its own error, whatever the input.

Property tests (hypothesis) for the bus record decoder, the journal query parser, the RPM line parser
and the LWXR frame reader: inputs drawn by hypothesis as JSON values and protocol fields, and the
structured mutations of ``benchmarks/fuzz.py`` driven by hypothesis' random source (so a failure
shrinks to a short mutation sequence). What a parser accepts must also make sense: a decoded record
encodes back to itself, an accepted query is within its limits, parsed counts have the configured
shape, and frames come out of the reader as they went in, however the stream is cut.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import fuzz
from lanewatch.drivers import rpm, xray
from lanewatch.edge.bus.records import DecodeError, Kind, decode
from lanewatch.edge.decisions.alertbus import MAX_LIMIT, BadRequest, parse_request

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
"""Any JSON value (floats include infinities and NaN, written as bare words)."""

DECODER = fuzz.decoder_target()
QUERY = fuzz.query_target()
RPM = fuzz.rpm_target()
LWXR = fuzz.lwxr_target()


def _decodes_or_refuses(frames: list[bytes]) -> None:
    try:
        record = decode(frames)
    except DecodeError:
        return
    again = decode([bytes(f) for f in record.encode()])
    assert (again.kind, again.lane, again.source, again.seq, again.run_id, again.flags) == (
        record.kind,
        record.lane,
        record.source,
        record.seq,
        record.run_id,
        record.flags,
    )
    for name in ("counts", "spectra"):
        a, b = getattr(record, name), getattr(again, name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)


# ---- record decoder -----------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "v": st.just(1) | JSON,
            "kind": st.sampled_from([k.value for k in Kind]) | JSON,
            "lane": st.text(max_size=8) | JSON,
            "source": st.just("rpm") | JSON,
            "seq": st.integers() | JSON,
            "t_wall_ns": st.integers() | JSON,
            "t_mono_ns": st.integers() | JSON,
            "dt_s": st.floats() | JSON,
            "values": st.dictionaries(st.sampled_from(["sample", "speed_kmh", "active", "line", "up"]), JSON) | JSON,
            "flags": st.lists(st.text(max_size=8), max_size=3) | JSON,
            "arrays": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["counts", "spectra", "x"]),
                        "dtype": st.sampled_from(fuzz.ARRAY_DTYPES),
                        "shape": st.lists(st.integers(-2, 2**63), max_size=3) | JSON,
                    }
                ),
                max_size=2,
            )
            | JSON,
        },
        optional={"run_id": st.text(max_size=80) | JSON},
    ),
    st.lists(st.binary(max_size=64), max_size=3),
)
def test_any_header_and_arrays_decode_or_raise_decode_error(header: dict[str, Any], arrays: list[bytes]) -> None:
    _decodes_or_refuses([b"rpm/lane1", fuzz.dumps(header), *arrays])


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mutated_records_decode_or_raise_decode_error(rng: random.Random) -> None:
    _decodes_or_refuses(DECODER.make(rng))


# ---- query parser -------------------------------------------------------------------------------------------
def _parses_or_refuses(payload: bytes) -> None:
    try:
        request = parse_request(payload)
    except BadRequest:
        return
    assert request.op in ("since", "get", "last", "query")
    if request.limit is not None:
        assert 1 <= request.limit <= MAX_LIMIT
    if request.seq is not None:
        assert isinstance(request.seq, int) and request.seq >= 0


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["op", "seq", "limit", "lane", "verdict", "since", "until", "zz"]),
        st.sampled_from(["since", "get", "last", "query", "ALARM", "2026-12-01T00:00:00Z"]) | st.integers() | JSON,
    )
)
def test_any_query_object_parses_or_is_a_bad_request(request: dict[str, Any]) -> None:
    _parses_or_refuses(fuzz.dumps(request))


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mutated_queries_parse_or_are_bad_requests(rng: random.Random) -> None:
    _parses_or_refuses(QUERY.make(rng))


# ---- RPM line parser ----------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([*sorted(rpm.LINE_TYPES), "ZZ", ""]),
    st.lists(st.sampled_from(fuzz.RPM_FIELDS) | st.binary(max_size=8), max_size=20),
    st.sampled_from([1, 3]),
)
def test_any_fields_parse_or_raise_line_error(line_type: str, fields: list[bytes], windows: int) -> None:
    raw = b",".join([line_type.encode(), *fields])
    try:
        parsed = rpm.parse_line(raw, gamma_channels=4, neutron_channels=4, windows=windows)
    except rpm.LineError as exc:
        assert exc.kind in rpm.ERROR_KINDS
        return
    if parsed.counts is not None:
        assert parsed.counts.dtype == np.uint32
        assert parsed.counts.shape in ((4, windows), (4, 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 999_999), min_size=12, max_size=12), st.sampled_from(["GB", "GS", "GA", "GL"]))
def test_counts_come_back_as_sent(counts: list[int], line_type: str) -> None:
    """Window-major fields (all channels of window 1, then window 2, ...) become (channels, windows) counts."""
    raw = ",".join([line_type, *(f"{c:06d}" for c in counts)]).encode() + b"\r\n"
    parsed = rpm.parse_line(raw, gamma_channels=4, neutron_channels=4, windows=3)
    assert parsed.counts is not None
    np.testing.assert_array_equal(parsed.counts, np.array(counts, dtype=np.uint32).reshape(3, 4).T)


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mutated_rpm_streams_never_raise_anything_else(rng: random.Random) -> None:
    RPM.run(RPM.make(rng))


# ---- LWXR frame reader --------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.integers(1, 64), st.integers(0, 2**32 - 1), st.binary(max_size=6)),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_frames_come_out_as_they_went_in_however_the_stream_is_cut(
    specs: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    """Good frames with junk between them (no magic in it), cut anywhere: each frame comes out whole, in order."""
    sent, stream = [], b""
    for line, (energies, pixels, seed, junk) in enumerate(specs):
        data = np.random.default_rng(seed).integers(0, 65536, (energies, pixels), dtype=np.uint16)
        junk = junk.replace(b"L", b"l")
        stream += junk + xray.pack_frame(data, lane="l1", scan_id=1, line=line, t_ns=line, encoder_mm=float(line))
        sent.append(data)
    points = sorted({min(c, len(stream)) for c in cuts})
    reader = xray.FrameReader()
    out = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        out += reader.feed(stream[a:b])
    out += reader.finish()
    frames = [item for item in out if isinstance(item, xray.Frame)]
    assert [f.line for f in frames] == list(range(len(specs)))
    for frame, data in zip(frames, sent, strict=True):
        np.testing.assert_array_equal(frame.data, data)


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mutated_lwxr_streams_never_raise(rng: random.Random) -> None:
    LWXR.run(LWXR.make(rng))


def test_the_fuzz_targets_reach_past_the_first_check() -> None:
    """The mutations are structured enough that each parser accepts some of them (so later checks are reached)."""
    for target in (DECODER, QUERY, RPM, LWXR):
        rng = random.Random(7)
        accepted = sum(target.run(target.make(rng)) for _ in range(2000))
        assert 0 < accepted < 2000, (target.name, accepted)
    assert json.loads(fuzz.dumps({"a": float("inf")}).replace(b"Infinity", b"1")) == {"a": 1}
