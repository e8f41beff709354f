"""core/images.py: the manifest's one form, architecture tags, and the tar member rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core import images as core
from fogwheel.core.images import Empty, ImageError, Member, Remove, Unpacking, UnsafeMember, Write
from fogwheel.core.owners import Device
from fogwheel.core.waiting import NO_CAPABILITY, Fleet, LiveNode, TaskView, waiting_for

SHA_A, SHA_B = "a" * 64, "b" * 64


# -- architectures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "tag"),
    [
        ("amd64", "x86_64"),
        ("x86_64", "x86_64"),
        ("AMD64", "x86_64"),
        ("arm64", "aarch64"),
        ("aarch64", "aarch64"),
        ("armhf", "armv7l"),
        ("i386", "i686"),
        ("riscv64", "riscv64"),
    ],
)
def test_architecture_spellings_of_docker_debian_and_the_kernel_mean_one_tag(
    given_name: str, tag: str
) -> None:
    assert core.normalise_arch(given_name) == tag
    assert core.arch_need(given_name) == f"arch:{tag}"


def test_an_unknown_architecture_is_refused_with_the_known_ones_named() -> None:
    with pytest.raises(ImageError, match="x86_64"):
        core.normalise_arch("vax")


def test_elf_header_gives_the_architecture() -> None:
    x86 = b"\x7fELF\x02\x01\x01" + b"\x00" * 11 + (62).to_bytes(2, "little")
    arm = b"\x7fELF\x02\x01\x01" + b"\x00" * 11 + (183).to_bytes(2, "little")
    assert core.elf_arch(x86) == "x86_64"
    assert core.elf_arch(arm) == "aarch64"
    assert core.elf_arch(b"#!/bin/sh\n" + b"\x00" * 20) is None


# -- the manifest -----------------------------------------------------------------------------


def test_manifest_round_trips_through_its_canonical_form_and_the_id_is_its_sha256() -> None:
    m = core.make_manifest([(SHA_A, 10), (SHA_B, 20)], "amd64", 1234)
    raw = m.canonical()
    assert core.parse_manifest(raw) == m
    assert m.arch == "x86_64" and m.size == 30
    import hashlib

    assert m.image_id() == hashlib.sha256(raw).hexdigest()


def test_a_manifest_not_in_canonical_form_is_refused_so_one_image_has_one_id() -> None:
    m = core.make_manifest([(SHA_A, 10)], "x86_64", 5)
    spaced = json.dumps(json.loads(m.canonical()), indent=1).encode()
    with pytest.raises(ImageError, match="canonical"):
        core.parse_manifest(spaced)


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"format": "other"}, "format"),
        ({"layers": []}, "1 to"),
        ({"layers": [{"sha": "XYZ", "size": 1}]}, "hex"),
        ({"layers": [{"sha": SHA_A, "size": -1}]}, "whole number"),
        ({"layers": [{"sha": SHA_A, "size": 1}, {"sha": SHA_A, "size": 1}]}, "twice"),
        ({"arch": "amd64"}, "not a fogwheel tag"),  # tags are normalised before they are written
        ({"unpacked": core.MAX_IMAGE_BYTES + 1}, "at most"),
        ({"extra": 1}, "fields other"),
    ],
)
def test_bad_manifests_are_refused_with_a_reason(doc: dict[str, object], words: str) -> None:
    base: dict[str, object] = {
        "format": core.FORMAT,
        "arch": "x86_64",
        "layers": [{"sha": SHA_A, "size": 1}],
        "unpacked": 1,
    }
    base.update(doc)
    raw = json.dumps(base, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ImageError, match=words):
        core.parse_manifest(raw)


def test_a_huge_manifest_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(ImageError, match="at most"):
        core.parse_manifest(b" " * (core.MAX_MANIFEST_BYTES + 1))


# -- member names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("/etc/passwd", "absolute"),
        ("../etc/passwd", r"\.\."),
        ("usr/../../etc", r"\.\."),
        ("a\x00b", "NUL"),
        ("x" * 300, "255"),
    ],
)
def test_member_names_that_leave_the_root_are_refused(name: str, words: str) -> None:
    with pytest.raises(UnsafeMember, match=words):
        Unpacking().admit(Member(name, "file"))


def test_dot_slash_names_are_the_usual_spelling_and_normalised() -> None:
    action = Unpacking().admit(Member("./usr//bin/./sh", "file", 3))
    assert isinstance(action, Write) and action.path == "usr/bin/sh"


@pytest.mark.parametrize("kind", ["char", "block"])
def test_device_nodes_are_refused(kind: str) -> None:
    with pytest.raises(UnsafeMember, match="device"):
        Unpacking().admit(Member("dev/sda", kind))  # type: ignore[arg-type]


def test_the_sandbox_reserved_directory_is_refused() -> None:
    with pytest.raises(UnsafeMember, match="sandbox"):
        Unpacking().admit(Member(".fogwheel/task/x", "file"))


def test_modes_lose_setuid_and_are_readable_by_the_guest() -> None:
    action = Unpacking().admit(Member("bin/su", "file", 1, mode=0o4700))
    assert isinstance(action, Write) and action.mode == 0o744


# -- links ------------------------------------------------------------------------------------


def test_absolute_symlinks_stay_in_the_image_because_the_image_is_slash() -> None:
    u = Unpacking()
    assert isinstance(u.admit(Member("bin/sh", "symlink", link="/bin/busybox")), Write)
    assert isinstance(u.admit(Member("lib64/ld.so", "symlink", link="/lib/x/ld.so")), Write)


def test_a_relative_symlink_climbing_above_the_root_is_refused() -> None:
    with pytest.raises(UnsafeMember, match="outside"):
        Unpacking().admit(Member("usr/lib/evil", "symlink", link="../../../etc/shadow"))
    ok = Unpacking().admit(Member("usr/lib/fine", "symlink", link="../../etc/os-release"))
    assert isinstance(ok, Write)


def test_nothing_is_written_through_a_symlink_the_classic_escape() -> None:
    u = Unpacking()
    u.admit(Member("etc", "symlink", link="/etc"))
    with pytest.raises(UnsafeMember, match="through the symlink"):
        u.admit(Member("etc/cron.d/evil", "file", 10))


def test_a_later_layer_may_replace_a_link_with_a_directory_and_write_in_it() -> None:
    u = Unpacking()
    u.admit(Member("lib", "symlink", link="usr/lib"))
    u.admit(Member("lib", "dir"))
    assert isinstance(u.admit(Member("lib/x.so", "file", 1)), Write)


def test_hard_links_name_only_files_already_in_the_image() -> None:
    u = Unpacking()
    u.admit(Member("bin/busybox", "file", 10))
    action = u.admit(Member("bin/ls", "hardlink", link="bin/busybox"))
    assert isinstance(action, Write) and action.link == "bin/busybox"
    with pytest.raises(UnsafeMember, match="names no file"):
        u.admit(Member("bin/x", "hardlink", link="etc/shadow"))
    with pytest.raises(UnsafeMember, match=r"\.\."):
        u.admit(Member("bin/y", "hardlink", link="../../etc/shadow"))


def test_a_hard_link_to_a_file_under_a_path_since_replaced_by_a_link_is_refused() -> None:
    u = Unpacking()
    u.admit(Member("a/f", "file", 1))
    u.admit(Member("a", "symlink", link="/etc"))  # a/f is gone with the directory
    with pytest.raises(UnsafeMember, match="names no file"):
        u.admit(Member("g", "hardlink", link="a/f"))


# -- bounds -----------------------------------------------------------------------------------


def test_total_size_and_member_count_are_bounded() -> None:
    u = Unpacking(max_bytes=100)
    u.admit(Member("a", "file", 60))
    with pytest.raises(UnsafeMember, match="more than 100 bytes"):
        u.admit(Member("b", "file", 41))
    v = Unpacking(max_members=3)
    for i in range(3):
        v.admit(Member(f"f{i}", "file"))
    with pytest.raises(UnsafeMember, match="at most 3 members"):
        v.admit(Member("f4", "file"))


# -- OCI whiteouts ----------------------------------------------------------------------------


def test_whiteouts_delete_from_lower_layers_and_opaque_empties_a_directory() -> None:
    u = Unpacking()
    u.admit(Member("etc/motd", "file", 1))
    assert u.admit(Member("etc/.wh.motd", "file")) == Remove("etc/motd")
    assert u.admit(Member("var/cache/.wh..wh..opq", "file")) == Empty("var/cache")
    with pytest.raises(UnsafeMember, match="names no file"):
        u.admit(Member("motd2", "hardlink", link="etc/motd"))  # it was whited out


def test_a_whiteout_may_not_climb_out() -> None:
    with pytest.raises(UnsafeMember):
        Unpacking().admit(Member("etc/.wh...", "file"))


def test_a_whiteout_cuts_a_link_so_a_directory_may_follow() -> None:
    u = Unpacking()
    u.admit(Member("opt", "symlink", link="/srv"))
    u.admit(Member(".wh.opt", "file"))
    assert isinstance(u.admit(Member("opt/x", "file", 1)), Write)


names = st.lists(
    st.sampled_from(["a", "b", "..", ".", "etc", ".wh.a", ".wh..wh..opq", ""]),
    min_size=1,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            names,
            st.sampled_from(["file", "dir", "symlink", "hardlink"]),
            names,
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_no_admitted_write_lies_beneath_a_live_symlink_or_outside_the_root(
    members: list[tuple[list[str], str, list[str], bool]],
) -> None:
    u = Unpacking()
    links: set[str] = set()
    for parts, kind, target, absolute in members:
        name = "/".join(parts)
        link = ("/" if absolute else "") + "/".join(target)
        try:
            action = u.admit(Member(name, kind, 1, link))  # type: ignore[arg-type]
        except UnsafeMember:
            continue
        if isinstance(action, Write):
            assert ".." not in action.path.split("/") and not action.path.startswith("/")
            for i in range(1, len(action.path.split("/"))):
                assert "/".join(action.path.split("/")[:i]) not in links
            links = {p for p in links if p != action.path and not p.startswith(action.path + "/")}
            if kind == "symlink":
                links.add(action.path)
        elif isinstance(action, Remove):
            links = {p for p in links if p != action.path and not p.startswith(action.path + "/")}
        elif isinstance(action, Empty):
            links = {p for p in links if not p.startswith(action.path + "/" if action.path else "")}


# -- why it waits -----------------------------------------------------------------------------


def test_an_image_of_another_architecture_waits_with_a_sentence_that_says_so() -> None:
    live = tuple(
        LiveNode(Device(f"n{i}"), capabilities=frozenset({"arch:x86_64", "images"}))
        for i in range(2)
    )
    w = waiting_for(
        TaskView("pending", needs=frozenset({"arch:aarch64", "images"})), Fleet(live=live)
    )
    assert w is not None and w.stuck and w.reason == NO_CAPABILITY
    assert "built for aarch64" in w.sentence and "x86_64 (2)" in w.sentence
    same = waiting_for(TaskView("pending", needs=frozenset({"arch:x86_64"})), Fleet(live=live))
    assert same is not None and same.reason != NO_CAPABILITY
