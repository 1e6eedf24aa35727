"""``lanewatch evidence``: the bundle it writes for journaled decisions, from the journal file and the query endpoint.

Decisions come from a real lane fed the simulators' vehicles as the drivers' records (a shielded
source imaged by the X-ray scanner simulator, and the same vehicle at a lane without a scanner) into
a journal file; the command runs as a process, as an operator runs it. The ZIP it writes is opened and
every file re-read: the manifest's hashes, the decision against the published schema, the profile CSV
against the decision, the figure and preview as PNG, the N42.42 file with SpecUtils.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import subprocess
import sys
import threading
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import SpecUtils
import zmq
from PIL import Image
from prometheus_client import CollectorRegistry
from support import service_toml

from benchmarks.fusion import LaneFeed, passage_records
from lanewatch.drivers.dicos import publish_scan, read_dicos
from lanewatch.drivers.sim.physics import HOLD_IN_S, Traffic
from lanewatch.drivers.sim.xray import XrayScanner
from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.bus.records import decode
from lanewatch.edge.commands.schema import schema
from lanewatch.edge.config import DetectionConfig, LaneConfig, parse
from lanewatch.edge.console.adjudication import Adjudications
from lanewatch.edge.console.evidence import bundle
from lanewatch.edge.decisions.journal import Journal
from lanewatch.edge.lane.occupancy import Decided, Lane
from lanewatch.edge.ops.metrics import DriverMetrics, ServiceMetrics
from lanewatch.edge.service import Service

WINDOWS = [30.0, 400.0, 3000.0]
SEED = 8
"""The first shielded Cs-137 vehicle of this seed carries a lead shield the image shows."""


@functools.cache
def _passage(scanner_lane: bool) -> tuple[list[dict[str, Any]], Any]:
    """The decision of the first vehicle of ``SEED`` at a lane with (or without) the X-ray scanner simulator, and
    that vehicle's passage (the counts the portal sent)."""
    detection = DetectionConfig(energy_windows_kev=WINDOWS, occupancy_hold_in_s=HOLD_IN_S)
    lane_config = LaneConfig(id="lane1", xray="127.0.0.1:1" if scanner_lane else "")
    feed = LaneFeed(Lane(lane_config, detection, ServiceMetrics(CollectorRegistry())))
    traffic = Traffic(SEED, WINDOWS, {"shielded-cs137": 1.0})
    t = feed.background(traffic, 1_800_000_000 * 10**9, 15.0)
    passage = traffic.next_passage()
    scan = XrayScanner(SEED, pixels=256).scan(passage) if scanner_lane else None
    for when, kind, source, fields in passage_records(passage, scan, t):
        feed(when, kind, source, fields)
    return feed.decided, passage


def _passage_decisions(scanner_lane: bool) -> list[dict[str, Any]]:
    return _passage(scanner_lane)[0]


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


