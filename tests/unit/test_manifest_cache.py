"""The manifest cache: the same result as parsing, keyed by content, never trusted blindly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import ManifestError
from reconciler.files.content_cache import ContentCache, default_cache_dir
from reconciler.spec.manifests import ManifestSet, load_manifests
from tests.helpers import domain_yaml, host_yaml, write

FULL_DOMAIN = """\
apiVersion: virt-reconcile/v1
kind: Domain
metadata: {name: web-01, labels: {team: web}}
spec:
  vcpus: 4
  memory: 1.5GiB
  currentMemory: 1000 MiB
  state: stopped
  autostart: true
  type: qemu
  machine: pc-q35-7.2
  boot: {kernel: /boot/vmlinuz, cmdline: console=ttyS0}
  disks:
    - {path: /var/lib/libvirt/images/web.qcow2, format: qcow2}
    - {path: /dev/vg/data, bus: sata}
  interfaces:
    - {network: default, mac: "52:54:00:AA:BB:CC"}
    - {bridge: br0, model: e1000}
"""


def tree(root: Path) -> Path:
    write(root, "hosts.yaml", host_yaml() + "---\n" + host_yaml(name="hv2", state="state/hv2.xml"))
    write(root, "vms/web.yaml", FULL_DOMAIN.replace("{name: web-01,", "{name: web-01, host: hv1,"))
    write(
        root, "vms/db.yaml", domain_yaml("db-01", host="hv2", vcpus=2) + "---\n" + domain_yaml("db-02", "hv2")
    )
    return root


def same(left: ManifestSet, right: ManifestSet) -> None:
    assert left.hosts == right.hosts
    assert left.domains == right.domains
    assert left.sources == right.sources
    assert list(left.domains["hv2"]) == list(right.domains["hv2"])


def cache_at(folder: Path | None) -> ContentCache:
    return ContentCache(folder, "manifests")


def cache_file(folder: Path) -> Path:
    (found,) = (folder / "manifests").glob("*.json")
    return found


def problems_of(root: Path, cache: ContentCache | None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(root, cache)
    return [str(p) for p in info.value.problems]


def test_a_cached_load_equals_a_parsed_one(tmp_path):
    root = tree(tmp_path / "m")
    parsed = load_manifests(root)
    first = cache_at(tmp_path / "cache")
    same(load_manifests(root, first), parsed)
    assert (first.hits, first.misses) == (0, 3)
    second = cache_at(tmp_path / "cache")  # a new process: reads the file written by the first
    same(load_manifests(root, second), parsed)
    assert (second.hits, second.misses) == (3, 0)
    assert cache_file(tmp_path / "cache").stat().st_mode & 0o777 == 0o600


def test_an_edit_is_seen_even_with_the_same_size_and_modification_time(tmp_path):
    root = tree(tmp_path / "m")
    load_manifests(root, cache_at(tmp_path / "cache"))
    path = root / "vms/db.yaml"
    before = path.stat()
    path.write_text(path.read_text().replace("vcpus: 2", "vcpus: 3"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    cache = cache_at(tmp_path / "cache")
    assert load_manifests(root, cache).domains["hv2"]["db-01"].spec.vcpus == 3
    assert (cache.hits, cache.misses) == (2, 1)


def test_files_with_problems_are_not_cached_and_report_the_same_every_time(tmp_path):
    root = tree(tmp_path / "m")
    write(
        root,
        "vms/bad.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: x}\nspec: {memory: 3}\n",
    )
    expected = problems_of(root, None)
    assert problems_of(root, cache_at(tmp_path / "cache")) == expected
    cache = cache_at(tmp_path / "cache")
    assert problems_of(root, cache) == expected
    assert (cache.hits, cache.misses) == (3, 1)


def test_cross_file_problems_in_cached_files_keep_their_lines(tmp_path):
    root = tree(tmp_path / "m")
    load_manifests(root, cache_at(tmp_path / "cache"))
    write(root, "hosts.yaml", host_yaml())  # hv2 is gone: db-01 and db-02 now name an unknown host
    expected = problems_of(root, None)
    assert expected == [
        "vms/db.yaml:5: metadata.host: unknown host 'hv2' (hosts: hv1)",
        "vms/db.yaml:14: metadata.host: unknown host 'hv2' (hosts: hv1)",
    ]
    cache = cache_at(tmp_path / "cache")
    assert problems_of(root, cache) == expected
    assert cache.hits == 2


def test_deleted_files_drop_out_of_the_cache(tmp_path):
    root = tree(tmp_path / "m")
    load_manifests(root, cache_at(tmp_path / "cache"))
    assert len(json.loads(cache_file(tmp_path / "cache").read_text())["entries"]) == 3
    (root / "vms/db.yaml").unlink()
    write(root, "hosts.yaml", host_yaml())
    load_manifests(root, cache_at(tmp_path / "cache"))
    assert len(json.loads(cache_file(tmp_path / "cache").read_text())["entries"]) == 2


@pytest.mark.parametrize(
    "spoil",
    [
        lambda path: path.write_text("{not json"),
        lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "code": "another version"})),
        lambda path: path.chmod(0o620),  # group-writable: someone else could have put models in it
    ],
    ids=["corrupt", "other-version", "group-writable"],
)
def test_an_untrustworthy_cache_is_ignored_and_replaced(tmp_path, spoil):
    root = tree(tmp_path / "m")
    load_manifests(root, cache_at(tmp_path / "cache"))
    spoil(cache_file(tmp_path / "cache"))
    cache = cache_at(tmp_path / "cache")
    same(load_manifests(root, cache), load_manifests(root))
    assert (cache.hits, cache.misses) == (0, 3)
    assert cache_file(tmp_path / "cache").stat().st_mode & 0o777 == 0o600
    again = cache_at(tmp_path / "cache")
    load_manifests(root, again)
    assert again.hits == 3


def test_an_entry_that_no_longer_validates_is_parsed_again(tmp_path):
    root = tree(tmp_path / "m")
    load_manifests(root, cache_at(tmp_path / "cache"))
    path = cache_file(tmp_path / "cache")
    content = json.loads(path.read_text())
    for documents in content["entries"].values():
        for document in documents:
            document[3] = document[3].replace('"apiVersion"', '"bogus":1,"apiVersion"')
    path.write_text(json.dumps(content))
    cache = cache_at(tmp_path / "cache")
    same(load_manifests(root, cache), load_manifests(root))
    assert (cache.hits, cache.misses) == (0, 3)  # found, refused by validation, parsed again
    again = cache_at(tmp_path / "cache")
    load_manifests(root, again)
    assert again.hits == 3


def test_an_unwritable_cache_folder_only_costs_speed(tmp_path):
    root = tree(tmp_path / "m")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    same(load_manifests(root, cache_at(blocked / "cache")), load_manifests(root))
    same(load_manifests(root, cache_at(None)), load_manifests(root))


def test_one_cache_instance_serves_many_loads(tmp_path):
    root = tree(tmp_path / "m")
    cache = cache_at(tmp_path / "cache")
    load_manifests(root, cache)
    load_manifests(root, cache)
    assert (cache.hits, cache.misses) == (3, 0)
    write(root, "vms/new.yaml", domain_yaml("new-01", "hv1"))
    assert "new-01" in load_manifests(root, cache).domains["hv1"]
    assert (cache.hits, cache.misses) == (3, 1)


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("VIRT_RECONCILE_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.setenv("VIRT_RECONCILE_CACHE_DIR", "off")
    assert default_cache_dir() is None
    monkeypatch.delenv("VIRT_RECONCILE_CACHE_DIR")
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/virt-reconcile")
    assert default_cache_dir() == Path("/var/cache/virt-reconcile")
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "virt-reconcile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "virt-reconcile"


sizes = st.builds(
    lambda number, unit: f"{number}{unit}",
    st.integers(min_value=1, max_value=4096),
    st.sampled_from(["MiB", "GiB", " MB", "KiB", "M"]),
)
disks = st.fixed_dictionaries(
    {"path": st.sampled_from(["/img/a.qcow2", "/img/b.raw", "/dev/vg/c"])},
    optional={
        "bus": st.sampled_from(["virtio", "sata", "scsi", "ide"]),
        "format": st.sampled_from(["raw", "qcow2"]),
    },
)
interfaces = st.fixed_dictionaries(
    {"network": st.sampled_from(["default", "lan"])},
    optional={"mac": st.sampled_from(["52:54:00:AA:bb:01", "52:54:00:00:00:02"]), "model": st.just("virtio")},
)
specs = st.fixed_dictionaries(
    {"memory": sizes},
    optional={
        "vcpus": st.integers(min_value=1, max_value=64),
        "state": st.sampled_from(["running", "stopped"]),
        "autostart": st.booleans(),
        "type": st.sampled_from(["kvm", "qemu"]),
        "machine": st.sampled_from(["pc", "q35"]),
        "disks": st.lists(disks, max_size=3, unique_by=lambda d: d["path"]),
        "interfaces": st.lists(interfaces, max_size=2),
        "balloon": st.sampled_from(["virtio", "none"]),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs)
def test_any_valid_domain_reads_back_from_the_cache_unchanged(tmp_path_factory, spec):
    root = tmp_path_factory.mktemp("m")
    write(root, "h.yaml", host_yaml())
    document = {"apiVersion": "virt-reconcile/v1", "kind": "Domain", "metadata": {"name": "d"}, "spec": spec}
    write(root, "d.yaml", yaml.safe_dump(document))
    try:
        parsed = load_manifests(root)
    except ManifestError:
        return  # e.g. two disks on one target: such files are never cached
    load_manifests(root, cache_at(root / ".cache"))
    cache = cache_at(root / ".cache")
    same_domains = load_manifests(root, cache).domains
    assert cache.hits == 2
    assert same_domains == parsed.domains


def test_one_instance_reads_each_scope_file_once(tmp_path):
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    cache = cache_at(tmp_path / "cache")
    load_manifests(first, cache)
    load_manifests(second, cache)
    for path in (tmp_path / "cache" / "manifests").glob("*.json"):
        path.write_text("{not json")  # what is on disk no longer matters to this instance
    load_manifests(first, cache)
    assert (cache.hits, cache.misses) == (3, 0)
    load_manifests(second, cache)
    assert (cache.hits, cache.misses) == (3, 0)
