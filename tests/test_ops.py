"""Operations: systemd units, install-units, Prometheus rules and dashboard, status; checked by the real tools.

systemd-analyze verifies and scores the units, promtool checks the rules (and unit-tests
them) and live scrapes of a running service and driver; every PromQL expression shipped in
ops/ must name only metrics the processes really export.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge import config as config_module
from edge import deploy
from edge.metrics import DriverMetrics, ServiceMetrics

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
    deploy.add_arguments(parser)
    args = parser.parse_args(["--prefix", str(tmp_path), "--exec", deploy.default_exec(), *extra])
    status = deploy.run(args)
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
    for name in deploy.UNIT_FILES:
        text = (unit_dir / name).read_text()
        assert deploy.UNIT_TEMPLATE_EXEC not in text
        assert (SYSTEMD / name).read_text().replace(deploy.UNIT_TEMPLATE_EXEC, deploy.default_exec()) == text
    service = unit_sections(unit_dir / "lanewatch.service")["Service"]
    assert service["ExecStart"] == f"{deploy.default_exec()} run --config /etc/lanewatch/lanewatch.toml"
    config_path = tmp_path / "etc" / "lanewatch" / "lanewatch.toml"
    assert config_path.read_text() == deploy.example_config()
    assert (tmp_path / "etc" / "lanewatch" / "lanewatch.toml.example").read_text() == deploy.example_config()

    edited = deploy.example_config().replace('id = "lane1"', 'id = "north-1"')
    config_path.write_text(edited)
    capsys.readouterr()
    assert install(tmp_path, "--enable", "north-1")[0] == 0
    out = capsys.readouterr().out
    assert config_path.read_text() == edited
    assert f"kept (never overwritten): {config_path}" in out
    assert "unchanged: " + str(unit_dir / "lanewatch.service") in out
    assert "systemctl enable --now lanewatch.target 'lanewatch-lane@north\\x2d1.target'" in out

    assert install(tmp_path, "--enable", "south-2")[0] == 1
    assert "no [[lanes]] entry for south-2" in capsys.readouterr().err


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
    assert deploy.systemd_escape(lane) == expected
    assert run_tool(tool("systemd-escape"), "--unescape", "--", expected).stdout.strip() == lane


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    _, unit_dir = install(tmp_path)
    names = ["lanewatch.service", "lanewatch.target", "lanewatch-rpm@lane1.service", "lanewatch-lane@lane1.target"]
    for name in names:
        proc = run_tool(analyze, "verify", str(unit_dir / name), check=False)
        # verify exits 0 even for unknown keys and bad values; it only warns on stderr, so stderr must be empty.
        assert proc.returncode == 0 and proc.stderr == "", f"{name}:\n{proc.stderr}"


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing executable are reported."""
    broken = tmp_path / "lanewatch.service"
    text = (SYSTEMD / "lanewatch.service").read_text().replace("WatchdogSec=", "WatchdogSek=")
    broken.write_text(text.replace(deploy.UNIT_TEMPLATE_EXEC, str(tmp_path / "no-such-lanewatch")))
    proc = run_tool(tool("systemd-analyze"), "verify", str(broken), check=False)
    assert "WatchdogSek" in proc.stderr and "no-such-lanewatch" in proc.stderr


def exposure(unit: Path) -> float:
    proc = run_tool(tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(unit), check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, f"no exposure level in:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


def test_service_sandbox_exposure(tmp_path: Path) -> None:
    _, unit_dir = install(tmp_path)
    service = exposure(unit_dir / "lanewatch.service")
    driver = exposure(unit_dir / "lanewatch-rpm@lane1.service")
    print(f"\nsystemd-analyze security exposure: lanewatch.service {service}, lanewatch-rpm@.service {driver}")
    assert service <= MAX_EXPOSURE
    assert driver <= MAX_EXPOSURE + 1.0


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
    """Every sample name the service and the drivers export, from their metric sets on a registry."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
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


# ---- example configuration ---------------------------------------------------------------------------
def test_example_config_documents_every_key_and_parses_to_the_defaults() -> None:
    text = deploy.example_config()
    parsed = config_module.parse(text, "example")
    assert parsed.service == config_module.ServiceConfig()
    assert parsed.bus == config_module.BusConfig()
    assert parsed.detection == config_module.DetectionConfig()
    assert parsed.lanes == [config_module.LaneConfig(**deploy.EXAMPLE_LANE)]
    for cls in (config_module.ServiceConfig, config_module.BusConfig, config_module.DetectionConfig):
        docs = deploy.field_docs(cls)
        for f in dataclasses.fields(cls):
            assert re.search(rf"^{f.name} = ", text, re.M), f.name
            assert f"# {docs[f.name].splitlines()[0]}" in text, f.name
    for f in dataclasses.fields(config_module.LaneConfig):
        assert re.search(rf"^{f.name} = ", text, re.M), f.name


# ---- packaging -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_wheel_ships_the_units_and_install_units_finds_them(tmp_path: Path) -> None:
    """Build the wheel, install it (without dependencies) in a fresh venv, install units from there."""
    run_tool(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO))
    (wheel,) = (tmp_path / "dist").glob("lanewatch-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).name: zf.read(n).decode() for n in zf.namelist() if "/share/lanewatch/systemd/" in n}
    assert shipped == {name: (SYSTEMD / name).read_text() for name in deploy.UNIT_FILES}

    venv = tmp_path / "venv"
    run_tool(sys.executable, "-m", "venv", "--without-pip", str(venv))
    run_tool(
        sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(wheel)
    )
    script = (
        "import argparse, sys; from edge import deploy; p = argparse.ArgumentParser(); deploy.add_arguments(p); "
        "print(deploy.unit_source_dir()); sys.exit(deploy.run(p.parse_args(sys.argv[1:])))"
    )
    root = tmp_path / "root"
    proc = run_tool(str(venv / "bin" / "python"), "-c", script, "--prefix", str(root), cwd=tmp_path)
    assert proc.stdout.splitlines()[0] == str(venv / "share" / "lanewatch" / "systemd")
    assert str(venv / "bin" / "lanewatch") in (root / "etc/systemd/system/lanewatch.service").read_text()
