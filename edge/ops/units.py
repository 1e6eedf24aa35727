"""``lanewatch install-units``: install the systemd units and an example configuration.

The unit files live in the repository's ``systemd/`` directory; a wheel ships them as data
files under ``<prefix>/share/lanewatch/systemd`` (see ``pyproject.toml``). They name the
executable ``/opt/lanewatch/bin/lanewatch`` and the configuration
``/etc/lanewatch/lanewatch.toml``; installing rewrites both to this installation's paths.

The example configuration is generated from the msgspec Structs of :mod:`lanewatch.edge.config` and the
docstrings under their fields, so it lists every key with its default and never drifts from
what the parser accepts. An existing ``lanewatch.toml`` is never overwritten; the example is
always refreshed beside it as ``lanewatch.toml.example``.

The bus's CURVE keys (:mod:`lanewatch.edge.ops.keyfiles`) are made in ``bus.keys`` for the service,
``console`` and each configured lane's drivers, once: keys that exist are kept. The units'
``LoadCredential=`` lines name ``/etc/lanewatch/keys``, rewritten to the configured ``bus.keys``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import sysconfig
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec

from lanewatch.edge import config as config_module
from lanewatch.edge.config import Config, ConfigError
from lanewatch.edge.contracts import field_docs

UNIT_TEMPLATE_EXEC = "/opt/lanewatch/bin/lanewatch"
"""Executable path written in the unit files of the repository."""
UNIT_TEMPLATE_CONFIG = "/etc/lanewatch/lanewatch.toml"
"""Configuration path written in the unit files of the repository."""
UNIT_TEMPLATE_KEYS = "/etc/lanewatch/keys"
"""Key directory (``bus.keys``) written in the unit files' ``LoadCredential=`` lines."""
UNIT_FILES = (
    "lanewatch.service",
    "lanewatch-rpm@.service",
    "lanewatch-xray@.service",
    "lanewatch-console.service",
    "lanewatch-lane@.target",
    "lanewatch.target",
)
CONFIG_NAME = "lanewatch.toml"
CONSOLE_CERT, CONSOLE_KEY = "console-cert.pem", "console-key.pem"
"""The console's HTTPS certificate and key in the configuration directory (the console unit loads them)."""
CERT_DAYS = 825
"""Validity (days) of the self-signed console certificate: replace it with the site's own."""
EXAMPLE_LANE = {"id": "lane1", "rpm": "/dev/ttyUSB0", "driver_http": "127.0.0.1:9731"}
"""Values of the one lane the example configuration shows (other lane keys keep their defaults)."""


def unit_source_dir() -> Path:
    """Where this installation's unit files are: the checkout's ``systemd/``, else the wheel's data files."""
    candidates = [
        Path(__file__).resolve().parents[2] / "systemd",
        Path(sysconfig.get_path("data")) / "share" / "lanewatch" / "systemd",
    ]
    for directory in candidates:
        if all((directory / name).is_file() for name in UNIT_FILES):
            return directory
    raise FileNotFoundError(f"lanewatch unit files not found in {' or '.join(map(str, candidates))}")


