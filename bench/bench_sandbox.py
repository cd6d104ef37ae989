"""Sandbox benchmark: 2,000 domains in 2,000 files on one sandbox host, against the libvirt-python floor.

Prints, for one run on this machine: wall time of the first plan, the apply and a no-op plan, next to
what plain libvirt-python needs for the same work (YAML load + defineXML/create loop; YAML load +
listAllDomains + XMLDesc), and the ratio. Target: apply and no-op plan at or below 1.0x the floor.
Each figure is the median of ``--repeat`` runs (default 5), each from a fresh sandbox and an empty
parse cache; every CLI run starts with nothing parsed in memory, as a new process would.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import libvirt
import yaml

from reconciler.adapters.sandbox import new_node_xml
from reconciler.cli.main import main
from reconciler.libvirtxml.parse import forget_parsed

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def generate(root: Path, count: int) -> None:
    """One Host file and ``count`` Domain files (a fifth of them stopped)."""
    (root / "hosts.yaml").write_text(
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: bench}\n"
        "spec:\n  uri: sandbox:state/bench.xml\n  capacity: {cpus: 2048, memory: 4TiB}\n"
    )
    vms = root / "vms"
    vms.mkdir()
    for index in range(count):
        state = "stopped" if index % 5 == 0 else "running"
        (vms / f"vm-{index:04d}.yaml").write_text(
            "apiVersion: virt-reconcile/v1\nkind: Domain\n"
            f"metadata:\n  name: vm-{index:04d}\n  labels: {{tier: bench}}\n"
            f"spec:\n  vcpus: {1 + index % 4}\n  memory: {512 * (1 + index % 4)}MiB\n"
            "  currentMemory: 512MiB\n"
            f"  state: {state}\n  disks:\n    - {{path: /var/lib/libvirt/images/vm-{index:04d}.qcow2}}\n"
            "  interfaces:\n    - {network: default}\n"
        )


def load_yaml(root: Path) -> list[dict]:
    """The floor's manifest read: every file through PyYAML's C loader, nothing validated."""
    documents = []
    for path in sorted((root / "vms").glob("*.yaml")):
        documents.extend(d for d in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if d)
    return documents


def floor_apply(root: Path, node: Path) -> None:
    """The least libvirt-python can do to converge: define each domain, start the running ones.

    It defines the same domain XML virt-reconcile writes (ACPI, a serial console, a balloon), so
    both do the same work in libvirt; only the ownership metadata is left out.
    """
    documents = load_yaml(root)
    conn = libvirt.open(f"test://{node}")
    for doc in documents:
        spec, name = doc["spec"], doc["metadata"]["name"]
        mib = int(spec["memory"].removesuffix("MiB"))
        dom = conn.defineXML(
            f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>{mib}</memory>"
            f"<currentMemory unit='MiB'>512</currentMemory><vcpu>{spec['vcpus']}</vcpu>"
            "<os><type arch='x86_64'>hvm</type></os><features><acpi/><apic/></features><devices>"
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{spec['disks'][0]['path']}'/><target dev='vda' bus='virtio'/></disk>"
            "<interface type='network'><source network='default'/><model type='virtio'/></interface>"
            "<serial type='pty'/><console type='pty'/><memballoon model='virtio'/></devices></domain>"
        )
        if spec["state"] == "running":
            dom.create()
    conn.close()


def floor_observe(root: Path, node: Path) -> None:
    """The least libvirt-python can do to see whether anything changed: list + XMLDesc each domain."""
    load_yaml(root)
    conn = libvirt.open(f"test://{node}")
    for dom in conn.listAllDomains():
        dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    conn.close()


def cli(*args: str) -> int:
    with redirect_stdout(io.StringIO()):
        return main(list(args))


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def run_once(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="vr-bench-") as folder:
        root = Path(folder)
        generate(root, count)
        state = root / "state" / "bench.xml"
        empty = root / "empty-node.xml"
        empty.write_text(new_node_xml(64, 1024**4))
        codes = {}

        def measure(label: str, *args: str) -> float:
            forget_parsed()  # each run as a new process: only the cache files carry over
            start = time.perf_counter()
            codes[label] = cli(*args)
            return time.perf_counter() - start

        os.environ["VIRT_RECONCILE_CACHE_DIR"] = str(root / "cache")  # starts empty
        times = {
            "first plan": measure("first plan", "plan", str(root)),
            "apply": measure("apply", "apply", str(root)),
            "no-op plan": measure("no-op plan", "plan", str(root)),
            "no-op again": measure("no-op again", "plan", str(root)),
            "floor apply": timed(lambda: floor_apply(root, empty)),
            "floor no-op": timed(lambda: floor_observe(root, state)),
        }
        expected = {"first plan": 2, "apply": 0, "no-op plan": 0, "no-op again": 0}
        assert codes == expected, f"unexpected exit codes {codes}"
        return times


def report(count: int, repeat: int) -> None:
    runs = [run_once(count) for _ in range(repeat)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    spread = {key: (min(run[key] for run in runs), max(run[key] for run in runs)) for key in runs[0]}
    print(f"sandbox benchmark: {count} domains in {count} files, median of {repeat} run(s)")
    print(f"{'measure':<12} {'virt-reconcile':>15} {'floor':>9} {'ratio':>7}   spread (min-max)")
    rows = [
        ("first plan", "floor no-op"),
        ("apply", "floor apply"),
        ("no-op plan", "floor no-op"),
        ("no-op again", "floor no-op"),
    ]
    for ours, floor in rows:
        low, high = spread[ours]
        ratio = median[ours] / median[floor]
        figures = f"{median[ours]:>14.2f}s {median[floor]:>8.2f}s {ratio:>6.2f}x"
        print(f"{ours:<12} {figures}   {low:.2f}-{high:.2f}s")
    print("target: apply and no-op plan at or below 1.00x the floor")
    print("first plan: nothing cached; apply and no-op plan: manifests cached, the domains' XML new;")
    print("no-op again: manifests and domain XML cached (what every later run on an unchanged host does)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    report(args.domains, args.repeat)
    sys.exit(0)
