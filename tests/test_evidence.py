"""``lanewatch evidence``: the files it writes for journaled decisions, from the journal file and the query endpoint.

Decisions come from a real lane fed the simulators' vehicles as the drivers' records (a shielded
source imaged by the X-ray scanner simulator, and the same vehicle at a lane without a scanner) into
a journal file; the command runs as a process, as an operator runs it.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from PIL import Image
from prometheus_client import CollectorRegistry

from benchmarks.fusion import LaneFeed, passage_records
from lanewatch.drivers.dicos import publish_scan, read_dicos
from lanewatch.drivers.sim.physics import HOLD_IN_S, Traffic
from lanewatch.drivers.sim.xray import XrayScanner
from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.bus.records import decode
from lanewatch.edge.commands import evidence
from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.config import DetectionConfig, LaneConfig, parse
from lanewatch.edge.decisions.journal import Journal
from lanewatch.edge.lane.occupancy import Decided, Lane
from lanewatch.edge.ops.metrics import DriverMetrics, ServiceMetrics
from lanewatch.edge.service import Service

WINDOWS = [30.0, 400.0, 3000.0]
SEED = 8
"""The first shielded Cs-137 vehicle of this seed carries a lead shield the image shows."""


def _passage_decisions(scanner_lane: bool) -> list[dict[str, Any]]:
    """The decision of the first vehicle of ``SEED`` at a lane with (or without) the X-ray scanner simulator."""
    detection = DetectionConfig(energy_windows_kev=WINDOWS, occupancy_hold_in_s=HOLD_IN_S)
    lane_config = LaneConfig(id="lane1", xray="127.0.0.1:1" if scanner_lane else "")
    feed = LaneFeed(Lane(lane_config, detection, ServiceMetrics(CollectorRegistry())))
    traffic = Traffic(SEED, WINDOWS, {"shielded-cs137": 1.0})
    t = feed.background(traffic, 1_800_000_000 * 10**9, 15.0)
    passage = traffic.next_passage()
    scan = XrayScanner(SEED, pixels=256).scan(passage) if scanner_lane else None
    for when, kind, source, fields in passage_records(passage, scan, t):
        feed(when, kind, source, fields)
    return feed.decided


@pytest.fixture(scope="module")
def journal_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal with the fused decision (seq 1) and the same vehicle at a lane without a scanner (seq 2)."""
    path = tmp_path_factory.mktemp("evidence") / "journal.db"
    fused, plain = _passage_decisions(True), _passage_decisions(False)
    assert len(fused) == len(plain) == 1
    with Journal(path) as journal:
        journal.append(fused[0])
        journal.append({**plain[0], "occupancy_id": plain[0]["occupancy_id"] + "-plain"})
    return path


