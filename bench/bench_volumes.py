"""Volumes benchmark (as root, on this machine's libvirtd): ``apply`` of 100 domains, each on its own
qcow2 overlay of one base image, against the libvirt-python floor in the same run.

The floor is the least libvirt-python can do for the same result: per domain, ``createXML`` of the
overlay in the pool, then ``defineXML`` of the domain on it, one after the other; a second floor
does the same from 8 threads (8 connections), as virt-reconcile's apply runs a phase's actions 8 at
a time. Both define the XML virt-reconcile writes, without its ownership metadata. The domains are
defined shut off (QEMU start-up would drown what is measured: making volumes and defining).
The pool and its base image are made once, outside the timing, and the manifests' Pool matches
them, so apply finds the pool as it wants it. Each figure is the median of ``--repeat`` runs, each
from a pool and a host without the benchmark's domains and volumes. Goal: apply at or below 1.0x
the one-by-one floor. ``--doc`` writes the figures into docs/benchmarks.md (section ``volumes``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import libvirt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import write_section

from reconciler.cli.main import main
from reconciler.libvirtxml.parse import forget_parsed
from reconciler.libvirtxml.render import render_domain
from reconciler.libvirtxml.volumes import render_volume
from reconciler.spec.models import DomainSpec

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

URI = "qemu:///system"
PREFIX = "vr-bench-vol-"
SIZE = 1024**3  # each overlay: 1 GiB virtual, almost nothing allocated
FOLDER = Path("/var/lib/libvirt/images") / f"{PREFIX}pool"
BASE = FOLDER / "base.qcow2"


def spec(index: int) -> dict:
    """Domain ``index``'s spec: 1 vCPU, 256 MiB, shut off, its root disk an overlay of the base."""
    volume = {"pool": f"{PREFIX}pool", "name": f"{PREFIX}{index:03d}.qcow2", "size": "1GiB"}
    return {
        "vcpus": 1,
        "memory": "256MiB",
        "type": "qemu",
        "state": "stopped",
        "disks": [{"volume": {**volume, "from": {"path": str(BASE)}}}],
    }


def manifests(root: Path, count: int) -> None:
    """The Host, the Pool over the benchmark's folder, and one Domain file per domain."""
    capacity = {"cpus": 1024, "memory": "1TiB"}  # shut-off domains still count: the policy is not measured
    host = {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Host",
        "metadata": {"name": "local"},
        "spec": {"uri": URI, "capacity": capacity},
    }
    pool = {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Pool",
        "metadata": {"name": f"{PREFIX}pool"},
        "spec": {"type": "dir", "path": str(FOLDER)},
    }
    (root / "host.yaml").write_text(yaml.safe_dump_all([host, pool], sort_keys=False))
    for index in range(count):
        doc = {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Domain",
            "metadata": {"name": f"{PREFIX}{index:03d}"},
            "spec": spec(index),
        }
        (root / f"{PREFIX}{index:03d}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def make_pool(conn: libvirt.virConnect) -> None:
    """The folder with a 64 MiB qcow2 base image and the pool over it, started and autostarted."""
    FOLDER.mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(BASE), "64M"], check=True)
    xml = f"<pool type='dir'><name>{PREFIX}pool</name><target><path>{FOLDER}</path></target></pool>"
    pool = conn.storagePoolDefineXML(xml, 0)
    pool.create(0)
    pool.setAutostart(1)


def clear(conn: libvirt.virConnect) -> None:
    """Undefine the benchmark's domains and delete its overlays (the base and the pool stay)."""
    for dom in conn.listAllDomains():
        if dom.name().startswith(PREFIX):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    pool = conn.storagePoolLookupByName(f"{PREFIX}pool")
    pool.refresh(0)
    for volume in pool.listAllVolumes():
        if volume.name().startswith(PREFIX):
            volume.delete(0)


def remove_pool(conn: libvirt.virConnect) -> None:
    """Everything the benchmark made: domains, volumes, the pool and its folder."""
    try:
        clear(conn)
        pool = conn.storagePoolLookupByName(f"{PREFIX}pool")
        for volume in pool.listAllVolumes():
            volume.delete(0)
        pool.destroy()
        pool.undefine()
    except libvirt.libvirtError:
        pass
    shutil.rmtree(FOLDER, ignore_errors=True)


