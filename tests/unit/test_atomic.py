"""The one atomic file writer: whole or nothing, no temporary files left behind."""

import os
import stat
from pathlib import Path

import pytest

from reconciler.files.atomic import write_atomically


def test_writes_text_and_bytes_and_creates_the_folder(tmp_path: Path):
    target = tmp_path / "a" / "b" / "state.json"
    write_atomically(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    write_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_new_files_are_private_unless_told_and_existing_modes_are_kept(tmp_path: Path):
    private, public = tmp_path / "private", tmp_path / "public"
    write_atomically(private, "x")
    write_atomically(public, "x", mode=0o644)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    write_atomically(public, "y")
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


class Boom(Exception):
    pass


def test_a_failure_leaves_the_old_content_and_no_temporary_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "state.xml"
    target.write_text("old")

    def fail(*_args):
        raise Boom

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(Boom):
        write_atomically(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.xml"]
