"""The one atomic file writer: whole or nothing, no temporary files left behind."""

import errno
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


def fsynced_kinds(monkeypatch) -> list[str]:
    """Record what each ``os.fsync`` call flushes: "dir" or "file" (the real fsync still runs)."""
    kinds: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return kinds


def test_the_folder_is_flushed_after_the_rename(tmp_path: Path, monkeypatch):
    kinds = fsynced_kinds(monkeypatch)
    real_replace = os.replace

    def replace(source, target) -> None:
        kinds.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    write_atomically(tmp_path / "state.xml", "x")
    assert kinds == ["file", "rename", "dir"]  # the data, then the rename, then the folder's entry


def test_a_folder_that_cannot_be_flushed_is_no_error(tmp_path: Path, monkeypatch):
    real_fsync = os.fsync

    def refuse_folders(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")  # as some network file systems answer
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", refuse_folders)
    write_atomically(tmp_path / "state.xml", "x")
    assert (tmp_path / "state.xml").read_text() == "x"


def test_an_exclusive_write_creates_and_never_replaces(tmp_path: Path):
    target = tmp_path / "hosts.yaml"
    write_atomically(target, "mine\n", mode=0o644, exclusive=True)
    assert target.read_text() == "mine\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(FileExistsError):
        write_atomically(target, "theirs\n", exclusive=True)
    assert target.read_text() == "mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.yaml"]  # no temporary file left


def test_an_exclusive_write_that_fails_leaves_no_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "hosts.yaml"

    def fail(*_args):
        raise Boom

    monkeypatch.setattr(os, "link", fail)
    with pytest.raises(Boom):
        write_atomically(target, "mine\n", exclusive=True)
    assert list(tmp_path.iterdir()) == []  # neither a partial target nor a temporary file


def test_without_hard_links_an_exclusive_write_still_refuses_an_existing_file(tmp_path: Path, monkeypatch):
    def no_links(*_args):
        raise OSError(errno.EPERM, "Operation not permitted")  # FAT, some FUSE file systems

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "hosts.yaml"
    write_atomically(target, "mine\n", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomically(target, "theirs\n", exclusive=True)
    assert target.read_text() == "mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.yaml"]
