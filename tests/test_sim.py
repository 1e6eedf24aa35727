"""The lane simulator: physics (lanewatch.drivers.sim.physics) and the RPM line protocol it serves
(lanewatch.drivers.sim.lane)."""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from lanewatch.drivers.sim import physics
from lanewatch.drivers.sim.lane import LaneSimulator, counts_line, speed_line
from lanewatch.drivers.sim.physics import GAMMA_DT_S, SOURCES, Traffic, window_response

REPO = Path(__file__).resolve().parents[1]
WINDOWS = [30.0, 400.0, 3000.0]
SETUP = ("SG1", "SG2", "SG3", "SN1", "SN2")
SCAN = ("GS", "GA", "NS", "NA", "SP")


def line_pattern(k: int) -> re.Pattern[str]:
    """Every well-formed line for K energy windows."""
    g = r"\d{6}" + r",\d{6}" * (4 * k - 1)
    n = r"\d{6},\d{6},\d{6},\d{6}"
    return re.compile(
        rf"^(?:(?:GB|GL|GH|GS|GA),{g}|(?:NB|NH|NS|NA),{n}|SP,\d\.\d{{4}},\d{{2}}\.\d{{3}},\d{{3}}\.\d{{2}},000000"
        rf"|GX,\d{{6}},\d{{6}},000000,000000|(?:TT|TC),000000,000000,000000,000000|S[GN]\d(?:,[\d.]+)+)$"
    )


def read_all(sock: socket.socket, timeout_s: float = 30.0) -> bytes:
    """Everything until the simulator closes the connection."""
    sock.settimeout(timeout_s)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_lines_until(sock: socket.socket, done, timeout_s: float = 20.0) -> list[str]:
    """Lines received until ``done(lines)`` is true."""
    sock.settimeout(timeout_s)
    buf = b""
    lines: list[str] = []
    while not done(lines):
        chunk = sock.recv(4096)
        assert chunk, "simulator closed the connection early"
        buf += chunk
        *complete, buf = buf.split(b"\r\n")
        lines += [c.decode("ascii") for c in complete]
    return lines


def run_to_completion(sim: LaneSimulator) -> bytes:
    """Connect before starting, let ``count`` occupancies pass, stop, and return every byte received."""
    port = sim.serve_tcp()
    with socket.create_connection(("127.0.0.1", port)) as client:
        greeting = read_until_setup(client)
        finished: list[bool] = []
        stopper = threading.Thread(target=lambda: (finished.append(sim.wait(timeout=60)), sim.stop()))
        sim.start()
        stopper.start()
        rest = read_all(client)
        stopper.join()
    assert finished == [True]
    return greeting + rest


def read_until_setup(sock: socket.socket) -> bytes:
    """The setup lines a client gets on connecting (which also shows the simulator has accepted it)."""
    sock.settimeout(10.0)
    data = b""
    while data.count(b"\r\n") < len(SETUP):
        data += sock.recv(1)
    return data


def split_occupancies(lines: list[str]) -> list[list[str]]:
    """Scan lines of each occupancy: from the first GS/GA/NS/NA after background to the GX that ends it."""
    occupancies: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        kind = line[:2]
        if current is None:
            if kind in ("GS", "GA", "NS", "NA"):
                current = [line]
            else:
                assert kind in ("GB", "GL", "GH", "NB", "NH", "TT", "TC", "SG", "SN"), f"{line!r} outside an occupancy"
        elif kind == "GX":
            occupancies.append([*current, line])
            current = None
        else:
            assert kind in SCAN, f"{line!r} inside an occupancy"
            current.append(line)
    assert current is None, "stream ended inside an occupancy"
    return occupancies


# --- physics ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_passages_and_readings_do_not_disturb_them() -> None:
    a, b, c = Traffic(11, WINDOWS), Traffic(11, WINDOWS), Traffic(12, WINDOWS)
    for _ in range(25):
        b.background_reading(2.0)  # its own random stream
        pa, pb, pc = a.next_passage(), b.next_passage(), c.next_passage()
        assert pa.gamma.dtype == np.int64 and pa.neutron.dtype == np.int64
        assert pa.gamma.shape[1:] == (4, 2) and pa.neutron.shape[1] == 4
        np.testing.assert_array_equal(pa.gamma, pb.gamma)
        np.testing.assert_array_equal(pa.neutron, pb.neutron)
        assert pa.truth == pb.truth
        json.dumps(pa.truth)
    assert pa.truth != pc.truth


