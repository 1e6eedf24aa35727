"""Operations: systemd units, install-units, Prometheus rules and dashboard, status; checked by the real tools.

systemd-analyze verifies and scores the units, promtool checks the rules (and unit-tests
them) and live scrapes of a running service and driver; every PromQL expression shipped in
ops/ must name only metrics the processes really export.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from lanewatch.edge import config as config_module
from lanewatch.edge.commands.demo import free_ports
from lanewatch.edge.ops import status, units
from lanewatch.edge.ops.metrics import ConsoleMetrics, DriverMetrics, ModelMetrics, ServiceMetrics, serve_http

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
OPS = REPO / "ops"
MAX_EXPOSURE = 3.0
"""Highest `systemd-analyze security` exposure accepted for the fusion service."""


def tool(name: str) -> str:
    """Path of a system tool the tests drive; fail (never skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        package = {"systemd-analyze": "systemd", "systemd-escape": "systemd", "promtool": "prometheus"}.get(name, name)
        pytest.fail(f"{name} not found: `make system-deps` installs it (Debian package {package})")
    return path


def run_tool(*argv: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; with ``check``, fail the test with its output when it exits non-zero."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def install(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    """Run install-units into ``tmp_path`` as a root; (exit status, unit directory)."""
    parser = argparse.ArgumentParser()
    units.add_arguments(parser)
    args = parser.parse_args(["--prefix", str(tmp_path), "--exec", units.default_exec(), *extra])
    status = units.run(args)
    return status, tmp_path / "etc" / "systemd" / "system"


def unit_sections(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


# ---- units -----------------------------------------------------------------------------------------
def test_install_units_writes_units_and_config_and_keeps_an_edited_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, unit_dir = install(tmp_path)
    assert status == 0
    for name in units.UNIT_FILES:
        text = (unit_dir / name).read_text()
        assert units.UNIT_TEMPLATE_EXEC not in text
        assert (SYSTEMD / name).read_text().replace(units.UNIT_TEMPLATE_EXEC, units.default_exec()) == text
    service = unit_sections(unit_dir / "lanewatch.service")["Service"]
    assert service["ExecStart"] == f"{units.default_exec()} run --config /etc/lanewatch/lanewatch.toml"
    config_path = tmp_path / "etc" / "lanewatch" / "lanewatch.toml"
    assert config_path.read_text() == units.example_config()
    keys = tmp_path / "etc" / "lanewatch" / "keys"
    made = sorted(p.name for p in (keys / "secret").iterdir())
    assert made == ["console.key_secret", "rpm-lane1.key_secret", "service.key_secret"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in [*keys.glob("*/*")]), "every key file is mode 0600"
    credentials = (unit_dir / "lanewatch-rpm@.service").read_text()
    assert "LoadCredential=rpm-%I.key_secret:/etc/lanewatch/keys/secret/rpm-%I.key_secret" in credentials
    assert (tmp_path / "etc" / "lanewatch" / "lanewatch.toml.example").read_text() == units.example_config()

    capsys.readouterr()
    assert install(tmp_path, "--enable", "lane1")[0] == 0
    assert "lanewatch-xray@lane1" not in capsys.readouterr().out, "lane1 of the example has no scanner"

    edited = units.example_config().replace('id = "lane1"', 'id = "north-1"')
    edited = edited.replace('\nxray = ""', '\nxray = "192.0.2.20:1700"')
    config_path.write_text(edited)
    assert install(tmp_path, "--enable", "north-1")[0] == 0
    out = capsys.readouterr().out
    assert config_path.read_text() == edited
    assert f"kept (never overwritten): {config_path}" in out
    assert "unchanged: " + str(unit_dir / "lanewatch.service") in out
    assert "systemctl enable --now lanewatch.target 'lanewatch-lane@north\\x2d1.target'" in out
    assert "systemctl enable --now 'lanewatch-xray@north\\x2d1.service'" in out

    assert install(tmp_path, "--enable", "south-2")[0] == 1
    assert "no [[lanes]] entry for south-2" in capsys.readouterr().err


def test_install_units_creates_the_consoles_self_signed_pair_once(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert install(tmp_path)[0] == 0
    config_dir = tmp_path / "etc" / "lanewatch"
    cert_path, key_path = config_dir / units.CONSOLE_CERT, config_dir / units.CONSOLE_KEY
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and cert.public_key() == key.public_key()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    before = cert_path.read_bytes()
    assert install(tmp_path)[0] == 0
    assert cert_path.read_bytes() == before, "an existing certificate is never replaced"
    console = unit_sections(tmp_path / "etc" / "systemd" / "system" / "lanewatch-console.service")["Service"]
    assert console["ExecStart"] == f"{units.default_exec()} console --config /etc/lanewatch/lanewatch.toml"
    text = (SYSTEMD / "lanewatch-console.service").read_text()
    for credential in (units.CONSOLE_CERT, units.CONSOLE_KEY, "console.key_secret"):
        assert f"LoadCredential={credential}:" in text
    assert console["User"] == "lanewatch", "the service's dynamic user: the console shares its state directory"


def test_install_units_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = install(tmp_path, "--dry-run", "--unit-dir", "/usr/lib/systemd/system")
    assert status == 0
    assert list(tmp_path.iterdir()) == []
    assert f"create (dry run): {tmp_path}/usr/lib/systemd/system/lanewatch.service" in capsys.readouterr().out


def test_install_units_reports_an_unwritable_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "etc"
    blocker.write_text("a file where a directory should be")
    assert install(tmp_path)[0] == 1
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("lane", ["lane1", "lane-1", ".hidden", "a b", "ü", "a:b_c.d", "x\\y", "7"])
def test_lane_ids_are_escaped_as_systemd_escape_does(lane: str) -> None:
    expected = run_tool(tool("systemd-escape"), "--", lane).stdout.strip()
    assert units.systemd_escape(lane) == expected
    assert run_tool(tool("systemd-escape"), "--unescape", "--", expected).stdout.strip() == lane


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    _, unit_dir = install(tmp_path)
    names = ["lanewatch.service", "lanewatch.target", "lanewatch-lane@lane1.target"]
    names += ["lanewatch-rpm@lane1.service", "lanewatch-xray@lane1.service", "lanewatch-console.service"]
    for name in names:
        proc = run_tool(analyze, "verify", str(unit_dir / name), check=False)
        # verify exits 0 even for unknown keys and bad values; it only warns on stderr, so stderr must be empty.
        assert proc.returncode == 0 and proc.stderr == "", f"{name}:\n{proc.stderr}"


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing executable are reported."""
    broken = tmp_path / "lanewatch.service"
    text = (SYSTEMD / "lanewatch.service").read_text().replace("WatchdogSec=", "WatchdogSek=")
    broken.write_text(text.replace(units.UNIT_TEMPLATE_EXEC, str(tmp_path / "no-such-lanewatch")))
    proc = run_tool(tool("systemd-analyze"), "verify", str(broken), check=False)
    assert "WatchdogSek" in proc.stderr and "no-such-lanewatch" in proc.stderr


def exposure(unit: Path) -> float:
    proc = run_tool(tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(unit), check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, f"no exposure level in:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


def test_service_sandbox_exposure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, unit_dir = install(tmp_path)
    service = exposure(unit_dir / "lanewatch.service")
    driver = exposure(unit_dir / "lanewatch-rpm@lane1.service")
    xray = exposure(unit_dir / "lanewatch-xray@lane1.service")
    console = exposure(unit_dir / "lanewatch-console.service")
    with capsys.disabled():
        print(
            f"\nsystemd-analyze security exposure: lanewatch.service {service}, lanewatch-rpm@.service {driver},"
            f" lanewatch-xray@.service {xray}, lanewatch-console.service {console}"
        )
    assert service <= MAX_EXPOSURE and xray <= MAX_EXPOSURE and console <= MAX_EXPOSURE
    assert driver <= MAX_EXPOSURE + 1.0, "serial ports: no PrivateDevices=, no PrivateUsers="


def test_units_keep_what_the_processes_need() -> None:
    """Directives whose absence or presence would break the service at a lane, not only score it."""
    service = unit_sections(SYSTEMD / "lanewatch.service")["Service"]
    assert service["Type"] == "notify" and service["WatchdogSec"] and service["Restart"] == "on-failure"
    assert "MemoryDenyWriteExecute" not in service, "Numba's JIT needs writable executable memory"
    assert service["Environment"].startswith("NUMBA_CACHE_DIR=%C/lanewatch/") and service["CacheDirectory"]
    assert service["StateDirectory"] == "lanewatch" and service["CapabilityBoundingSet"] == ""
    unit = unit_sections(SYSTEMD / "lanewatch.service")["Unit"]
    assert unit["StartLimitIntervalSec"] and unit["StartLimitBurst"]

    driver = unit_sections(SYSTEMD / "lanewatch-rpm@.service")["Service"]
    assert "--lane %I" in driver["ExecStart"], "%I gives back the lane id that install-units escaped"
    assert driver["PrivateDevices"] == "no" and driver["SupplementaryGroups"] == "dialout"
    assert "char-ttyUSB rw" in (SYSTEMD / "lanewatch-rpm@.service").read_text()
    assert driver["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"

    # The X-ray driver: the same unit but for devices (none: TCP only), and enabled per lane with a scanner.
    xray = unit_sections(SYSTEMD / "lanewatch-xray@.service")
    assert xray["Service"]["ExecStart"] == driver["ExecStart"].replace(" driver rpm ", " driver xray ")
    assert xray["Service"]["PrivateDevices"] == "yes" and "SupplementaryGroups" not in xray["Service"]
    assert "DeviceAllow" not in (SYSTEMD / "lanewatch-xray@.service").read_text()
    differ = {"ExecStart", "SupplementaryGroups", "PrivateUsers", "PrivateDevices", "DeviceAllow", "LoadCredential"}
    assert {k: v for k, v in xray["Service"].items() if k not in differ} == {
        k: v for k, v in driver.items() if k not in differ
    }
    assert xray["Unit"]["PartOf"] == "lanewatch-lane@%i.target"
    assert xray["Install"]["WantedBy"] == "lanewatch-lane@%i.target"
    lane = unit_sections(SYSTEMD / "lanewatch-lane@.target")["Unit"]
    assert lane["Wants"] == "lanewatch-rpm@%i.service", "not every lane has a scanner"


# ---- Prometheus rules and the Grafana dashboard ----------------------------------------------------
SYNTHETIC_METRICS = {"up"}
"""Series Prometheus itself makes for every target."""
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"offset", "inf", "nan"}


def exported_names() -> set[str]:
    """Every sample name the service, the drivers and the console export, from their metric sets on a registry."""
    registry = CollectorRegistry()
    ConsoleMetrics(registry)
    ServiceMetrics(registry)
    ModelMetrics(registry)
    DriverMetrics(registry)
    return {family.name + suffix for family in registry.collect() for suffix in _SAMPLE_SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, matchers, ranges, groupings and functions removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def rule_expressions() -> dict[str, str]:
    """Alert name -> PromQL expression of ops/alerts.rules.yml (single-line or folded ``>-`` scalars)."""
    lines = (OPS / "alerts.rules.yml").read_text().splitlines()
    exprs: dict[str, str] = {}
    alert = ""
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\w+)\s*$", line):
            alert = m.group(1)
        elif m := re.match(r"(\s*)expr: (.*)$", line):
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in (">-", ">", "|", "|-"):
                block = []
                for follow in lines[i + 1 :]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                        break
                    block.append(follow.strip())
                value = " ".join(block).strip()
            exprs[alert] = value
    return exprs


def dashboard() -> dict:
    return json.loads((OPS / "grafana-dashboard.json").read_text())


def dashboard_panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_expressions() -> dict[str, str]:
    """``panel title/refId`` -> PromQL of every dashboard query and template variable."""
    exprs = {f"{p['title']}/{t['refId']}": t["expr"] for p in dashboard_panels() for t in p["targets"]}
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            exprs[f"${var['name']}"] = re.fullmatch(r"label_values\((.+), \w+\)", var["definition"]).group(1)
    return exprs


def as_plain_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values Prometheus accepts."""
    for var, value in {"$__rate_interval": "1m", "$__range": "1h", "$lane": ".*"}.items():
        expr = expr.replace(var, value)
    return expr


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    promtool = tool("promtool")
    out = run_tool(promtool, "check", "rules", str(OPS / "alerts.rules.yml")).stdout
    assert f"SUCCESS: {len(rule_expressions())} rules found" in out
    run_tool(promtool, "check", "config", str(OPS / "prometheus.yml"))


def test_every_alert_fires_in_the_promtool_rule_tests() -> None:
    out = run_tool(tool("promtool"), "test", "rules", str(OPS / "alerts.tests.yml")).stdout
    assert "SUCCESS" in out
    tests = (OPS / "alerts.tests.yml").read_text()
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:", tests))
    assert set(rule_expressions()) <= fired, f"alerts without a firing test: {set(rule_expressions()) - fired}"


def test_every_alert_has_a_severity_and_annotations() -> None:
    text = (OPS / "alerts.rules.yml").read_text()
    blocks = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(blocks) == len(rule_expressions())
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert re.search(r"severity: (critical|warning)\n", block), name
        assert "summary: " in block and "description: " in block, name


def test_rule_and_dashboard_queries_name_only_exported_metrics() -> None:
    known = exported_names() | SYNTHETIC_METRICS
    queries = {**{f"rule {k}": v for k, v in rule_expressions().items()}, **dashboard_expressions()}
    assert len(queries) > 40
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: {sorted(names - known)} not exported; expression {expr!r}"


def test_metric_name_extraction_sees_through_promql_syntax() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (instance, le) "
        '(rate(lanewatch_decision_latency_seconds_bucket{le!="1e3"}[10m]))) > 1e-3'
        " and on(instance) time() - foo_seconds offset 5m unless bar"
    )
    assert metric_names(expr) == {"lanewatch_decision_latency_seconds_bucket", "foo_seconds", "bar"}


def test_dashboard_shows_every_lanewatch_metric() -> None:
    shown = set().union(*(metric_names(e) for e in dashboard_expressions().values()))
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported_names()}
    lanewatch = {f for f in families if f.startswith("lanewatch_")}
    missing = {f for f in lanewatch if not any(re.sub(r"_(total|bucket)$", "", s) == f for s in shown)}
    assert not missing, f"metrics without a dashboard panel: {sorted(missing)}"


def test_dashboard_layout_variables_and_datasource() -> None:
    board = dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Lanes", "Detectors", "Latency", "Service health"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["lane"]["multi"] and variables["lane"]["includeAll"]
    panels = dashboard_panels()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert all(t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
        assert p["description"], p["title"]
    per_lane = [p["title"] for p in panels if any("lane" in t["legendFormat"] for t in p["targets"])]
    for title in per_lane:
        panel = next(p for p in panels if p["title"] == title)
        assert any('lane=~"$lane"' in t["expr"] for t in panel["targets"]), f"{title} ignores the lane variable"
    latency = next(p for p in panels if p["title"] == "Decision latency")
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    ]


def test_dashboard_queries_parse_in_prometheus(tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, goes through promtool's PromQL parser."""
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_expressions().values()):
        rules += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(as_plain_promql(expr))}"]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text("\n".join(rules) + "\n")
    out = run_tool(tool("promtool"), "check", "rules", str(path)).stdout
    assert f"SUCCESS: {len(dashboard_expressions())} rules found" in out


def deploying_section() -> str:
    """The "Deploying at a lane" section of README.md."""
    text = (REPO / "README.md").read_text()
    assert "## Deploying at a lane" in text, "no 'Deploying at a lane' section in README.md"
    return text.split("## Deploying at a lane", 1)[1].split("\n## ", 1)[0]


def test_deploying_instructions_match_install_units() -> None:
    text = deploying_section()
    assert f"{units.UNIT_TEMPLATE_EXEC} install-units\n" in text
    assert f"{units.UNIT_TEMPLATE_EXEC} install-units --enable lane1 lane2\n" in text
    for command in units.enable_commands(["lane1", "lane2"], scanner_lanes=["lane2"]):
        assert f"   {command}\n" in text
    assert f"--config {units.UNIT_TEMPLATE_CONFIG}" in text
    assert units.systemd_escape("north-1") in text and "/var/lib/lanewatch/" in text
    for name in units.UNIT_FILES:
        assert f"`{name}`" in text


# ---- example configuration ---------------------------------------------------------------------------
def test_example_config_documents_every_key_and_parses_to_the_defaults() -> None:
    text = units.example_config()
    parsed = config_module.parse(text, "example")
    assert parsed.service == config_module.ServiceConfig()
    assert parsed.bus == config_module.BusConfig()
    assert parsed.detection == config_module.DetectionConfig()
    assert parsed.lanes == [config_module.LaneConfig(**units.EXAMPLE_LANE)]
    for cls in (config_module.ServiceConfig, config_module.BusConfig, config_module.DetectionConfig):
        docs = units.field_docs(cls)
        for f in msgspec.structs.fields(cls):
            assert re.search(rf"^{f.name} = ", text, re.M), f.name
            assert f"# {docs[f.name].splitlines()[0]}" in text, f.name
    for f in msgspec.structs.fields(config_module.LaneConfig):
        assert re.search(rf"^{f.name} = ", text, re.M), f.name


# ---- packaging -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_wheel_ships_the_units_and_install_units_finds_them(tmp_path: Path) -> None:
    """Build the wheel, install it (without dependencies) in a fresh venv: one ``lanewatch`` namespace, and
    install-units finds the units there."""
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "tests", "benchmarks")
    shutil.copytree(REPO, source, ignore=skip)
    run_tool(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(source))
    (wheel,) = (tmp_path / "dist").glob("lanewatch-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).name: zf.read(n).decode() for n in zf.namelist() if "/share/lanewatch/systemd/" in n}
    assert shipped == {name: (SYSTEMD / name).read_text() for name in units.UNIT_FILES}

    # install-units needs the configuration contract (msgspec) and nothing else of the runtime.
    venv = tmp_path / "venv"
    run_tool(sys.executable, "-m", "venv", "--without-pip", str(venv))
    run_tool(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "-q",
        "--no-deps",
        str(wheel),
        "msgspec",
    )
    script = (
        "import argparse, sys; from lanewatch.edge.ops import units; p = argparse.ArgumentParser(); "
        "units.add_arguments(p); "
        "print(units.unit_source_dir()); sys.exit(units.run(p.parse_args(sys.argv[1:])))"
    )
    root = tmp_path / "root"
    proc = run_tool(str(venv / "bin" / "python"), "-c", script, "--prefix", str(root), "--no-keys", cwd=tmp_path)
    assert proc.stdout.splitlines()[0] == str(venv / "share" / "lanewatch" / "systemd")
    assert str(venv / "bin" / "lanewatch") in (root / "etc/systemd/system/lanewatch.service").read_text()

    # One namespace: lanewatch/edge, lanewatch/drivers, ... and nothing named edge or models at the top.
    (site,) = (venv / "lib").glob("python3*/site-packages")
    top = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    assert not top & {"edge", "drivers", "kernels", "models"}, top
    assert (site / "lanewatch" / "models" / "anomaly.onnx").is_file()
    console = site / "lanewatch" / "edge" / "console"
    assert (console / "templates" / "wall.html").is_file() and (console / "static" / "console.js").is_file()
    probe = (
        "import importlib.util, lanewatch.edge.config\n"
        "from importlib.metadata import entry_points\n"
        "assert importlib.util.find_spec('edge') is None and importlib.util.find_spec('models') is None\n"
        "print(sorted(e.value for e in entry_points(group='lanewatch.drivers')))\n"
    )
    proc = run_tool(str(venv / "bin" / "python"), "-c", probe, cwd=tmp_path)
    assert "lanewatch.drivers.rpm:RpmDriver" in proc.stdout


# ---- lanewatch status against /healthz endpoints ----------------------------------------------------------
def healthy_service() -> dict[str, Any]:
    """A service /healthz body in the shape the service produces."""
    return {
        "ok": True,
        "lanes": {
            "lane1": {
                "link_up": True,
                "last_record_age_s": 0.4,
                "fresh": True,
                "sensors": {"rpm": {"link": "up", "link_up": True, "last_record_age_s": 0.4, "fresh": True}},
                "occupied": False,
                "faults": [],
            }
        },
        "journal": {"path": "/var/lib/lanewatch/lanewatch-journal.db", "writable": True, "last_seq": 12},
        "watchdog": {"enabled": True, "last_ping_age_s": 1.5, "fed": True},
    }


@pytest.fixture
def endpoint() -> Iterator[Callable[[Callable[[], dict[str, Any]]], str]]:
    """Serve a /healthz function over real HTTP (the metrics module's server); returns host:port."""
    servers = []

    def start(health: Callable[[], dict[str, Any]]) -> str:
        server, _ = serve_http("127.0.0.1:0", CollectorRegistry(), health)
        servers.append(server)
        return f"127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def status_of(config: config_module.Config, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    code = status.run(parser.parse_args(list(flags)), config)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def site(service_http: str, driver_http: str = "") -> config_module.Config:
    return config_module.Config(
        service=config_module.ServiceConfig(http=service_http),
        lanes=[config_module.LaneConfig(id="lane1", driver_http=driver_http)],
    )


def test_status_all_healthy(endpoint: Callable, capsys: pytest.CaptureFixture[str]) -> None:
    driver = endpoint(lambda: {"ok": True, "lane": "lane1", "connected": True, "last_line_age_s": 0.3})
    code, out = status_of(site(endpoint(healthy_service), driver), capsys)
    assert code == 0, out
    assert re.search(r"^lane1\s+connected\s+fresh \(0\.4 s\)\s+no\s+-\s+-$", out, re.M), out
    assert "writable, last seq 12" in out and "watchdog: fed (last ping 1.5 s ago)" in out
    assert out.rstrip().endswith("status: ok")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda h: h["lanes"]["lane1"].update(faults=["gamma-high", "tamper"]), "detector faults: gamma-high, tamper"),
        (
            lambda h: h["lanes"]["lane1"]["sensors"]["rpm"].update(fresh=False, problem="no data for 42 s"),
            "RPM no data for 42 s at the service",
        ),
        (lambda h: h["lanes"]["lane1"]["sensors"]["rpm"].update(link_up=False), "driver not connected"),
        (lambda h: h.update(ok=False) or h["journal"].update(writable=False), "journal"),
        (lambda h: h["watchdog"].update(fed=False, last_ping_age_s=25.0), "watchdog: STARVED"),
    ],
)
def test_status_names_what_is_wrong_and_exits_1(
    change: Callable[[dict[str, Any]], None], problem: str, endpoint: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    report = healthy_service()
    change(report)
    code, out = status_of(site(endpoint(lambda: report)), capsys)
    assert code == 1, out
    assert problem in out
    assert out.rstrip().endswith("status: NOT OK")
    assert "NOT OK because:" in out, "the report says why"


def test_status_reports_a_driver_that_is_down_or_unreachable(
    endpoint: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    service = endpoint(healthy_service)
    down = endpoint(lambda: {"ok": False, "lane": "lane1", "connected": False, "last_line_age_s": None})
    code, out = status_of(site(service, down), capsys)
    assert code == 1 and "DISCONNECTED" in out and "driver reports not ok" in out

    closed = free_ports(1)[0]
    code, report = status_of(site(service, f"127.0.0.1:{closed}"), capsys, "--json")
    lane = json.loads(report)["lanes"]["lane1"]
    assert code == 1 and lane["driver_connected"] is None
    assert any(p.startswith(f"driver unreachable: http://127.0.0.1:{closed}/healthz") for p in lane["problems"])


def test_status_covers_the_x_ray_driver(endpoint: Callable, capsys: pytest.CaptureFixture[str]) -> None:
    service = endpoint(healthy_service)
    driver = endpoint(lambda: {"ok": True, "lane": "lane1", "connected": True})
    scanner = endpoint(lambda: {"ok": False, "lane": "lane1", "connected": False})
    config = config_module.Config(
        service=config_module.ServiceConfig(http=service),
        lanes=[config_module.LaneConfig(id="lane1", driver_http=driver, xray="127.0.0.1:1700", xray_http=scanner)],
    )
    code, out = status_of(config, capsys)
    assert code == 1 and re.search(r"^lane1\s+connected\s+.*DISCONNECTED$", out, re.M), out
    assert "  lane1: X-ray driver not connected to its scanner" in out and "lane1: X-ray driver reports not ok" in out


def test_status_exits_2_when_the_service_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    closed = free_ports(1)[0]
    code, out = status_of(site(f"127.0.0.1:{closed}"), capsys)
    assert code == 2 and f"service 127.0.0.1:{closed}: UNREACHABLE" in out
    assert "is the service running? (no --config given: the embedded defaults)" in out
    named = msgspec.structs.replace(site(f"127.0.0.1:{closed}"), source="/etc/lanewatch/site.toml")
    assert "(configuration: /etc/lanewatch/site.toml)" in status_of(named, capsys)[1]


def test_status_treats_a_non_json_answer_as_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>a proxy page</html>"

        def serve_once() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(answer)

        thread = threading.Thread(target=serve_once)
        thread.start()
        code, out = status_of(site(f"127.0.0.1:{port}"), capsys, "--json")
        thread.join(timeout=5)
    report = json.loads(out)
    assert code == 2 and "not JSON" in report["service"]["error"]


# ---- a live site: simulator, service and driver as processes ---------------------------------------------
def http_get(address: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check: Callable[[], bool], procs: list[subprocess.Popen], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args} exited with {proc.returncode} while waiting for {what}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


WATCHDOG_S = 6.0
"""The live service's watchdog interval: a loaded 2-core machine must not starve the loop out of it."""


class LiveSite:
    """A simulated lane, the service (under a notification socket, as systemd runs it) and the lane's driver."""

    def __init__(self, root: Path) -> None:
        sim, service_http, driver_http, ingest, alerts, query = free_ports(6)
        self.service_http = f"127.0.0.1:{service_http}"
        self.driver_http = f"127.0.0.1:{driver_http}"
        self.config = root / "lanewatch.toml"
        self.config.write_text(
            units.example_config()
            .replace('"lanewatch-journal.db"', json.dumps(str(root / "journal.db")))
            .replace('"/etc/lanewatch/keys"', json.dumps(str(root / "keys")))
            .replace('"127.0.0.1:9730"', json.dumps(self.service_http))
            .replace('"tcp://127.0.0.1:7600"', f'"tcp://127.0.0.1:{ingest}"')
            .replace('"tcp://127.0.0.1:7601"', f'"tcp://127.0.0.1:{alerts}"')
            .replace('"tcp://127.0.0.1:7602"', f'"tcp://127.0.0.1:{query}"')
            .replace('"/dev/ttyUSB0"', f'"socket://127.0.0.1:{sim}"')
            .replace('"127.0.0.1:9731"', json.dumps(self.driver_http))
        )
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(root / "notify"))
        self.notify.setblocking(False)
        self.datagrams: list[bytes] = []
        exe = units.default_exec()
        subprocess.run([exe, "keys", "--config", str(self.config), "init"], check=True, capture_output=True)
        self.procs: list[subprocess.Popen] = []
        self.logs = root
        self._start("sim", [exe, "sim", "lane", "--port", str(sim), "--speedup", "5", "--seed", "11"])
        wait_for(
            "the simulator's port", lambda: socket.create_connection(("127.0.0.1", sim), 1).close() is None, self.procs
        )
        env = {**os.environ, "NOTIFY_SOCKET": str(root / "notify"), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
        env["NUMBA_CACHE_DIR"] = str(root / "numba")
        self._start("service", [exe, "run", "--config", str(self.config)], env)
        self._start("driver", [exe, "driver", "rpm", "--config", str(self.config), "--lane", "lane1"])

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()

    def received(self) -> list[bytes]:
        """Datagrams the service sent to its notification socket so far."""
        while True:
            try:
                self.datagrams.append(self.notify.recv(4096))
            except BlockingIOError:
                return self.datagrams

    def health(self, address: str) -> dict[str, Any]:
        return json.loads(http_get(address, "/healthz")[1])

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.notify.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    tool("promtool")
    root = tmp_path_factory.mktemp("site")
    site = LiveSite(root)
    try:
        wait_for("the service's /healthz", lambda: http_get(site.service_http, "/healthz")[0] == 200, site.procs)
        wait_for("the driver's link", lambda: site.health(site.driver_http)["connected"], site.procs)
        wait_for("a journaled decision", lambda: site.health(site.service_http)["journal"]["last_seq"] >= 1, site.procs)
        yield site
    except BaseException:
        for log in sorted(root.glob("*.log")):
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        site.close()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["service", "driver"])
def test_live_scrape_passes_promtool_check_metrics(live: LiveSite, which: str) -> None:
    address = live.service_http if which == "service" else live.driver_http
    code, body = http_get(address, "/metrics")
    assert code == 200
    proc = subprocess.run([tool("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, (proc.stdout + proc.stderr).decode()
    scraped = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines() if line and line[0] != "#"}
    assert scraped <= exported_names(), f"exported but unknown to the metric sets: {scraped - exported_names()}"
    expected = {
        "service": {
            "lanewatch_lane_last_record_timestamp_seconds",
            "lanewatch_lane_link_up",
            "lanewatch_decisions_total",
            "lanewatch_decision_latency_seconds_bucket",
            "lanewatch_gamma_background_cps",
            "lanewatch_watchdog_pings_total",
            "process_start_time_seconds",
        },
        "driver": {
            "lanewatch_driver_connected",
            "lanewatch_driver_last_line_timestamp_seconds",
            "lanewatch_driver_lines_total",
            "lanewatch_driver_records_published_total",
            "process_start_time_seconds",
        },
    }[which]
    assert expected <= scraped, f"missing from the live scrape: {expected - scraped}"


@pytest.mark.slow
def test_live_service_notifies_ready_and_feeds_the_watchdog(live: LiveSite) -> None:
    """The running event loop pings every half watchdog interval, each ping counted."""
    wait_for("two watchdog pings", lambda: live.received().count(b"WATCHDOG=1") >= 2, live.procs, timeout_s=60)
    messages = live.received()
    assert messages[0].startswith(b"READY=1\nSTATUS=1 lanes"), messages[0]
    _, body = http_get(live.service_http, "/metrics")
    pings = re.search(rb"^lanewatch_watchdog_pings_total (\S+)$", body, re.M)
    assert pings and float(pings.group(1)) >= 2
    watchdog = live.health(live.service_http)["watchdog"]
    assert watchdog["enabled"] and watchdog["fed"] and watchdog["last_ping_age_s"] <= WATCHDOG_S


@pytest.mark.slow
def test_live_status_command(live: LiveSite, tmp_path: Path) -> None:
    exe = units.default_exec()
    proc = subprocess.run([exe, "status", "--config", str(live.config)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^lane1\s+connected\s+fresh", proc.stdout, re.M), proc.stdout
    assert "watchdog: fed" in proc.stdout and "status: ok" in proc.stdout

    proc = subprocess.run(
        [exe, "status", "--config", str(live.config), "--json"], capture_output=True, text=True, timeout=30
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"] and report["lanes"]["lane1"]["driver"]["connected"]

    # The same site seen with a lane whose driver is not running: not ok, and the lane says why.
    extra = tmp_path / "two-lanes.toml"
    closed = free_ports(1)[0]
    extra.write_text(live.config.read_text() + f'\n[[lanes]]\nid = "lane2"\ndriver_http = "127.0.0.1:{closed}"\n')
    proc = subprocess.run([exe, "status", "--config", str(extra)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "lane2: driver unreachable" in proc.stdout and "lane2: RPM: not reported by the service" in proc.stdout
