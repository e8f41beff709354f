"""An app version's manifest (core/apps.py) and the node's check of an app lease (node/apps.py):
one canonical form and one id per bundle, and a lease refused unless its manifest hashes to
its id, carries the coordinator's signature and names exactly what the lease runs."""

from __future__ import annotations

import hashlib
import json
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogwheel.apps import zip_code
from fogwheel.core import apps as core
from fogwheel.node.apps import AppRefused, check_lease
from fogwheel.signing import canonical, public_key_b64, sign_app_version, verify_app_version

CODE = core.Code("a" * 64, 1234)
ENV = "b" * 64


def python_version(**kw: Any) -> core.Manifest:
    return core.Manifest("render", "python", entry="scene:draw", code=CODE, env=ENV, **kw)


def test_a_manifest_has_one_canonical_form_and_its_hash_is_the_version_id() -> None:
    m = python_version()
    raw = m.canonical()
    assert core.parse_manifest(raw) == m
    assert m.version_id() == hashlib.sha256(raw).hexdigest()
    assert m.blobs() == {CODE.sha, ENV}
    spaced = json.dumps(json.loads(raw), indent=1).encode()
    with pytest.raises(core.AppError, match="canonical"):
        core.parse_manifest(spaced)
    other = core.Manifest("render", "python", entry="scene:draw2", code=CODE, env=ENV)
    assert other.version_id() != m.version_id()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"app": "Render"}, "app name"),
        ({"entry": "scene.draw"}, "module:attr"),
        ({"entry": "scene:draw", "command": ("x",)}, "no command"),
        ({"kind": "command", "entry": None, "command": ("prog",), "code": CODE}, "no entry"),
        ({"kind": "command", "entry": None, "command": ()}, "command line"),
        ({"env": "not-a-sha"}, "SHA-256"),
        ({"code": core.Code("a" * 64, 0)}, "size"),
        ({"kind": "java"}, "not python or command"),
    ],
)
def test_a_malformed_version_is_refused_with_a_sentence(fields: dict[str, Any], words: str) -> None:
    base: dict[str, Any] = {"app": "render", "kind": "python", "entry": "scene:draw"}
    with pytest.raises(core.AppError, match=words):
        core.Manifest(**{**base, **fields})


def test_parse_refuses_what_is_not_a_manifest() -> None:
    for raw, words in [
        (b"\xff", "not JSON"),
        (b"[]", "exactly the keys"),
        (b"x" * (core.MAX_MANIFEST_BYTES + 1), "over"),
    ]:
        with pytest.raises(core.AppError, match=words):
            core.parse_manifest(raw)


def test_a_command_apps_command_line_comes_before_the_tasks_own_arguments() -> None:
    m = core.Manifest("greet", "command", command=("/bin/echo", "hi"))
    assert core.command_for(m, ["there"]) == ["/bin/echo", "hi", "there"]
    assert core.command_for(m, None) == ["/bin/echo", "hi"]


def test_code_zips_the_same_way_every_time(tmp_path: Path) -> None:
    for d in ("one", "two"):
        (tmp_path / d / "pkg" / "__pycache__").mkdir(parents=True)
        (tmp_path / d / "pkg" / "__init__.py").write_text("X = 1\n")
        (tmp_path / d / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"junk " + d.encode())
        (tmp_path / d / ".git").mkdir()
        (tmp_path / d / ".git" / "HEAD").write_text(d)
        (tmp_path / d / "main.py").write_text("import pkg\n")
    a, b = zip_code(tmp_path / "one"), zip_code(tmp_path / "two")
    assert a == b
    assert zipfile.ZipFile(BytesIO(a)).namelist() == ["main.py", "pkg/__init__.py"]


# -- the node's check of a lease ---------------------------------------------------------------


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def lease_of(m: core.Manifest, key: Ed25519PrivateKey, **over: Any) -> dict[str, Any]:
    text = m.canonical().decode()
    lease: dict[str, Any] = {
        "kind": m.kind,
        "fn": None,
        "env": m.env,
        "image": m.image,
        "command": list(m.command) if m.command else None,
        "inputs": {core.CODE_FILE: {"sha": m.code.sha, "size": m.code.size}} if m.code else {},
        "app": {
            "app": "app_1",
            "name": m.app,
            "version": m.version_id(),
            "manifest": text,
            "signature": sign_app_version(key, text.encode()),
        },
    }
    lease.update(over)
    return lease


def test_a_lease_that_agrees_with_its_signed_version_passes(key: Ed25519PrivateKey) -> None:
    m = python_version()
    assert check_lease(lease_of(m, key), public_key_b64(key)) == m
    cmd = core.Manifest("greet", "command", command=("/bin/echo",))
    lease = lease_of(cmd, key, command=["/bin/echo", "extra"])
    assert check_lease(lease, public_key_b64(key)) == cmd


def test_a_lease_that_disagrees_with_its_version_is_refused(key: Ed25519PrivateKey) -> None:
    m = python_version()
    pub = public_key_b64(key)
    other_key = Ed25519PrivateKey.generate()
    changed = m.canonical().decode().replace("scene:draw", "scene:steal")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"app": {**lease_of(m, key)["app"], "manifest": changed}}, "does not hash to its id"),
        ({"app": lease_of(m, other_key)["app"]}, "not signed by this node's coordinator"),
        ({"env": "c" * 64}, "environment or image"),
        ({"kind": "command"}, "runs python"),
        ({"inputs": {core.CODE_FILE: {"sha": "d" * 64, "size": 1}}}, "code is not"),
        ({"fn": {"sha": "e" * 64, "size": 1}}, "no pickled function"),
        ({"app": None}, "names no app version"),
    ]
    for over, words in cases:
        with pytest.raises(AppRefused, match=words):
            check_lease(lease_of(m, key, **over), pub)
    cmd = core.Manifest("greet", "command", command=("/bin/echo",))
    with pytest.raises(AppRefused, match="command line"):
        check_lease(lease_of(cmd, key, command=["/bin/sh", "-c", "evil"]), pub)


def test_the_version_signature_is_no_lease_signature(key: Ed25519PrivateKey) -> None:
    raw = python_version().canonical()
    sig = sign_app_version(key, raw)
    assert verify_app_version(public_key_b64(key), raw, sig)
    assert not verify_app_version(public_key_b64(key), raw + b" ", sig)
    assert not verify_app_version(public_key_b64(key), raw, "not base64!")


def test_a_lease_without_an_app_signs_as_before_and_one_with_it_covers_it() -> None:
    plain = {"task_id": 1, "kind": "python"}
    assert canonical({**plain, "app": None}) == canonical(plain)
    assert b'"app"' not in canonical(plain)
    with_app = canonical({**plain, "app": {"version": "x"}})
    assert with_app != canonical({**plain, "app": {"version": "y"}})
