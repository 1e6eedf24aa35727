"""The anomaly model as an ONNX graph: scaling, mixture log-likelihood, calibration to a benign tail score.

Graph (opset 17, IR 8, standard operators only, so onnxruntime >= 1.18 runs it)::

    features [N, D] float32
      -> u = Asinh((features - loc) / scale)
      -> per component k: |u P_k - mean_k P_k|^2   (one MatMul with the P_k side by side)
      -> log-likelihood = ReduceLogSumExp_k(log_norm_k - 0.5 |.|^2);  nll = -log-likelihood
      -> score = the calibration curve of the input's mode (which sensors it had), piecewise linear in nll
    outputs: score [N], nll [N]

The calibration curve of a mode maps nll to ``-log10`` of the fraction of ordinary (benign, NORM and
medical) vehicles of that mode scoring at least as high, measured on a calibration corpus kept apart
from training, and extended beyond its last point by the exponential tail fitted to its top percent.
A mode is a combination of the 0/1 flag features (:data:`MODE_FLAGS`): a lane with energy windows and
one without, each with and without an image, get their own curve, so a score of 3 means one ordinary
vehicle in a thousand on that kind of lane.

Building needs the ``onnx`` package (the ``train`` extra); running needs only onnxruntime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lanewatch.models.mixture import Mixture

OPSET = 17
IR_VERSION = 8
INPUT = "features"
OUTPUTS = ("score", "nll")
MODE_FLAGS = ("windows_present", "image_present")
"""Flag features whose combinations each get a calibration curve."""
TAIL_FRACTION = 0.01
"""Top fraction of a calibration set whose exponential tail extends the curve."""
STEP = 0.25
"""Spacing of the curve's points in score (log10 units)."""
MIN_TAIL_ROWS = 10
"""Fewest calibration rows beyond the last empirical point."""


@dataclass(frozen=True)
class Curve:
    """A calibration curve: score rises piecewise linearly through (knots, scores), then with ``tail_slope``."""

    knots: np.ndarray
    """Increasing nll values (nats)."""
    scores: np.ndarray
    """Score at each knot (-log10 of the benign exceedance fraction)."""
    tail_slope: float
    """Score per nat beyond the last knot."""

    def __call__(self, nll: np.ndarray) -> np.ndarray:
        """Score of each nll (numpy twin of the graph's calibration)."""
        x = np.asarray(nll, np.float64)
        y = np.interp(x, self.knots, self.scores)
        return np.where(x > self.knots[-1], self.scores[-1] + self.tail_slope * (x - self.knots[-1]), y)

    def to_json(self) -> dict[str, list[float] | float]:
        return {
            "knots": [round(float(v), 6) for v in self.knots],
            "scores": [round(float(v), 6) for v in self.scores],
            "tail_slope": round(self.tail_slope, 6),
        }


def calibrate(nll: np.ndarray) -> Curve:
    """The curve of one mode from the nll of its calibration rows (at least MIN_TAIL_ROWS / TAIL_FRACTION).

    Empirical up to the top ``TAIL_FRACTION``; beyond it, the least-squares line through the last point
    of the exceedance (log10) of the calibration rows in that tail against their nll.
    """
    x = np.sort(np.asarray(nll, np.float64))
    n = len(x)
    if n * TAIL_FRACTION < MIN_TAIL_ROWS:
        raise ValueError(f"calibration needs at least {MIN_TAIL_ROWS / TAIL_FRACTION:.0f} rows per mode, got {n}")
    levels = np.arange(0.0, -np.log10(TAIL_FRACTION) + 1e-9, STEP)
    knots = np.quantile(x, 1.0 - 10.0**-levels)
    knots = np.maximum.accumulate(knots + np.arange(len(knots)) * 1e-6)
    tail = x[x > knots[-1]][::-1]  # descending: rank 1 is the highest
    dx = tail - knots[-1]
    ds = np.log10(n / np.arange(1, len(tail) + 1)) - levels[-1]
    slope = float(np.dot(dx, ds) / np.dot(dx, dx)) if np.dot(dx, dx) > 0 else 1.0
    return Curve(knots, levels, max(slope, 1e-3))


def _modes(count: int) -> np.ndarray:
    """(2^count, count) 0/1 table of the flag combinations, mode index = binary number of the flags."""
    return np.array([[(m >> (count - 1 - c)) & 1 for c in range(count)] for m in range(2**count)], np.float32)