def _read_bundle(out: Path, seq: int) -> dict[str, bytes]:
    """The files of ``out/evidence-SEQ.zip`` (without the manifest), after ``sha256sum -c`` checked them where the
    ZIP is unpacked and the manifest was found to list every file."""
    unpacked = out / f"unpacked-{seq}"
    with zipfile.ZipFile(out / f"evidence-{seq}.zip") as archive:
        names = archive.namelist()
        archive.extractall(unpacked)
        files = {name.split("/", 1)[1]: archive.read(name) for name in names if name != f"decision-{seq}.sha256"}
    assert all(name.startswith(f"decision-{seq}/") for name in names if name != f"decision-{seq}.sha256")
    checked = subprocess.run(
        ["sha256sum", "--strict", "-c", f"decision-{seq}.sha256"], cwd=unpacked, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sorted(line.rsplit(": ", 1)[0] for line in checked.stdout.splitlines()) == sorted(
        f"decision-{seq}/{name}" for name in files
    )
    return files


def _check_bundle(out: Path, seq: int, stored: dict[str, Any]) -> dict[str, bytes]:
    """The bundle says what the journal holds: decision, profile, N42 counts; the figure is a PNG."""
    files = _read_bundle(out, seq)
    decision = json.loads(files["decision.json"])
    assert decision == stored
    jsonschema.Draft202012Validator(schema("decision")).validate(decision)
    rows = list(csv.DictReader(io.StringIO(files["profile.csv"].decode())))
    assert [float(r["gross_counts"]) for r in rows] == [float(c) for c in stored["profile"].get("gross") or []]
    if rows:
        step = stored["speed_kmh"] / 3.6 * stored["profile"]["dt_s"]
        assert [float(r["location_m"]) for r in rows[:2]] == pytest.approx([0.5 * step, 1.5 * step], abs=1e-3)
    with Image.open(io.BytesIO(files["evidence.png"])) as figure:
        assert figure.format == "PNG" and figure.width > 800 and figure.height > 300
    if not stored["profile"].get("gross"):
        assert "occupancy.n42" not in files, "no radiation samples: no N42 file (SpecUtils reads none empty)"
        return files
    n42 = out / f"occupancy-{seq}.n42"
    n42.write_bytes(files["occupancy.n42"])
    spec = SpecUtils.SpecFile()
    spec.loadFile(str(n42), SpecUtils.ParserType.Auto)
    channels, tubes = stored["profile"]["channels"], stored["profile"]["neutron_channels"]
    records = {(m.detectorName(), m.sampleNumber()): m for m in spec.measurements()}
    # every gamma channel's counts per energy window, and every neutron channel's, as the lane received them
    assert {name for name, _ in records} == {f"gamma-{c + 1}" for c in range(len(channels[0]))} | {
        f"neutron-{c + 1}" for c in range(len(tubes[0]))
    }
    for i, sample in enumerate(channels):
        for c, windows in enumerate(sample):
            record = records[(f"gamma-{c + 1}", i + 1)]
            assert list(record.gammaCounts()) == windows
            assert list(record.channelEnergies()) == WINDOWS, "the energy windows' edges (keV)"
    neutron = [sorted((m for m in spec.measurements() if m.detectorName() == f"neutron-{c + 1}"),
                      key=lambda m: m.startTime()) for c in range(len(tubes[0]))]  # fmt: skip
    assert [[float(column[i].neutronCountsSum()) for column in neutron] for i in range(len(tubes))] == tubes
    gross = [sum(r.gammaCountSum() for (name, i), r in records.items() if name.startswith("gamma") and i == j + 1)
             for j in range(len(channels))]  # fmt: skip
    assert gross == stored["profile"]["gross"], "the channels add up to what the tests ran on"
    text = files["occupancy.n42"].decode()
    creator = f"lanewatch {version('lanewatch')}"
    assert f"<RadInstrumentDataCreatorName>{creator}<" in text and f"<RadInstrumentComponentVersion>{creator}<" in text
    assert ">InterSpec<" not in text and "InterSpec could not" not in text
    return files


def test_evidence_of_a_fused_decision_from_the_journal_file(journal_path: Path, tmp_path: Path) -> None:
    store = Adjudications(journal_path)
    store.record(1, "acknowledge", "olga", "operator")
    riid = (Path(__file__).parent / "data" / "riid-cs137.n42").read_bytes()
    act = store.record(1, "adjudicate", "olga", "operator", disposition="test", attachment=("riid.n42", riid))
    store.close()
    out = tmp_path / "out"
    done = _evidence("1", "--out", str(out), "--journal", str(journal_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [str(out / "evidence-1.zip")]
    assert sorted(p.name for p in out.iterdir()) == ["evidence-1.zip"], "one file: the bundle"
    with Journal(journal_path, readonly=True) as journal:
        journaled = journal.get_json(1)
    assert journaled is not None
    stored = json.loads(journaled)
    files = _check_bundle(out, 1, stored)
    sent = np.array(_passage(True)[1].gamma, dtype=float)
    assert np.array(stored["profile"]["channels"][: len(sent)]).tolist() == sent.tolist(), "as the portal sent them"
    assert files["xray-preview.png"] == base64.b64decode(stored["xray"]["preview"]["png_base64"])
    history = json.loads(files["adjudications.json"])["history"]
    assert [(h["kind"], h["user"], h["attachment_file"]) for h in history] == [
        ("acknowledge", "olga", None), ("adjudicate", "olga", f"attachments/{act.id}-riid.n42")
    ]  # fmt: skip
    assert files[f"attachments/{act.id}-riid.n42"] == riid, "the handheld identifier's file, as attached"
    # the console's bundle of the same decision and history: the same files (the N42 file has its own time)
    served = {
        name.split("/", 1)[-1]: body
        for name, body in _zip_files(
            bundle(
                journaled,
                Adjudications.read_history(journal_path, 1),
                "",
                Adjudications.read_attachments(journal_path, 1),
            )
        ).items()
    }
    assert set(served) == set(files) | {"decision-1.sha256"}
    for name in ("decision.json", "profile.csv", "neutron.csv", "evidence.png", "adjudications.json"):
        assert served[name] == files[name], name


def _zip_files(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_evidence_of_a_radiation_only_decision_through_the_query_endpoint(journal_path: Path, tmp_path: Path) -> None:
    text = (
        service_toml(journal_path)
        + """
        [[lanes]]
        id = "lane1"
    """
    )
    config_path = tmp_path / "lanewatch.toml"
    config_path.write_text(text)
    service = Service(parse(text, str(config_path)), CollectorRegistry())
    service.start()
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    store = Adjudications(journal_path)
    store.record(2, "acknowledge", "olga", "operator")
    store.close()
    away = tmp_path / "away.toml"  # the same service, asked from a machine without its journal file
    away.write_text(text.replace(str(journal_path), str(tmp_path / "not-here" / "journal.db")))
    try:
        out = tmp_path / "out"
        done = _evidence("2", "--out", str(out), "--config", str(config_path), "--query")
        missing = _evidence("7", "--out", str(out), "--config", str(config_path), "--query")
        remote = _evidence("2", "--out", str(tmp_path / "remote"), "--config", str(away), "--query")
        stored = json.loads(service.journal.get_json(2) or b"null")
    finally:
        stop.set()
        thread.join(10)
        service.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert stored is not None and "xray" not in stored
    files = _check_bundle(out, 2, stored)
    assert "xray-preview.png" not in files
    history = json.loads(files["adjudications.json"])["history"]
    assert [(h["kind"], h["user"]) for h in history] == [("acknowledge", "olga")], "read from the journal file here"
    assert "not included" not in done.stderr
    assert missing.returncode == 1 and "no decision numbered 7" in missing.stderr
    assert remote.returncode == 0, remote.stdout + remote.stderr
    record = json.loads(_read_bundle(tmp_path / "remote", 2)["adjudications.json"])
    assert record["history"] is None and "history is not included" in record["history_not_included"]
    assert "adjudication history is not included" in remote.stderr and "not-here" in remote.stderr


def test_evidence_refuses_what_it_cannot_read(journal_path: Path, tmp_path: Path) -> None:
    gone = _evidence("1", "--out", str(tmp_path / "out"), "--journal", str(tmp_path / "none.db"))
    assert gone.returncode == 1 and "cannot read decision 1" in gone.stderr and "no such file" in gone.stderr
    assert gone.stdout == "", "errors on stderr: stdout holds only the bundle's path"
    assert not (tmp_path / "out").exists()
    bad = _evidence("0", "--out", str(tmp_path / "out"), "--journal", str(journal_path))
    assert bad.returncode == 2 and "SEQ must be a journal sequence number" in bad.stderr and bad.stdout == ""
    none = _evidence("99", "--out", str(tmp_path / "out"), "--journal", str(journal_path))
    assert none.returncode == 1 and f"no decision numbered 99 in {journal_path}" in none.stderr and none.stdout == ""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = _evidence("1", "--out", str(blocked), "--journal", str(journal_path))
    assert unwritable.returncode == 1 and unwritable.stdout == ""
    assert unwritable.stderr.startswith(f"lanewatch evidence: cannot write {blocked}/evidence-1.zip: ")


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
    files = _check_bundle(out, stored["seq"], stored)
    assert files["profile.csv"].decode().splitlines() == [
        "location_m,gross_counts,expected_counts,matched_filter_z,shape_z,side_z"
    ], "a scan alone: no radiation samples"
    assert files["xray-preview.png"] == base64.b64decode(stored["xray"]["preview"]["png_base64"])
