"""CURVE key files and ``lanewatch keys``: what is written, with which modes, and how each process finds its keys."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lanewatch.edge.bus.security import Keys
from lanewatch.edge.config import BusConfig, ConfigError, parse
from lanewatch.edge.ops import keyfiles
from lanewatch.edge.ops.keyfiles import KeyFileError, KeyInfo


def _lanewatch(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lanewatch.edge", *argv], capture_output=True, text=True, timeout=60)


def test_keys_init_makes_the_site_keys_with_mode_0600(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f'[bus]\nkeys = "{tmp_path / "keys"}"\n[[lanes]]\nid = "a"\n[[lanes]]\nid = "b"\nxray = "h:1"\n')
    done = _lanewatch("keys", "--config", str(config), "init")
    assert done.returncode == 0, done.stderr
    keys = tmp_path / "keys"
    assert sorted(p.name for p in (keys / "secret").iterdir()) == [
        "console.key_secret",
        "rpm-a.key_secret",
        "rpm-b.key_secret",
        "service.key_secret",
        "xray-b.key_secret",
    ]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.glob("*/*"))
    assert all(d.stat().st_mode & 0o777 == 0o700 for d in (keys / "public", keys / "secret"))
    listed = _lanewatch("keys", "list", "--dir", str(keys)).stdout
    assert "xray-b" in listed and "source xray lanes b" in listed
    assert "public-key" in (keys / "public" / "rpm-a.key").read_text()
    assert "secret-key" not in (keys / "public" / "rpm-a.key").read_text(), "a public file holds no secret"

    again = _lanewatch("keys", "init", "--config", str(config))
    assert again.returncode == 0 and "0 keys made" in again.stdout, "existing keys are kept"
    old = (keys / "public" / "rpm-a.key").read_text()
    assert _lanewatch("keys", "driver", "rpm", "--lane", "a", "--dir", str(keys)).returncode == 1
    assert _lanewatch("keys", "driver", "rpm", "--lane", "a", "--dir", str(keys), "--force").returncode == 0
    assert (keys / "public" / "rpm-a.key").read_text() != old, "--force replaces the keypair"


def test_a_key_file_round_trips_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    info = keyfiles.create(tmp_path, KeyInfo("rpm-ab", "driver", b"", ("a", "b"), "rpm"))
    back, secret = keyfiles.read(tmp_path / "secret" / "rpm-ab.key_secret")
    assert back == info and secret is not None and len(secret) == 40
    assert back.may_publish("b", "rpm") and not back.may_publish("c", "rpm") and not back.may_publish("a", "xray")
    assert not KeyInfo("ops", "console", info.public).may_publish("a", "rpm")
    text = (tmp_path / "public" / "rpm-ab.key").read_text()
    for bad in (text.replace('role = "driver"', 'role = "root"'), text[:-10], "public-key = nonsense\n", ""):
        with pytest.raises(KeyFileError):
            keyfiles.parse(bad, "bad.key")


def test_each_process_finds_its_keys_in_the_directory_or_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    for info in keyfiles.site_keys(parse('[[lanes]]\nid = "a"').lanes):
        keyfiles.create(keys, info)
    bus = BusConfig(keys=str(keys))
    service = Keys.load(bus, "service")
    assert service is not None and sorted(i.name for i in service.clients.values()) == ["console", "rpm-a"]
    driver = Keys.load(bus, "rpm-a")
    assert driver is not None and driver.service == service.own.public and driver.clients == {}
    assert Keys.load(BusConfig(keys=str(keys), plaintext=True), "rpm-a") is None
    with pytest.raises(ConfigError, match=r"no secret key rpm-b\.key_secret .*lanewatch keys"):
        Keys.load(bus, "rpm-b")

    # As systemd hands them over: flat files, a directory credential named "public" becoming public_NAME.key.
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(keys / "secret" / "rpm-a.key_secret", creds / "rpm-a.key_secret")
    shutil.copy(keys / "public" / "service.key", creds / "public_service.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    elsewhere = BusConfig(keys=str(tmp_path / "nowhere"))
    assert Keys.load(elsewhere, "rpm-a") == driver
