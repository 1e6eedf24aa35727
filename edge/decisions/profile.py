"""A decision's plotted data on one metres-from-the-front axis: radiation profile, neutrons, image, findings.

Shared by the console's detail page, the evidence bundle and ``lanewatch evidence``.
"""

from __future__ import annotations

from typing import Any


def findings(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """Located entries of ``alarms``: reason, alarm flag, location and its standard deviation (m)."""
    return [
        {
            "reason": a.get("reason"),
            "alarm": bool(a.get("alarm")),
            "location_m": a["location_m"],
            "location_sd_m": a.get("location_sd_m"),
        }
        for a in decision.get("alarms") or []
        if isinstance(a, dict) and isinstance(a.get("location_m"), int | float)
    ]


def profile_data(decision: dict[str, Any]) -> dict[str, Any]:
    """What the plots show, on the metres-from-the-front axis."""
    profile = decision.get("profile") or {}
    speed = decision.get("speed_kmh") or profile.get("speed_kmh")
    dt = profile.get("dt_s")
    gross = profile.get("gross") or []
    step = speed / 3.6 * dt if speed and dt else None
    radiation = {
        "dt_s": dt,
        "speed_kmh": speed,
        "location_m": [round((i + 0.5) * step, 3) for i in range(len(gross))] if step else [],
        **{key: profile.get(key) or [] for key in ("gross", "expected", "mf_z", "shape_z")},
    }
    neutron_dt = profile.get("neutron_dt_s")
    neutron = profile.get("neutron") or []
    nstep = speed / 3.6 * neutron_dt if speed and neutron_dt else None
    xray = decision.get("xray") or {}
    thresholds = {a["reason"]: a.get("threshold") for a in decision.get("alarms") or [] if isinstance(a, dict)}
    return {
        "seq": decision.get("seq"),
        "occupancy_id": decision.get("occupancy_id"),
        "axis": axis_name(decision),
        "radiation": {**radiation, "thresholds": {k: thresholds.get(k) for k in ("gamma", "gamma-shape")}},
        "neutron": {
            "dt_s": neutron_dt,
            "location_m": [round((i + 0.5) * nstep, 3) for i in range(len(neutron))] if nstep else [],
            "counts": neutron,
            "expected": profile.get("neutron_expected"),
        },
        "image": {
            "profile": xray.get("profile") or {"x_m": [], "mean_att": []},
            "preview_x_m": (xray.get("preview") or {}).get("x_m"),
            "registration": xray.get("registration"),
        },
        "findings": findings(decision),
    }


def axis_name(decision: dict[str, Any]) -> str:
    """What the metres count from: the vehicle front, or the scan's first line when its image shows no front."""
    registration = (decision.get("xray") or {}).get("registration") or {}
    if registration.get("origin") == "first-line":
        return "metres from the scan's first line"
    return "metres behind the vehicle front"