def _evidence(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "evidence", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _check_files(out: Path, seq: int, stored: dict[str, Any]) -> Image.Image:
    """The three files exist and say what the journal holds; returns the decoded evidence image."""
    decision = json.loads((out / f"decision-{seq}.json").read_text())
    assert decision == stored
    profile = json.loads((out / f"profile-{seq}.json").read_text())
    rad = profile["radiation"]
    assert len(rad["location_m"]) == len(rad["gross"]) == len(stored["profile"]["gross"]) > 10
    step = stored["speed_kmh"] / 3.6 * stored["profile"]["dt_s"]
    assert rad["location_m"][:2] == pytest.approx([0.5 * step, 1.5 * step], abs=1e-3)
    assert len(profile["findings"]) == sum(isinstance(a.get("location_m"), float) for a in stored["alarms"])
    with Image.open(out / f"evidence-{seq}.png") as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB"
        return image.copy()


def test_evidence_of_a_fused_decision_from_the_journal_file(journal_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _evidence("1", "--out", str(out), "--journal", str(journal_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [
        str(out / f"{name}-1.{ext}")
        for name, ext in (("evidence", "png"), ("profile", "json"), ("decision", "json"), ("evidence", "zip"))
    ]
    with Journal(journal_path, readonly=True) as journal:
        stored = journal.get(1)
    assert stored is not None
    image = _check_files(out, 1, stored)
    preview_info = stored["xray"]["preview"]
    preview = Image.open(io.BytesIO(base64.b64decode(preview_info["png_base64"])))
    lay = evidence.layout(stored, preview)
    assert image.size == (lay.width, lay.height)
    # the scan is drawn where the metres axis puts it, as the preview scaled up: compare the grey levels
    w, h = lay.image_size
    left = round(lay.px(preview_info["x_m"][0]))
    drawn = np.asarray(image.convert("L"))[evidence.MARGIN // 2 : evidence.MARGIN // 2 + h, left : left + w]
    expected = np.asarray(preview.resize((w, h), Image.Resampling.NEAREST), dtype=float)
    assert np.corrcoef(drawn.reshape(-1), expected.reshape(-1))[0, 1] > 0.9
    # the lead shield's box is drawn in the high-Z colour around the fused finding's place
    found = next(a for a in stored["alarms"] if a["reason"] in ("shielded-source-suspected", "image-review"))
    x = round(lay.px(found["object"]["x_m"][0]))
    rows = np.asarray(image)[evidence.MARGIN // 2 : evidence.MARGIN // 2 + h, x - 1 : x + 2]
    assert (rows == evidence.COLOURS["high_z"]).all(axis=-1).any()


def test_evidence_of_a_radiation_only_decision_through_the_query_endpoint(journal_path: Path, tmp_path: Path) -> None:
    ingest, alerts, query, http = free_ports(4)
    text = f"""
        [service]
        journal = "{journal_path}"
        http = "127.0.0.1:{http}"
        [bus]
        ingest = "tcp://127.0.0.1:{ingest}"
        alerts = "tcp://127.0.0.1:{alerts}"
        query = "tcp://127.0.0.1:{query}"
        plaintext = true
        [[lanes]]
        id = "lane1"
    """
    config_path = tmp_path / "lanewatch.toml"
    config_path.write_text(text)
    service = Service(parse(text, str(config_path)), CollectorRegistry())
    service.start()
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        out = tmp_path / "out"
        done = _evidence("2", "--out", str(out), "--config", str(config_path), "--query")
        missing = _evidence("7", "--out", str(out), "--config", str(config_path), "--query")
        stored = service.journal.get(2)
    finally:
        stop.set()
        thread.join(10)
        service.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert stored is not None and "xray" not in stored
    image = _check_files(out, 2, stored)
    lay = evidence.layout(stored, None)
    assert image.size == (lay.width, lay.height) and lay.image_size == (0, 0) and lay.plots == 2
    assert missing.returncode == 1 and "no decision numbered 7" in missing.stdout


def test_evidence_refuses_what_it_cannot_read(journal_path: Path, tmp_path: Path) -> None:
    gone = _evidence("1", "--out", str(tmp_path / "out"), "--journal", str(tmp_path / "none.db"))
    assert gone.returncode == 1 and "cannot read decision 1" in gone.stdout
    assert not (tmp_path / "out").exists()
    bad = _evidence("0", "--out", str(tmp_path / "out"), "--journal", str(journal_path))
    assert bad.returncode == 2


def test_evidence_of_a_scan_without_an_occupancy(tmp_path: Path, shared_data: Path) -> None:
    """The DICOS sample, published by the import's own code over a real bus, decided alone: image, no plots."""
    ctx = zmq.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        port = sub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub = ingest.driver_publisher(ctx, f"tcp://127.0.0.1:{port}")
        for _ in range(100):  # a socket takes in its new peer when it is used: poll the SUB while waiting
            sub.poll(0)
            if ingest.wait_for_subscriber(pub, 0.05):
                break
        else:
            pytest.fail("the subscription never reached the publisher")
        sent = publish_scan(
            RecordPublisher(pub, "lane1", "dicos", DriverMetrics(CollectorRegistry())),
            read_dicos(shared_data / "dicos" / "SimpleProcessingDX.dcs"),
        )
        records = [decode(sub.recv_multipart()) for _ in range(sent)]
        pub.close(0)
        sub.close(0)
    finally:
        ctx.term()
    lane = Lane(LaneConfig(id="lane1"), DetectionConfig(), ServiceMetrics(CollectorRegistry()))
    decided = [e.decision for r in records for e in lane.on_record(r, r.t_mono_ns) if isinstance(e, Decided)]
    later = records[-1].t_mono_ns + round(10 * 1e9)
    decided += [e.decision for e in lane.on_tick(later) if isinstance(e, Decided)]
    assert len(decided) == 1 and decided[0]["end_reason"] == "no-occupancy"
    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        stored = journal.append(decided[0])
    out = tmp_path / "out"
    done = _evidence(str(stored["seq"]), "--out", str(out), "--journal", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    with Image.open(out / f"evidence-{stored['seq']}.png") as image:
        size = image.size
    preview = Image.open(io.BytesIO(base64.b64decode(stored["xray"]["preview"]["png_base64"])))
    lay = evidence.layout(stored, preview)
    scale = round(evidence.TARGET_WIDTH / preview.width)  # drawn a whole number of times larger, no plots
    assert size == (lay.width, lay.height) and lay.plots == 0
    assert lay.image_size == (scale * preview.width, scale * preview.height) and lay.height == (
        evidence.MARGIN // 2 + lay.image_size[1] + evidence.MARGIN
    )
    profile = json.loads((out / f"profile-{stored['seq']}.json").read_text())
    assert profile["axis"] == "metres from the scan's first line" and profile["radiation"]["gross"] == []