def default_exec() -> str:
    """The ``lanewatch`` executable of this installation (beside the running interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "lanewatch"
    if beside.is_file():
        return str(beside)
    return shutil.which("lanewatch") or UNIT_TEMPLATE_EXEC


def systemd_escape(value: str) -> str:
    """``value`` escaped for a unit instance name, as ``systemd-escape`` does (``%I`` gives it back)."""
    out = []
    for i, char in enumerate(value):
        if char == "/":
            out.append("-")
        elif (char.isascii() and char.isalnum()) or char in ":_" or (char == "." and i > 0):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def render_unit(text: str, exec_path: str, config_path: str, keys_path: str = UNIT_TEMPLATE_KEYS) -> str:
    """A unit file's text with this installation's executable, configuration and key directory paths."""
    text = text.replace(UNIT_TEMPLATE_EXEC, exec_path).replace(UNIT_TEMPLATE_CONFIG, config_path)
    return text.replace(UNIT_TEMPLATE_KEYS + "/", keys_path.rstrip("/") + "/")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _table_lines(cls: type, values: dict[str, Any]) -> list[str]:
    docs = field_docs(cls)
    lines = []
    for f in msgspec.structs.fields(cls):
        doc = docs.get(f.name)
        if doc is None:
            raise ConfigError(f"{cls.__name__}.{f.name}: configuration key without a docstring")
        lines.extend(f"# {line}".rstrip() for line in doc.splitlines())
        lines.append(f"{f.name} = {_toml_value(values[f.name])}")
        lines.append("")
    return lines


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in msgspec.structs.fields(cls):
        if f.default is not msgspec.NODEFAULT:
            out[f.name] = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            out[f.name] = f.default_factory()
    return out


def example_config() -> str:
    """The example ``lanewatch.toml``: every key of :class:`~lanewatch.edge.config.Config`, documented, at its
    default."""
    lines = [
        "# lanewatch configuration. Every key is shown with its default value and its meaning;",
        "# generated from lanewatch.edge.config by `lanewatch install-units`. Under systemd, relative paths",
        "# are relative to the service's state directory, /var/lib/lanewatch.",
        "",
    ]
    for f in msgspec.structs.fields(Config):
        tp = f.type
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            lines += [f"[{f.name}]", *_table_lines(tp, _defaults(tp))]
        elif get_origin(tp) is list and issubclass(get_args(tp)[0], msgspec.Struct):
            item = get_args(tp)[0]
            lines += [f"# One [[{f.name}]] table per lane; copy it for each lane at this site.", f"[[{f.name}]]"]
            lines += _table_lines(item, {**_defaults(item), **EXAMPLE_LANE})
    return "\n".join(lines).rstrip() + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch install-units``."""
    parser.add_argument("--prefix", default="/", help="root directory to install into (default: /)")
    parser.add_argument(
        "--unit-dir", default="/etc/systemd/system", help="unit directory below the prefix (default: %(default)s)"
    )
    parser.add_argument(
        "--config-dir", default="/etc/lanewatch", help="configuration directory below the prefix (default: %(default)s)"
    )
    parser.add_argument(
        "--exec",
        dest="exec_path",
        default=None,
        help="path of the lanewatch executable the units start (default: this installation's)",
    )
    parser.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    parser.add_argument(
        "--no-keys", action="store_true", help="make no CURVE keys (made elsewhere, or a plaintext loopback bus)"
    )
    parser.add_argument(
        "--enable", nargs="+", default=[], metavar="LANE", help="print the systemctl commands that start these lanes"
    )


def _under(prefix: Path, path: str) -> Path:
    return prefix / path.lstrip("/")


def _write(path: Path, text: str, dry_run: bool, create_only: bool = False) -> str:
    """Write ``text`` to ``path`` (mode 0644) unless unchanged; the word describing what happened.

    With ``create_only`` an existing file is left alone, checked and created in one step.
    """
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return "unchanged"
    action = "update" if path.exists() else "create"
    if create_only and action == "update":
        return "kept (never overwritten)"
    if not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x" if create_only else "w", encoding="utf-8") as f:
            f.write(text)
        path.chmod(0o644)
    return action + (" (dry run)" if dry_run else "")


