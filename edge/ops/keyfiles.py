"""CURVE key files of the bus: what ``lanewatch keys`` and ``lanewatch install-units`` write, and what every
process reads (see :mod:`lanewatch.edge.bus.security` for how the keys are used).

A key directory (``bus.keys``) holds::

    public/NAME.key          NAME's public key, role, lanes and source (what the service admits)
    secret/NAME.key_secret   NAME's secret key (the process that is NAME reads it)

in ZeroMQ's certificate format, every file mode 0600. Under systemd the units hand each process only
the files it needs with ``LoadCredential=``; a process then finds them in ``$CREDENTIALS_DIRECTORY``,
where a directory handed over as credential ``public`` appears as ``public_NAME.key`` files.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from lanewatch.edge.config import BusConfig, ConfigError, LaneConfig

ROLES = ("service", "driver", "console")
"""What a key is for: the service's own key, a driver that publishes records, a console that reads decisions."""
SERVICE = "service"
"""Name of the service's key."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_LINE = re.compile(r'([a-z-]+)\s*=\s*"([^"]*)"')


class KeyFileError(ConfigError):
    """A key that is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A public key and what it may do."""

    name: str
    role: str
    public: bytes
    """The public key, Z85-encoded (40 bytes)."""
    lanes: tuple[str, ...] = ()
    """Lanes a driver key may publish for."""
    source: str = ""
    """The source (driver name: rpm, xray, ...) a driver key publishes as."""

    def may_publish(self, lane: str, source: str) -> bool:
        """Whether a record of ``lane`` from ``source`` may come from this key."""
        return self.role == "driver" and lane in self.lanes and source == self.source


def valid_name(name: str) -> bool:
    """A key name: letters, digits, ``_ . : -``, starting with a letter or digit, at most 100 characters."""
    return bool(_NAME.fullmatch(name))


def driver_key_name(source: str, lane: str) -> str:
    """The default key name of a driver: ``SOURCE-LANE``, e.g. ``rpm-lane1``."""
    return f"{source}-{lane}"


def site_keys(lanes: list[LaneConfig]) -> list[KeyInfo]:
    """The keys a site needs (their ``public`` left empty): the service's, ``console``, and one per driver of each
    lane, ``rpm-LANE`` and, for a lane with a scanner, ``xray-LANE``."""
    keys = [KeyInfo(SERVICE, "service", b""), KeyInfo("console", "console", b"")]
    for lane in lanes:
        for source in ("rpm", "xray") if lane.xray else ("rpm",):
            keys.append(KeyInfo(driver_key_name(source, lane.id), "driver", b"", (lane.id,), source))
    return keys


# ---- files ---------------------------------------------------------------------------------------
def render(info: KeyInfo, secret: bytes | None = None) -> str:
    """``info`` (and ``secret``, Z85) as a ZeroMQ certificate file, metadata first."""
    meta = {"name": info.name, "role": info.role, "lanes": ",".join(info.lanes), "source": info.source}
    lines = [
        f"#   lanewatch CURVE {'secret' if secret else 'public'} key {info.name} ({info.role})",
        "#   written by `lanewatch keys`; keep the secret file unreadable to others (mode 0600)",
        "metadata",
        *(f'    {key} = "{value}"' for key, value in meta.items() if value),
        "curve",
        f'    public-key = "{info.public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def parse(text: str, where: str) -> tuple[KeyInfo, bytes | None]:
    """A certificate file written by :func:`render`: the key's info and its secret key (None in a public file)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line in ("metadata", "curve"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise KeyFileError(f"{where}: not a key file line: {line[:80]!r}")
        values[match[1]] = match[2]
    public, secret = values.get("public-key", "").encode(), values.get("secret-key")
    name, role = values.get("name", ""), values.get("role", "")
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(f"{where}: expected 40-character Z85 keys")
    if not valid_name(name) or role not in ROLES:
        raise KeyFileError(f"{where}: expected a key name and a role ({', '.join(ROLES)}), got {name!r}, {role!r}")
    try:
        z85.decode(public)
        if secret is not None:
            z85.decode(secret.encode())
    except ValueError as exc:
        raise KeyFileError(f"{where}: a key is not Z85: {exc}") from None
    lanes = tuple(lane for lane in values.get("lanes", "").split(",") if lane)
    info = KeyInfo(name=name, role=role, public=public, lanes=lanes, source=values.get("source", ""))
    return info, None if secret is None else secret.encode()


def write_private(path: Path, text: str, overwrite: bool = False) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (mode 0600), never wider."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def create(directory: Path, template: KeyInfo, overwrite: bool = False) -> KeyInfo:
    """Make a new keypair named and scoped as ``template`` (whose ``public`` is ignored) in ``directory``
    (``public/NAME.key``, ``secret/NAME.key_secret``); returns its info.

    Raises ``FileExistsError`` when NAME has keys already and ``overwrite`` is false.
    """
    public, secret = zmq.curve_keypair()
    info = dataclasses.replace(template, public=public)
    name = info.name
    for sub in ("public", "secret"):
        (directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_path, public_path = directory / "secret" / f"{name}.key_secret", directory / "public" / f"{name}.key"
    if not overwrite and (secret_path.exists() or public_path.exists()):
        raise FileExistsError(f"keys for {name!r} exist already in {directory}")
    write_private(secret_path, render(info, secret), overwrite)
    write_private(public_path, render(info), overwrite)
    return info


def read(path: Path) -> tuple[KeyInfo, bytes | None]:
    """One key file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the key: {exc}") from None
    return parse(text, str(path))


def key_dirs(bus: BusConfig) -> list[Path]:
    """Where a process looks for key files: systemd's credentials directory first, then ``bus.keys``."""
    dirs = [Path(os.environ["CREDENTIALS_DIRECTORY"])] if os.environ.get("CREDENTIALS_DIRECTORY") else []
    return [*dirs, Path(bus.keys) / "secret", Path(bus.keys) / "public", Path(bus.keys)]


def _public_in(directories: list[Path]) -> list[KeyInfo]:
    found: dict[str, KeyInfo] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.key")) if directory.is_dir() else []:
            info, _ = read(path)
            found.setdefault(info.name, info)
    return list(found.values())


def public_keys(bus: BusConfig) -> list[KeyInfo]:
    """Every public key the process can see (``*.key`` files), by name; the first of a name wins."""
    return _public_in(key_dirs(bus))


def public_keys_in(directory: Path) -> list[KeyInfo]:
    """The public keys of a key directory made by ``lanewatch keys``."""
    return _public_in([directory / "public"])