def build(
    model: Mixture,
    curves: Sequence[Curve],
    feature_names: Sequence[str],
    metadata: Mapping[str, str],
    doc: str,
) -> bytes:
    """The serialized ONNX model. ``curves`` holds one :class:`Curve` per mode (see :func:`mode_index`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = len(feature_names)
    k = model.means.shape[0]
    modes = _modes(len(MODE_FLAGS))
    if len(curves) != len(modes):
        raise ValueError(f"need {len(modes)} calibration curves (one per mode), got {len(curves)}")
    chol = model.precision_chol.astype(np.float64)
    p_side = np.concatenate(list(chol), axis=1)  # (D, K*D)
    offset = np.concatenate([model.means[j] @ chol[j] for j in range(k)])  # (K*D,)
    width = max(len(c.knots) for c in curves)
    knots = np.zeros((len(modes), width))
    widths = np.zeros((len(modes), width))
    slopes = np.zeros((len(modes), width))
    base = np.zeros(len(modes))
    for m, c in enumerate(curves):
        j = len(c.knots)
        knots[m, :j] = c.knots
        seg = np.diff(c.knots)
        widths[m, : j - 1] = seg
        slopes[m, : j - 1] = np.diff(c.scores) / np.maximum(seg, 1e-12)
        widths[m, j - 1] = 1e30
        slopes[m, j - 1] = c.tail_slope
        knots[m, j:] = c.knots[-1]  # unused slots: zero width
        base[m] = c.scores[0]
    flags = [list(feature_names).index(f) for f in MODE_FLAGS]

    def const(name: str, value: np.ndarray, dtype: type = np.float32) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    initializers = [
        const("loc", model.loc),
        const("scale", model.scale),
        const("p_side", p_side),
        const("offset", offset),
        const("comp_shape", np.array([-1, k, d]), np.int64),
        const("axis2", np.array([2]), np.int64),
        const("half", np.array(-0.5)),
        const("log_norm", model.log_norm),
        const("knots", knots[None, :, :]),
        const("widths", widths[None, :, :]),
        const("slopes", slopes[None, :, :]),
        const("base", base[None, :]),
        const("zero", np.array(0.0)),
        const("one", np.array(1.0)),
        const("two", np.array(2.0)),
        const("half_one", np.array(0.5)),
        const("flag_idx", np.array(flags), np.int64),
        const("modes", modes[None, :, :]),
        const("col_shape", np.array([-1, 1, 1]), np.int64),
        const("flag_shape", np.array([-1, 1, len(flags)]), np.int64),
    ]
    n = helper.make_node
    nodes = [
        n("Sub", [INPUT, "loc"], ["centred"]),
        n("Div", ["centred", "scale"], ["standard"]),
        n("Asinh", ["standard"], ["u"]),
        n("MatMul", ["u", "p_side"], ["projected"]),
        n("Sub", ["projected", "offset"], ["whitened"]),
        n("Reshape", ["whitened", "comp_shape"], ["per_comp"]),
        n("Mul", ["per_comp", "per_comp"], ["squares"]),
        n("ReduceSum", ["squares", "axis2"], ["mahalanobis"], keepdims=0),
        n("Mul", ["mahalanobis", "half"], ["neg_half"]),
        n("Add", ["neg_half", "log_norm"], ["log_comp"]),
        n("ReduceLogSumExp", ["log_comp"], ["log_lik"], axes=[1], keepdims=0),
        n("Neg", ["log_lik"], ["nll"]),
        # calibration: score per mode, then the input's mode
        n("Reshape", ["nll", "col_shape"], ["nll_col"]),
        n("Sub", ["nll_col", "knots"], ["above"]),
        n("Min", ["above", "widths"], ["capped"]),
        n("Max", ["capped", "zero"], ["ramp"]),
        n("Mul", ["ramp", "slopes"], ["rise"]),
        n("ReduceSum", ["rise", "axis2"], ["rise_sum"], keepdims=0),
        n("Add", ["rise_sum", "base"], ["mode_scores"]),
        n("Gather", [INPUT, "flag_idx"], ["flag_values"], axis=1),
        n("Greater", ["flag_values", "half_one"], ["flag_on"]),
        n("Cast", ["flag_on"], ["flags"], to=TensorProto.FLOAT),
        n("Reshape", ["flags", "flag_shape"], ["flags3"]),
        # indicator of mode m: prod_c (1 - b - f + 2 b f), b the mode's bit, f the flag
        n("Mul", ["flags3", "modes"], ["bf"]),
        n("Mul", ["bf", "two"], ["two_bf"]),
        n("Sub", ["one", "modes"], ["one_minus_b"]),
        n("Sub", ["one_minus_b", "flags3"], ["one_minus_b_f"]),
        n("Add", ["one_minus_b_f", "two_bf"], ["match"]),
        n("ReduceProd", ["match"], ["indicator"], axes=[2], keepdims=0),
        n("Mul", ["mode_scores", "indicator"], ["weighted"]),
        n("ReduceSum", ["weighted", "flag_idx_1"], ["score"], keepdims=0),
    ]
    initializers.append(const("flag_idx_1", np.array([1]), np.int64))
    graph = helper.make_graph(
        nodes,
        "lanewatch_anomaly",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", d])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("nll", TensorProto.FLOAT, ["N"]),
        ],
        initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="lanewatch",
        doc_string=doc,
    )
    onnx_model.ir_version = IR_VERSION
    helper.set_model_props(onnx_model, dict(metadata))
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model.SerializeToString(deterministic=True)


def mode_index(features: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """Mode of each row: the binary number of its :data:`MODE_FLAGS` (first flag most significant)."""
    cols = [list(feature_names).index(f) for f in MODE_FLAGS]
    bits = (np.asarray(features)[:, cols] > 0.5).astype(np.int64)
    return bits @ (2 ** np.arange(len(cols) - 1, -1, -1))


def curves_json(curves: Sequence[Curve]) -> str:
    """The curves as JSON, for the model's metadata."""
    return json.dumps([c.to_json() for c in curves], separators=(",", ":"))
