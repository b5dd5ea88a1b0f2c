"""`faceserve keys` and the bind-address rule of `faceserve serve`.

Secure by default: without API keys the server listens on loopback only; another address is
refused (exit 2, before any model is loaded) unless keys exist or `--insecure` is given.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from service.cli import main
from service.commands import _check_bind, is_loopback
from service.config import Settings
from service.security.keys import KeyRing, hash_token, open_security_store
from tests.service.test_server_process import faceserve_bin


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "g")
    code, out, err = run_cli(capsys, "keys", "create", "--name", "kiosk", "--scope", "enroll",
                             "--scope", "recognize", "--data-dir", d)
    assert code == 0 and "shown once" in err
    token = out.strip()
    assert token.startswith("fsk_") and len(token) == 4 + 43
    code, out, _ = run_cli(capsys, "keys", "create", "--name", "ops", "--scope", "admin",
                           "--gallery", "acme", "--data-dir", d, "--json")
    created = json.loads(out)
    assert code == 0 and created["gallery"] == "acme" and created["scopes"] == ["admin"]

    code, out, _ = run_cli(capsys, "keys", "list", "--data-dir", d, "--json")
    listed = {k["name"]: k for k in json.loads(out)}
    assert set(listed) == {"kiosk", "ops"} and listed["kiosk"]["scopes"] == ["enroll",
                                                                             "recognize"]
    assert token not in out and created["token"] not in out
    code, out, _ = run_cli(capsys, "keys", "list", "--data-dir", d)
    assert "kiosk" in out and "acme" in out and "active" in out

    code, out, _ = run_cli(capsys, "keys", "revoke", listed["kiosk"]["key_id"], "--data-dir", d)
    assert code == 0 and "revoked" in out
    code, _, err = run_cli(capsys, "keys", "revoke", "k_nope", "--data-dir", d)
    assert code == 1 and "no key" in err

    store = open_security_store(Settings(data_dir=Path(d)))
    try:
        ring = KeyRing(store)
        assert ring.lookup(token) is not None and ring.lookup(token).revoked_at is not None
        assert store.find_key(hash_token(created["token"])).gallery == "acme"
        events = [(e.action, e.key_name) for e in store.list_audit(None, 0, 10)]
        assert events == [("create_key", "(command line)")] * 2 + [
            ("revoke_key", "(command line)")]
    finally:
        store.close()


@pytest.mark.parametrize(("argv", "message"), [
    (["--scope", "root"], "unknown scope"),
    (["--scope", "admin", "--gallery", "no spaces"], "gallery name"),
    (["--scope", ","], "at least one scope"),
])
def test_keys_create_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "keys", "create", "--name", "x", *argv,
                             "--data-dir", str(tmp_path))
    assert code == 2 and message in err and out == ""


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.org", "localhost.evil"):
        assert not is_loopback(host), host


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    """The real command: refused before loading anything, and the message says the way out."""
    for host in ("0.0.0.0", "10.9.8.7"):
        out = subprocess.run(
            [faceserve_bin(), "serve", "--host", host, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 2, out.stderr
        assert f"refusing to listen on {host} without API keys" in out.stderr
        assert "faceserve keys create" in out.stderr and "--insecure" in out.stderr
    # Plaintext keys in the environment are refused, not silently ignored.
    out = subprocess.run([faceserve_bin(), "serve", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "FACESERVE_API_KEYS": "secret"})
    assert out.returncode == 2 and "faceserve keys create" in out.stderr


def test_the_bind_rule(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="faceserve")
    settings = Settings(data_dir=tmp_path, host="127.0.0.1")
    assert _check_bind(settings, insecure=False) is None
    assert "no API keys: listening on 127.0.0.1 only" in caplog.text  # and it says so

    public = Settings(data_dir=tmp_path, host="0.0.0.0")
    assert "refusing" in (_check_bind(public, insecure=False) or "")
    caplog.clear()
    assert _check_bind(public, insecure=True) is None
    assert "WITHOUT API keys" in caplog.text

    store = open_security_store(settings)
    ring = KeyRing(store)
    record, _ = ring.create("app", ["recognize"])
    assert _check_bind(public, insecure=False) is None  # keys: any address
    ring.revoke(record.key_id)
    caplog.clear()
    # Every key revoked: still enforced (every request 401), so still safe to listen.
    assert _check_bind(public, insecure=False) is None
    assert "every API key of this gallery is revoked" in caplog.text
    store.close()


def test_keys_create_knows_every_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "g")
    code, out, _ = run_cli(capsys, "keys", "create", "--name", "dpo", "--scope", "erase,read",
                           "--scope", "audit", "--scope", "metrics", "--data-dir", d, "--json")
    assert code == 0 and json.loads(out)["scopes"] == ["read", "erase", "metrics", "audit"]
    code, _, err = run_cli(capsys, "keys", "create", "--name", "x", "--scope", "delete",
                           "--data-dir", d)
    assert code == 2 and "read" in err and "erase" in err  # the message lists the scopes
    with pytest.raises(SystemExit):
        run_cli(capsys, "keys", "create", "--help")
    assert "read, erase, metrics, audit" in " ".join(capsys.readouterr().out.split())