def floor_one(conn: libvirt.virConnect, pool: libvirt.virStoragePool, index: int) -> None:
    """One domain the floor's way: its overlay made in the pool, then the domain defined on it."""
    name = f"{PREFIX}{index:03d}"
    pool.createXML(render_volume(f"{name}.qcow2", SIZE, "qcow2", backing=(str(BASE), "qcow2")), 0)
    conn.defineXML(render_domain(name, DomainSpec.model_validate(spec(index)), None))


def floor(count: int, threads: int) -> None:
    """The floor: every overlay and domain, one by one (``threads`` 1) or from ``threads`` connections."""

    def share(part: list[int]) -> None:
        conn = libvirt.open(URI)
        try:
            pool = conn.storagePoolLookupByName(f"{PREFIX}pool")
            for index in part:
                floor_one(conn, pool, index)
        finally:
            conn.close()

    parts = [list(range(count))[n::threads] for n in range(threads)]
    with ThreadPoolExecutor(threads) as workers:
        list(workers.map(share, parts))


def apply(root: Path) -> None:
    forget_parsed()  # as a new process would start
    with redirect_stdout(io.StringIO()) as out:
        code = main(["apply", str(root)])
    if code != 0:
        raise SystemExit(f"apply failed ({code}):\n{out.getvalue()}")


def timed(conn: libvirt.virConnect, work: Callable[[], None]) -> float:
    clear(conn)
    start = time.perf_counter()
    work()
    elapsed = time.perf_counter() - start
    return elapsed


def measure(count: int, repeat: int) -> dict[str, list[float]]:
    conn = libvirt.open(URI)
    remove_pool(conn)  # a run killed half-way leaves its pool
    make_pool(conn)
    runs: dict[str, list[float]] = {
        "virt-reconcile apply": [],
        "floor, one by one": [],
        "floor, 8 threads": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="vr-bench-vol-") as folder:
            root = Path(folder)
            manifests(root, count)
            os.environ["VIRT_RECONCILE_CACHE_DIR"] = str(root / "cache")
            apply(root)  # once untimed: the manifests' parse cache is warm, as in CI after the first run
            for _ in range(repeat):
                runs["virt-reconcile apply"].append(timed(conn, lambda: apply(root)))
                runs["floor, one by one"].append(timed(conn, lambda: floor(count, 1)))
                runs["floor, 8 threads"].append(timed(conn, lambda: floor(count, 8)))
    finally:
        remove_pool(conn)
        conn.close()
    return runs


def markdown(runs: dict[str, list[float]], count: int, repeat: int) -> str:
    floor_median = statistics.median(runs["floor, one by one"])
    ours = statistics.median(runs["virt-reconcile apply"])
    lines = [
        "## Volumes",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} by `bench/bench_volumes.py` (as root) on one machine "
        f"({platform.machine()}, {os.cpu_count()} CPUs, libvirt {_version()}, qemu:///system): {count} "
        "domains, shut off, each on its own 1 GiB qcow2 overlay of one 64 MiB base image, made in a dir "
        f"pool; median of {repeat} runs (min–max), each from a host without them.",
        "",
        "| run | wall time | ratio to the floor |",
        "|---|---|---|",
    ]
    for label, times in runs.items():
        median = statistics.median(times)
        lines.append(
            f"| {label} | {median:.2f} s ({min(times):.2f}–{max(times):.2f}) | {median / floor_median:.2f}× |"
        )
    verdict = "reached" if ours <= floor_median else "not reached"
    lines += [
        "",
        f"- virt-reconcile apply / one-by-one floor: **{ours / floor_median:.2f}×** "
        f"(goal ≤ 1.0×, {verdict}).",
        "- The apply includes loading the manifests (cached), observing the host (its pools and "
        "volumes), planning, and the pool check; the floor does only the libvirt calls.",
        "- What it does not measure: every domain stays shut off (no QEMU starts, no live growth) and "
        "none has a cloud-init seed (no ISO built, no upload), so it times making overlays and "
        "defining domains only.",
    ]
    return "\n".join(lines)


def _version() -> str:
    conn = libvirt.open(URI)
    try:
        number = conn.getLibVersion()
    finally:
        conn.close()
    return f"{number // 1_000_000}.{number // 1000 % 1000}"


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--doc", type=Path, default=None, help="write the figures into this markdown file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_volumes: skipped (needs root: a pool under /var/lib/libvirt/images on qemu:///system)")
        return
    runs = measure(args.domains, args.repeat)
    text = markdown(runs, args.domains, args.repeat)
    print(text)
    if args.doc is not None:
        write_section(args.doc, "volumes", text)
        print(f"  written: {args.doc}")


if __name__ == "__main__":
    run()