def test_passage_shape_follows_vehicle_length_and_speed() -> None:
    traffic = Traffic(3)
    for _ in range(50):
        p = traffic.next_passage()
        assert p.gamma.shape[1:] == (4, 1)
        assert 3.0 <= p.speed_kmh <= 10.0
        crossing_s = p.length_m / (p.speed_kmh / 3.6) + physics.HOLD_IN_S
        assert len(p.gamma) == math.ceil(crossing_s / GAMMA_DT_S - 1e-9)
        assert len(p.neutron) == math.ceil(len(p.gamma) * GAMMA_DT_S / physics.NEUTRON_DT_S - 1e-9)
        assert p.truth["category"] == SOURCES[p.truth["source"]]
        assert {"index", "category", "source", "sources", "cargo", "vehicle", "length_m", "speed_kmh"} <= set(p.truth)


def test_background_readings_are_poisson_around_the_site_background() -> None:
    traffic = Traffic(5, WINDOWS)
    gamma_mean, neutron_mean = traffic.background_mean()
    gross = gamma_mean.sum(axis=1)
    assert np.all((gross > 200) & (gross < 270)), gross  # SRLS 212-256 cps per channel, with drift
    assert np.all((neutron_mean > 1.9) & (neutron_mean < 5.3)), neutron_mean
    readings = [traffic.background_reading(1.0) for _ in range(3000)]
    for samples, mean in (
        (np.array([r[0] for r in readings]), gamma_mean),
        (np.array([r[1] for r in readings]), neutron_mean),
    ):
        n = len(samples)
        assert np.all(np.abs(samples.mean(axis=0) - mean) < 5 * np.sqrt(mean / n))
        assert np.all(np.abs(samples.var(axis=0, ddof=1) / mean - 1) < 0.15)


def test_background_drifts_by_a_few_percent_over_minutes() -> None:
    traffic = Traffic(8)
    means = []
    for _ in range(40):
        means.append(traffic.background_mean()[0].sum())
        traffic.idle(30.0)
    spread = (max(means) - min(means)) / np.mean(means)
    assert 0.01 < spread < 0.10, spread


def test_shadow_shielding_lowers_counts_more_for_heavier_cargo() -> None:
    traffic = Traffic(21, mix={"none": 1.0})
    ratios: dict[str, list[float]] = {}
    while min((len(ratios.get(k, [])) for k in ("empty", "organic", "metal")), default=0) < 15:
        p = traffic.next_passage()
        v = p.speed_kmh / 3.6
        cargo_start = p.truth["vehicle"]["cab_m"] + p.truth["vehicle"]["gap_m"]
        t = (np.arange(len(p.gamma)) + 0.5) * GAMMA_DT_S
        inside = (v * t > cargo_start + 1.5) & (v * t < p.length_m - 1.5)
        if inside.sum() < 5:
            continue
        ratio = p.gamma[inside].sum() / (p.background_gamma_cps.sum() * GAMMA_DT_S * inside.sum())
        ratios.setdefault(p.truth["cargo"]["type"], []).append(ratio)
    mean = {k: float(np.mean(v)) for k, v in ratios.items()}
    assert mean["metal"] < mean["organic"] < mean["empty"] < 1.0, mean
    assert 0.70 < mean["metal"] < 0.82 and 0.85 < mean["organic"] < 0.91 and mean["empty"] > 0.94, mean


def test_point_source_peaks_when_it_passes_the_pillars() -> None:
    traffic = Traffic(4, mix={"cs137": 1.0})
    offsets = []
    while len(offsets) < 20:
        p = traffic.next_passage()
        (src,) = p.truth["sources"]
        if src["peak_excess_cps"] < 400:
            continue
        gross = np.convolve(p.gamma.sum(axis=(1, 2)), np.ones(5) / 5, mode="same")
        t_peak = (np.argmax(gross) + 0.5) * GAMMA_DT_S
        offsets.append(t_peak - src["position_m"] / (p.speed_kmh / 3.6))
        assert (gross.max() - np.median(gross)) / GAMMA_DT_S > 0.4 * src["peak_excess_cps"]
    offsets_arr = np.abs(offsets)
    assert np.median(offsets_arr) < 0.4 and np.mean(offsets_arr < 1.0) >= 0.9, offsets