def self_signed_pair(hostname: str) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) for ``hostname``, ``localhost`` and 127.0.0.1, and its P-256 key (PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(n) for n in dict.fromkeys([hostname, "localhost"])]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([*names, x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _console_pair(config_dir: Path, dry_run: bool) -> str:
    """Create the console's self-signed certificate and key unless either exists; what happened."""
    cert, key = config_dir / CONSOLE_CERT, config_dir / CONSOLE_KEY
    if cert.exists() or key.exists():
        return f"kept (never overwritten): {cert}, {key}"
    if dry_run:
        return f"create (dry run): {cert}, {key} (self-signed)"
    cert_pem, key_pem = self_signed_pair(socket.getfqdn() or "localhost")
    config_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert.write_bytes(cert_pem)
    cert.chmod(0o644)
    return f"create: {cert}, {key} (self-signed, {CERT_DAYS} days: replace with the site's certificate)"


def enable_commands(lanes: list[str], scanner_lanes: list[str] | None = None) -> list[str]:
    """The systemctl commands that load the units and start the service and these lanes.

    Lanes in ``scanner_lanes`` (those with an X-ray scanner, ``xray`` set) also get their X-ray
    driver enabled, which adds it to the lane's target.
    """
    targets = ["lanewatch.target", *(f"lanewatch-lane@{systemd_escape(lane)}.target" for lane in lanes)]
    commands = ["systemctl daemon-reload", "systemctl enable --now " + " ".join(_shell_quote(t) for t in targets)]
    if scanner_lanes:
        drivers = (f"lanewatch-xray@{systemd_escape(lane)}.service" for lane in scanner_lanes)
        commands.append("systemctl enable --now " + " ".join(_shell_quote(d) for d in drivers))
    return commands


def _shell_quote(word: str) -> str:
    return f"'{word}'" if "\\" in word else word


def run(args: argparse.Namespace) -> int:
    """Install the units and the example configuration; 0 on success, 1 on an error (reported)."""
    prefix = Path(args.prefix)
    exec_path = args.exec_path or default_exec()
    config_path = str(Path(args.config_dir) / CONFIG_NAME)
    try:
        source = unit_source_dir()
    except FileNotFoundError as exc:
        print(f"lanewatch install-units: {exc}", file=sys.stderr)
        return 1
    unit_dir = _under(prefix, args.unit_dir)
    config_dir = _under(prefix, args.config_dir)
    example = example_config()
    target = config_dir / CONFIG_NAME
    kept = target.exists()
    try:
        site = config_module.load(target) if kept else config_module.parse(example, str(target))
    except ConfigError as exc:
        print(f"lanewatch install-units: {exc}", file=sys.stderr)
        return 1
    try:
        for name in UNIT_FILES:
            text = render_unit((source / name).read_text(encoding="utf-8"), exec_path, config_path, site.bus.keys)
            print(f"{_write(unit_dir / name, text, args.dry_run)}: {unit_dir / name}")
        example_path = config_dir / (CONFIG_NAME + ".example")
        print(f"{_write(example_path, example, args.dry_run)}: {example_path}")
        print(f"{_write(target, example, args.dry_run, create_only=True)}: {target}")
        if not args.no_keys:
            _make_keys(_under(prefix, site.bus.keys), site, args.dry_run)
            print(_console_pair(config_dir, args.dry_run))
    except OSError as exc:
        print(f"lanewatch install-units: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    scanner_lanes: list[str] = []
    if args.enable and kept:
        scanner_lanes, problem = _scanner_lanes(target, args.enable)
        if problem:
            print(f"lanewatch install-units: {problem}", file=sys.stderr)
            return 1
    print(f"Edit {config_path} (one [[lanes]] table per lane), then:")
    if args.enable:
        for command in enable_commands(args.enable, scanner_lanes):
            print(f"  {command}")
    else:
        print("  systemctl daemon-reload")
        print("  systemctl enable --now lanewatch.target lanewatch-lane@<lane id>.target")
    print("The operators' console: add its first administrator, then start it:")
    print(f"  cd /var/lib/lanewatch && {exec_path} users add NAME --role admin --config {config_path}")
    print("  systemctl enable --now lanewatch-console.service")
    return 0


def _make_keys(directory: Path, site: Config, dry_run: bool) -> None:
    """The CURVE keys of the site's service, console and drivers (mode 0600); keys that exist are kept."""
    from lanewatch.edge.ops import keyfiles  # ZeroMQ makes the keys; the rest of install-units needs no dependency

    for info in keyfiles.site_keys(site.lanes):
        path = directory / "secret" / f"{info.name}.key_secret"
        if path.exists():
            print(f"kept: {path}")
        elif dry_run:
            print(f"create (dry run): {path}")
        else:
            keyfiles.create(directory, info)
            print(f"create: {path}")


def _scanner_lanes(config_path: Path, lanes: list[str]) -> tuple[list[str], str]:
    """Those of ``lanes`` with an X-ray scanner (``xray`` set), and why they cannot be enabled ("" when they can)."""
    try:
        known = {lane.id: lane for lane in config_module.load(config_path).lanes}
    except ConfigError as exc:
        return [], str(exc)
    missing = [lane for lane in lanes if lane not in known]
    if missing:
        return [], f"{config_path} has no [[lanes]] entry for {', '.join(missing)}"
    return [lane for lane in lanes if known[lane].xray], ""
