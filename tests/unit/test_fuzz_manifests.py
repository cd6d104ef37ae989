"""Fuzzing the manifest loader: whatever a file holds, loading it raises nothing but ManifestError,
every problem names a file and a line, and what does load renders to libvirt XML.

``make test`` runs a small fixed budget, derandomized so CI is reproducible; ``make fuzz`` runs a
large one (``VR_FUZZ_EXAMPLES``) from a random seed, and prints how to reproduce what it finds.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reconciler.engine.policy import host_facts, limit
from reconciler.errors import ManifestError
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import Domain, Owner
from tests.helpers import host_yaml

EXAMPLES = int(os.environ.get("VR_FUZZ_EXAMPLES", "200"))
FIXED = "VR_FUZZ_EXAMPLES" not in os.environ

#: Field names the models know, so generated documents reach deep into validation.
FIELDS = [
    "apiVersion", "kind", "metadata", "name", "host", "labels", "spec", "uri", "capacity", "cpus", "memory",
    "swap", "prune", "maxDeletions", "overcommit", "enforcement", "cpu", "ratio", "maxVcpusPerDomain",
    "countInactive", "reserved", "countSwap", "countKsm", "vcpus", "currentMemory", "state", "autostart",
    "type", "arch", "machine", "boot", "kernel", "initrd", "cmdline", "disks", "path", "format", "bus",
    "target", "interfaces", "network", "bridge", "model", "mac", "balloon", "deletionProtection", "<<",
]  # fmt: skip
WORDS = [
    "virt-reconcile/v1", "Host", "Domain", "hv1", "web", "1GiB", "0KiB", "16385TiB", "4", "virtio",
    "running", "sandbox:state/hv1.xml", "sandbox:/etc/shadow", "sandbox:../x.xml", "test:///default",
    "qemu+ext:///system?command=./x.sh", "qemu:///system?socket=/x", "/img/a.qcow2", "52:54:00:12:34:56",
    "vda", "default", "br0", "enforce", ".inf", "2020-13-45", "1" * 120, "-oProxyCommand=x",
]  # fmt: skip

texts = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.text(st.sampled_from("\x00\x01\t\n\x1b\x7f\x85\ufffe a/:"), max_size=6),  # what XML cannot take
    st.sampled_from(WORDS),
)
keys = st.sampled_from(FIELDS) | texts
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
documents = st.fixed_dictionaries(
    {
        "apiVersion": st.just("virt-reconcile/v1") | values,
        "kind": st.sampled_from(["Host", "Domain"]) | values,
    },
    optional={"metadata": st.dictionaries(keys, values, max_size=3), "spec": st.dictionaries(keys, values)},
)


#: Valid documents, and the field paths a mutation may replace: close to valid goes deepest.
HOST = {
    "apiVersion": "virt-reconcile/v1",
    "kind": "Host",
    "metadata": {"name": "hv2"},
    "spec": {"uri": "sandbox:s.xml"},
}
DOMAIN = {
    "apiVersion": "virt-reconcile/v1",
    "kind": "Domain",
    "metadata": {"name": "a", "host": "hv1", "labels": {"team": "ops"}},
    "spec": {
        "memory": "1GiB",
        "boot": {"kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0"},
        "disks": [{"path": "/img/a.qcow2"}],
        "interfaces": [{"network": "default", "mac": "52:54:00:12:34:56"}],
    },
}
HOST_PATHS = [
    "spec.uri", "spec.capacity.cpus", "spec.capacity.memory", "spec.capacity.swap", "spec.prune",
    "spec.maxDeletions", "spec.overcommit.cpu.ratio", "spec.overcommit.cpu.maxVcpusPerDomain",
    "spec.overcommit.memory.ratio", "spec.overcommit.memory.reserved", "spec.overcommit.memory.countSwap",
    "metadata.labels.x",
]  # fmt: skip
DOMAIN_PATHS = [
    "spec.vcpus", "spec.memory", "spec.currentMemory", "spec.autostart", "spec.machine", "spec.arch",
    "spec.boot.kernel", "spec.boot.initrd", "spec.boot.cmdline", "spec.disks.0.path", "spec.disks.0.format",
    "spec.disks.0.target", "spec.disks.0.bus", "spec.interfaces.0.network", "spec.interfaces.0.mac",
    "spec.interfaces.0.model", "spec.deletionProtection", "metadata.labels.team", "metadata.name",
]  # fmt: skip


BASE = Domain.model_validate(DOMAIN)


def mutated(document: dict, path: str, value: object) -> dict:
    """A deep copy of ``document`` with the field at the dotted ``path`` set to ``value``."""
    copy = json.loads(json.dumps(document))
    *parents, last = path.split(".")
    place = copy
    for part in parents:
        place = place[int(part)] if isinstance(place, list) else place.setdefault(part, {})
    if isinstance(place, list):
        place[int(last)] = value
    else:
        place[last] = value
    return copy


replacements = texts | st.text(max_size=6).map("/a".__add__) | st.floats() | st.integers() | scalars | values
near_valid = st.one_of(
    st.builds(mutated, st.just(HOST), st.sampled_from(HOST_PATHS), replacements),
    st.builds(mutated, st.just(DOMAIN), st.sampled_from(DOMAIN_PATHS), replacements),
)


@st.composite
def dumped(draw: st.DrawFn) -> bytes:
    """A file of documents as PyYAML writes them (control characters escaped, any unicode)."""
    docs = draw(
        st.lists(near_valid, min_size=1, max_size=2) | st.lists(documents | values, min_size=1, max_size=3)
    )
    return yaml.safe_dump_all(docs, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Text built to hurt: deep nesting, alias bombs, long numbers, raw bytes, odd tags."""
    depth = draw(st.integers(0, 1100))
    levels, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    bomb = "a0: &a0 [x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]\n" for i in range(1, levels + 1)
    )
    pieces = [
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec: {memory: 1GiB}\n",
        f"zzz: {'[' * depth}{']' * depth}\n",
        bomb,
        f"vcpus: {draw(st.integers(min_value=0, max_value=10**400))}\n",
        "x: &l [1, *l]\n",
        f"y: !!{draw(st.sampled_from(['binary', 'set', 'int', 'float', 'timestamp', 'str', 'omap']))} a\n",
        draw(st.text(max_size=40)),
    ]
    chosen = draw(st.lists(st.sampled_from(pieces), min_size=1, max_size=4))
    raw = "".join(chosen).encode("utf-8", "surrogatepass")
    return raw + draw(st.binary(max_size=8)) if draw(st.booleans()) else raw


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=FIXED,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(content=dumped() | hostile(), with_host=st.booleans())
def test_any_file_loads_or_fails_with_located_problems(content: bytes, with_host: bool):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "fuzz.yaml").write_bytes(content)
        if with_host:
            (root / "h.yaml").write_text(host_yaml())
        try:
            manifests = load_manifests(root)
        except ManifestError as err:
            assert err.problems
            empty = "no manifests (*.yaml, *.yml) found"  # the tree's problem (a file of null only)
            unlocated = [str(p) for p in err.problems if p.message != empty and p.line is None]
            assert not unlocated, unlocated
            event("refused")
            return
    event(f"loaded {len(manifests.hosts)} host(s)")
    for name, host in manifests.hosts.items():
        facts = host_facts(host.spec.capacity, cpus=8, memory=16 * 1024**3, swap=0, ksm_saved=0)
        for rule in ("cpu.total", "cpu.perDomain", "memory.commit", "memory.balloon"):
            limit(rule, facts, host.spec.overcommit)
        for domain_name, domain in manifests.domains[name].items():
            owner = Owner(manifest="fuzz.yaml", host=name)
            merge_domain(render_domain(domain_name, BASE.spec, owner), domain.spec, owner)