def test_energy_windows_tell_norm_from_threats_and_medical() -> None:
    def low_to_high(emitter: str, layers=()) -> float:
        low, high = window_response(emitter, WINDOWS, layers)
        return low / high

    norm = max(low_to_high("k40"), low_to_high("ceramics"))
    for emitter in ("cs137", "heu", "tc99m", "i131"):
        assert low_to_high(emitter) > 1.5 * norm, emitter
    assert low_to_high("co60") < low_to_high("cs137") / 3  # Co-60 looks like NORM (Ely et al.)
    assert low_to_high("k40", [("water", 30.0)]) > 1.3 * low_to_high("k40")  # down-scatter in cargo
    assert low_to_high("tc99m", [("water", 10.0)]) > 0  # low energy survives some tissue
    np.testing.assert_allclose(window_response("cs137", WINDOWS).sum(), 1.0, rtol=1e-9)
    assert window_response("cs137", WINDOWS, [("lead", 23.0)]).sum() < 0.2


def test_window_fractions_in_passages_follow_the_source() -> None:
    def high_window_share(source: str) -> float:
        """Share of the excess (counts above the unshielded background) in the 400-3000 keV window."""
        traffic = Traffic(31, WINDOWS, mix={source: 1.0})
        excess = np.zeros(2)
        for _ in range(40):
            p = traffic.next_passage()
            top = np.argsort(p.gamma.sum(axis=(1, 2)))[-5:]
            excess += p.gamma[top].sum(axis=(0, 1)) - p.background_gamma_cps.sum(axis=0) * GAMMA_DT_S * len(top)
        assert excess[0] > 0 and excess.sum() > 0
        return excess[1] / excess.sum()

    norm = min(high_window_share("k40-fertilizer"), high_window_share("ceramics"))
    assert high_window_share("cs137") < 0.75 * norm
    assert high_window_share("tc99m") < 0.25 * norm


def test_plutonium_adds_neutrons_and_metal_cargo_adds_ship_effect_neutrons() -> None:
    def neutron_excess(mix: dict[str, float], cargo: str | None, passages: int) -> tuple[float, float]:
        traffic = Traffic(41, mix=mix)
        excess, counted = 0.0, 0
        while counted < passages:
            p = traffic.next_passage()
            if cargo is not None and p.truth["cargo"]["type"] != cargo:
                continue
            excess += p.neutron.sum() - p.background_neutron_cps.sum() * len(p.neutron)
            counted += len(p.neutron)
        return excess, counted

    pu, samples = neutron_excess({"pu": 1.0}, None, 400)
    assert pu / samples > 1.0  # cps over the 4 tubes, averaged over the whole occupancy
    metal, m_samples = neutron_excess({"none": 1.0}, "metal", 400)
    empty, e_samples = neutron_excess({"none": 1.0}, "empty", 400)
    assert metal / m_samples > empty / e_samples + 0.3


def test_mix_and_windows_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown source"):
        Traffic(0, mix={"cs-137": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        Traffic(0, mix={"cs137": 0.0})
    with pytest.raises(ValueError, match="increasing"):
        Traffic(0, windows_kev=[400, 30])


# --- line protocol ---------------------------------------------------------------------------


def test_line_formats() -> None:
    assert counts_line("GS", np.array([[68], [72], [1], [999]])) == "GS,000068,000072,000001,000999"
    two = np.array([[1, 11], [2, 12], [3, 13], [4, 14]])
    assert counts_line("GB", two) == "GB,000001,000002,000003,000004,000011,000012,000013,000014"
    assert speed_line(4.88) == "SP,0.2249,03.032,004.88,000000"  # the SRLS capture's line


def test_tcp_stream_is_well_formed_in_protocol_order_with_truth(tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.jsonl"
    sim = LaneSimulator(
        seed=5,
        windows_kev=WINDOWS,
        mix={"i131": 1.0},
        count=3,
        speedup=math.inf,
        truth_path=truth_path,
        tamper_rate=1.0,
    )
    data = run_to_completion(sim)
    assert data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    lines = data.decode("ascii").split("\r\n")[:-1]
    pattern = line_pattern(2)
    assert all(pattern.match(line) for line in lines), [line for line in lines if not pattern.match(line)]
    assert [line[:3] for line in lines[:5]] == list(SETUP)
    assert lines[5].startswith("NB") and lines[6].startswith("GB")
    assert lines[-2].startswith("NB") and lines[-1].startswith("GB")  # background right after the last GX

    occupancies = split_occupancies(lines)
    truths = [json.loads(line) for line in truth_path.read_text().splitlines()]
    assert len(occupancies) == len(truths) == 3
    assert [line[:2] for line in lines].count("TT") == 3 and [line[:2] for line in lines].count("TC") == 3
    for number, (occ, truth) in enumerate(zip(occupancies, truths, strict=True), start=1):
        kinds = [line[:2] for line in occ]
        n = kinds.count("GS") + kinds.count("GA")
        assert n == round(truth["duration_s"] / GAMMA_DT_S)
        assert kinds.count("NS") + kinds.count("NA") == math.ceil(n / 5)
        assert kinds.count("SP") == n // 6
        assert occ[-1].startswith(f"GX,{number:06d},")
        assert truth["device_occupancy"] == number and truth["source"] == "i131" and truth["category"] == "medical"
        assert datetime.fromisoformat(truth["start"]) <= datetime.fromisoformat(truth["end"])
        assert truth["device_gamma_alarm"] == ("GA" in kinds)
    assert any(t["device_gamma_alarm"] for t in truths)


def test_device_alarms_follow_its_rules_on_its_tracked_background() -> None:
    sim = LaneSimulator(seed=9, mix={"tc99m": 0.3, "cs137": 0.2, "pu": 0.5}, count=8, speedup=math.inf, gap_s=12.0)
    lines = read_protocol(run_to_completion(sim))
    gamma_bg: list[int] = []
    neutron_bg: list[int] = []
    window: list[int] = []
    alarms = {"GA": 0, "NA": 0}
    for line in lines:
        kind, *fields = line.split(",")
        total = sum(int(f) for f in fields) if kind != "SP" else 0
        if kind == "GB":
            gamma_bg = [*gamma_bg[-3:], total]  # the device keeps its last 4 readings
            window = []
        elif kind == "NB":
            neutron_bg = [*neutron_bg[-3:], total]
        elif kind in ("GS", "GA"):
            window = [*window[-4:], total]  # 1 s of 0.2 s samples
            expected = np.mean(gamma_bg) * GAMMA_DT_S * len(window)
            assert (kind == "GA") == ((sum(window) - expected) / math.sqrt(expected) > 5.0), line
        elif kind in ("NS", "NA"):
            assert (kind == "NA") == (total - np.mean(neutron_bg) > 12), line
        elif kind == "GX":
            assert int(fields[1]) == round(np.mean(neutron_bg) * 1000)
        alarms[kind] = alarms.get(kind, 0) + 1
    assert alarms["GA"] > 0 and alarms["NA"] > 0


def read_protocol(data: bytes) -> list[str]:
    return [line for line in data.decode("ascii").split("\r\n")[:-1] if line[:2] not in ("SG", "SN")]


def test_same_seed_gives_the_same_bytes() -> None:
    def stream(seed: int) -> bytes:
        return run_to_completion(
            LaneSimulator(seed=seed, windows_kev=WINDOWS, count=3, speedup=math.inf, tamper_rate=0.3)
        )

    first = stream(17)
    assert first == stream(17)
    assert first != stream(18)


def test_gx_zero_and_background_faults() -> None:
    lines = read_protocol(run_to_completion(LaneSimulator(seed=1, count=2, speedup=math.inf, gx_zero=True)))
    assert [line for line in lines if line.startswith("GX")] and all(
        line.startswith("GX,000000,") for line in lines if line.startswith("GX")
    )
    high = read_protocol(run_to_completion(LaneSimulator(seed=1, count=0, speedup=math.inf, background_scale=8.0)))
    assert [line[:2] for line in high] == ["NH", "GH"]
    low = read_protocol(run_to_completion(LaneSimulator(seed=1, count=0, speedup=math.inf, background_scale=0.15)))
    assert [line[:2] for line in low] == ["NB", "GL"]


def test_client_joining_mid_occupancy_sees_the_stream_from_there_and_can_reconnect() -> None:
    with LaneSimulator(seed=2, mix={"none": 1.0}, gap_s=0.5, speedup=10.0) as sim:
        port = sim.serve_tcp()
        sim.start()
        with socket.create_connection(("127.0.0.1", port)) as first:
            read_lines_until(first, lambda lines: any(line.startswith("GS") for line in lines))
        with socket.create_connection(("127.0.0.1", port)) as second:
            lines = read_lines_until(second, lambda lines: any(line.startswith("GX") for line in lines))
        stream = [line for line in lines if line[:2] not in ("SG", "SN")]
        stream = stream[: stream.index(next(line for line in stream if line.startswith("GX"))) + 1]
        assert [line[:3] for line in lines[:5]] == list(SETUP)
        assert stream[0][:2] in SCAN  # mid-occupancy: no background line first
        assert all(line[:2] in (*SCAN, "GX") for line in stream)


def test_pty_serves_the_same_protocol() -> None:
    with LaneSimulator(seed=3, windows_kev=WINDOWS, count=1, speedup=100.0) as sim:
        path = sim.serve_pty()
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
        try:
            sim.start()
            data = b""
            deadline = time.monotonic() + 30
            while b"GX," not in data or not data.endswith(b"\r\n"):
                assert time.monotonic() < deadline, data[-200:]
                if select.select([fd], [], [], 0.5)[0]:
                    data += os.read(fd, 4096)
        finally:
            os.close(fd)
    lines = data.decode("ascii").split("\r\n")[:-1]
    pattern = line_pattern(2)
    assert all(pattern.match(line) for line in lines), lines
    assert [line[:3] for line in lines[:5]] == list(SETUP)
    assert len(split_occupancies(lines)) == 1


def test_speedup_compresses_time() -> None:
    def scan_lines_in(speedup: float, wall_s: float = 1.5) -> int:
        with LaneSimulator(seed=6, mix={"none": 1.0}, gap_s=0.2, speedup=speedup) as sim:
            port = sim.serve_tcp()
            with socket.create_connection(("127.0.0.1", port)) as client:
                read_until_setup(client)
                sim.start()
                deadline = time.monotonic() + wall_s
                data = b""
                while (left := deadline - time.monotonic()) > 0:
                    client.settimeout(left)
                    try:
                        data += client.recv(65536)
                    except TimeoutError:
                        break
        return data.count(b"GS,") + data.count(b"GA,")

    real_time = scan_lines_in(1.0)
    compressed = scan_lines_in(40.0)
    assert real_time <= 1.5 / GAMMA_DT_S + 2  # one gamma line per 0.2 s at most
    assert compressed > 10 * max(real_time, 5)


# --- command line ----------------------------------------------------------------------------

CLI = (
    "import argparse, sys; from lanewatch.drivers.sim import lane; p = argparse.ArgumentParser(); "
    "lane.add_arguments(p); sys.exit(lane.run(p.parse_args()))"
)


def test_cli_serves_several_lanes_with_their_own_truth_files(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    args = ["--port", "0", "--lanes", "2", "--count", "2", "--speedup", "1000", "--seed", "7", "--truth", str(truth)]
    args += ["--windows-kev", "30,400,3000", "--mix", "none=1,cs137=1", "--gap", "1"]
    done = subprocess.run([sys.executable, "-c", CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"lane 0: socket://127\.0\.0\.1:\d+ \(seed 7", done.stdout)
    assert re.search(r"lane 1: socket://127\.0\.0\.1:\d+ \(seed 8", done.stdout)
    lanes = [[json.loads(line) for line in (tmp_path / f"truth-{i}.jsonl").read_text().splitlines()] for i in (0, 1)]
    assert [len(records) for records in lanes] == [2, 2]
    assert lanes[0] != lanes[1]
    assert all(record["source"] in ("none", "cs137") for records in lanes for record in records)


def test_cli_rejects_a_bad_mix() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLI, "--mix", "cs-137=1"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "cs-137" in done.stderr


def test_cli_stops_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "--port", "0", "--speedup", "20"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(re.search(r":(\d+) ", proc.stdout.readline()).group(1))
        with socket.create_connection(("127.0.0.1", port)) as client:
            read_lines_until(client, lambda lines: any(line.startswith("GS") for line in lines))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert read_all(client, timeout_s=5) is not None  # the simulator closed the connection
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
