"""virt-reconcile side by side with Ansible's community.libvirt, a virsh loop and the libvirt-python
floor, on the same real libvirtd (qemu:///system), in one run.

Scenarios (domains of type qemu without a guest OS, 100 of them, 20 running):
  converge  from empty: define all, start 20
  no-op     the same desired state again
  memory    currentMemory lowered on 10 running domains
  remove    10 domains removed

Each tool runs each scenario ``--repeat`` times from the same starting state (median and spread
shown). The report is printed and written to docs/benchmarks.md with a bar chart (docs/benchmarks.png).
libvirt round trips are counted for virt-reconcile (its adapter on a counting connection, in process)
and for the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from doc_sections import write_section  # noqa: E402

URI = "qemu:///system"
COUNT, RUNNING, CHANGED = 100, 20, 10
MEMORY_MIB, LOWERED_MIB = 64, 48
SCENARIOS = ("converge", "no-op", "memory", "remove")
SETTLE = 3.0  # seconds between preparing a scenario and timing it
NOOP_SAMPLES, NOOP_BUDGET = 10, 2.0
ANSIBLE_VENV = REPO / ".cache" / "bench" / "ansible-venv"

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def domain_xml(name: str, current_mib: int = MEMORY_MIB) -> str:
    """The same minimal domain for every tool: TCG, no disk, no OS (it sits in the firmware)."""
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>{MEMORY_MIB}</memory>"
        f"<currentMemory unit='MiB'>{current_mib}</currentMemory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>"
        "<devices><memballoon model='virtio'/></devices></domain>"
    )


def names(prefix: str) -> list[str]:
    return [f"{prefix}{index:03d}" for index in range(COUNT)]


def running(prefix: str) -> list[str]:
    return names(prefix)[:RUNNING]


def cleanup(prefix: str) -> None:
    conn = libvirt.open(URI)
    try:
        doomed = [d for d in conn.listAllDomains() if d.name().startswith(prefix)]

        def remove(dom: libvirt.virDomain) -> None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(remove, doomed))
    finally:
        conn.close()


# ------------------------------------------------------------------------------ counting libvirt


COUNT_LOCK = threading.Lock()  # counted calls come from several threads
#: libvirt-python methods answered from the object itself, with no call into libvirt's daemon.
LOCAL_METHODS = frozenset({"name", "UUIDString", "UUID", "connect", "c_pointer"})


class Counting:
    """A proxy counting every call into libvirt, following the domain objects it hands out."""

    def __init__(self, target: Any, counter: list[int]) -> None:
        self._target, self._counter = target, counter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute) or name in LOCAL_METHODS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with COUNT_LOCK:  # the tools call from several threads
                self._counter[0] += 1
            return _wrap(attribute(*args, **kwargs), self._counter)

        return call


def _wrap(value: Any, counter: list[int]) -> Any:
    if isinstance(value, libvirt.virDomain):
        return Counting(value, counter)
    if isinstance(value, list):
        return [_wrap(item, counter) for item in value]
    if isinstance(value, tuple):
        return tuple(_wrap(item, counter) for item in value)
    return value


# ---------------------------------------------------------------------------------------- tools


class Tool:
    """One way of reaching the desired state: ``run(scenario)`` does it and returns libvirt calls."""

    label = ""
    prefix = ""

    def prepare(self, scenario: str) -> None:
        """Bring the host to the scenario's starting state (not timed)."""
        cleanup(self.prefix)
        if scenario != "converge":
            self.setup_converged()

    def setup_converged(self) -> None:
        conn = libvirt.open(URI)
        try:
            for name in names(self.prefix):
                dom = conn.defineXML(self.initial_xml(name))
                if name in running(self.prefix):
                    dom.create()
        finally:
            conn.close()

    def initial_xml(self, name: str) -> str:
        return domain_xml(name)

    def reset(self) -> None:
        """Forget what an earlier run left in this process (not timed)."""

    def run(self, scenario: str) -> int | None:
        raise NotImplementedError


class VirtReconcile(Tool):
    """virt-reconcile apply, in process on a counting connection (the CLI adds ~0.3 s of start-up)."""

    label = "virt-reconcile"
    prefix = "vrcmp-vr-"

    def __init__(self, work: Path) -> None:
        self.root = work / "vr"
        self.cache = work / "vr-cache"

    def manifests(self, scenario: str) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "vms").mkdir(parents=True)
        (self.root / "hosts.yaml").write_text(
            "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: local}\n"
            f"spec:\n  uri: {URI}\n  capacity: {{cpus: 256, memory: 64GiB}}\n"
        )
        keep = names(self.prefix)[CHANGED:] if scenario == "remove" else names(self.prefix)
        lowered = set(running(self.prefix)[:CHANGED]) if scenario == "memory" else set()
        for name in keep:
            current = LOWERED_MIB if name in lowered else MEMORY_MIB
            state = "running" if name in running(self.prefix) else "stopped"
            (self.root / "vms" / f"{name}.yaml").write_text(
                f"apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {{name: {name}}}\nspec:\n"
                f"  vcpus: 1\n  memory: {MEMORY_MIB}MiB\n  currentMemory: {current}MiB\n  state: {state}\n"
                "  type: qemu\n  machine: pc\n"
            )

    def prepare(self, scenario: str) -> None:
        cleanup(self.prefix)
        if scenario != "converge":
            self.manifests("converge")
            self.apply()
        self.manifests(scenario)

    def reset(self) -> None:
        from reconciler.libvirtxml.parse import forget_parsed

        forget_parsed()  # each timed run starts with nothing parsed in memory, as a new CLI process does

    def apply(self, counter: list[int] | None = None) -> None:
        sys.path.insert(0, str(REPO))
        from reconciler.adapters.libvirt.host import LibvirtHypervisor
        from reconciler.engine.apply import ApplySettings
        from reconciler.engine.reconcile import ReconcileOptions, reconcile
        from reconciler.files.content_cache import ContentCache
        from reconciler.spec.manifests import load_manifests

        calls = counter if counter is not None else [0]

        @contextmanager
        def connect(host: Any, _write: bool) -> Any:
            conn = libvirt.open(host.spec.uri)
            calls[0] += 1
            try:
                yield LibvirtHypervisor(host.name, Counting(conn, calls), local=True)
            finally:
                conn.close()

        # As the CLI does it: manifests and domain XML parsed in an earlier run come from its cache.
        manifests = load_manifests(self.root, ContentCache(self.cache, "manifests"))
        outcome = reconcile(
            manifests,
            connect,
            ReconcileOptions(apply=True, allow_delete=True, settings=ApplySettings(shutdown_timeout=0)),
            parse_cache=ContentCache(self.cache, "domains"),
        )
        assert not outcome.failed and not outcome.plan.refused, outcome.plan

    def run(self, scenario: str) -> int:
        counter = [0]
        self.apply(counter)
        return counter[0]


class Floor(Tool):
    """The least libvirt-python can do: known desired state, no comparison beyond what is needed."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.label = "libvirt-python floor" + (", one by one" if workers == 1 else f", {workers} threads")
        self.prefix = f"vrcmp-floor{workers}-"

    def run(self, scenario: str) -> int:
        counter = [1]
        conn = Counting(libvirt.open(URI), counter)
        pool = ThreadPoolExecutor(self.workers)
        try:
            match scenario:
                case "converge":
                    doms = {name: conn.defineXML(domain_xml(name)) for name in names(self.prefix)}
                    list(pool.map(lambda name: doms[name].create(), running(self.prefix)))
                case "no-op":
                    for dom in conn.listAllDomains():
                        dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                case "memory":
                    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
                    for name in running(self.prefix)[:CHANGED]:
                        conn.lookupByName(name).setMemoryFlags(LOWERED_MIB * 1024, flags)
                case "remove":

                    def remove(name: str) -> None:
                        dom = conn.lookupByName(name)
                        if dom.isActive():
                            dom.destroy()
                        dom.undefine()

                    list(pool.map(remove, names(self.prefix)[:CHANGED]))
        finally:
            pool.shutdown()
            conn.close()
        return counter[0]


class VirshLoop(Tool):
    """The common hand-written baseline: an idempotent-ish shell loop around virsh."""

    label = "virsh loop"
    prefix = "vrcmp-virsh-"

    def __init__(self, work: Path) -> None:
        self.dir = work / "virsh"
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in names(self.prefix):
            (self.dir / f"{name}.xml").write_text(domain_xml(name))

    def run(self, scenario: str) -> None:
        v = f"virsh -q -c {URI}"
        run_list = " ".join(running(self.prefix))
        changed = " ".join(running(self.prefix)[:CHANGED])
        removed = " ".join(names(self.prefix)[:CHANGED])
        scripts = {
            "converge": f"""for f in {self.dir}/*.xml; do n=$(basename $f .xml)
                 {v} dominfo $n >/dev/null 2>&1 || {v} define $f >/dev/null; done
               for n in {run_list}; do {v} domstate $n | grep -q running || {v} start $n >/dev/null; done""",
            "memory": f"for n in {changed}; do {v} setmem $n {LOWERED_MIB}M --live --config; done",
            "remove": f"for n in {removed}; do {v} destroy $n >/dev/null 2>&1; {v} undefine $n >/dev/null;"
            " done",
        }
        scripts["no-op"] = scripts["converge"]
        subprocess.run(["bash", "-c", scripts[scenario]], check=True)


class Ansible(Tool):
    """community.libvirt.virt from the ansible package, in its own virtualenv."""

    label = "Ansible + community.libvirt"
    prefix = "vrcmp-ansible-"

    def __init__(self, work: Path) -> None:
        self.dir = work / "ansible"
        self.dir.mkdir(parents=True, exist_ok=True)
        version = subprocess.run(
            [str(ANSIBLE_VENV / "bin" / "ansible"), "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        self.label = (
            f"Ansible ({version.split('[')[-1].rstrip(']').replace('core ', 'core ')}) + community.libvirt"
        )

    def playbook(self, scenario: str) -> Path:
        python = ANSIBLE_VENV / "bin" / "python"
        keep = names(self.prefix)[CHANGED:] if scenario == "remove" else names(self.prefix)
        lowered = running(self.prefix)[:CHANGED] if scenario == "memory" else []
        tasks: list[dict[str, Any]] = []
        if scenario == "remove":
            tasks += [
                {
                    "name": "stop removed domains",
                    "community.libvirt.virt": {"name": "{{ item }}", "state": "destroyed", "uri": URI},
                    "loop": names(self.prefix)[:CHANGED],
                },
                {
                    "name": "undefine removed domains",
                    "community.libvirt.virt": {"name": "{{ item }}", "command": "undefine", "uri": URI},
                    "loop": names(self.prefix)[:CHANGED],
                },
            ]
        else:
            # community.libvirt has no live memory change: its users redefine the XML (config only).
            xml = {name: domain_xml(name, LOWERED_MIB if name in lowered else MEMORY_MIB) for name in keep}
            tasks += [
                {
                    "name": "define domains",
                    "community.libvirt.virt": {"command": "define", "xml": "{{ item }}", "uri": URI},
                    "loop": [xml[name] for name in keep],
                },
                {
                    "name": "start domains",
                    "community.libvirt.virt": {"name": "{{ item }}", "state": "running", "uri": URI},
                    "loop": running(self.prefix),
                },
            ]
        play = [
            {
                "hosts": "localhost",
                "connection": "local",
                "gather_facts": False,
                "vars": {"ansible_python_interpreter": str(python)},
                "tasks": tasks,
            }
        ]
        path = self.dir / f"{scenario}.yml"
        path.write_text(json.dumps(play))
        return path

    def run(self, scenario: str) -> None:
        env = {
            **os.environ,
            "ANSIBLE_STDOUT_CALLBACK": "null",
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        }
        subprocess.run(
            [
                str(ANSIBLE_VENV / "bin" / "ansible-playbook"),
                "-i",
                "localhost,",
                str(self.playbook(scenario)),
            ],
            check=True,
            env=env,
            capture_output=True,
        )


# --------------------------------------------------------------------------------------- report


def measure(tool: Tool, scenario: str, repeat: int) -> tuple[list[float], int | None]:
    """Seconds of each timed run and the libvirt calls of the last; the no-op is sampled more.

    The no-op changes nothing, so after one preparation it is run again until NOOP_SAMPLES runs or
    NOOP_BUDGET seconds: a run of tens of milliseconds on a shared machine needs many samples.
    """
    times: list[float] = []
    calls = None
    for _ in range(repeat):
        tool.prepare(scenario)
        time.sleep(SETTLE)  # let freshly started guests finish their firmware's busy start-up
        spent = 0.0
        for sample in range(NOOP_SAMPLES if scenario == "no-op" else 1):
            if sample and spent > NOOP_BUDGET:
                break
            tool.reset()
            started = time.perf_counter()
            counted = tool.run(scenario)
            times.append(time.perf_counter() - started)
            spent += times[-1]
            calls = counted if counted is not None else calls
    cleanup(tool.prefix)
    return times, calls


def measured(results: dict[str, dict[str, tuple[list[float], int | None]]]) -> list[str]:
    """The scenarios every tool ran, in the usual order (``--scenarios`` may pick a few)."""
    return [s for s in SCENARIOS if all(s in scenarios for scenarios in results.values())]


def report(results: dict[str, dict[str, tuple[list[float], int | None]]], repeat: int) -> str:
    floor = "libvirt-python floor, one by one"
    ours = "virt-reconcile"
    shown = measured(results)
    lines = [
        "# Benchmarks: virt-reconcile side by side",
        "",
        f"Measured {datetime.now(UTC).date()} on one machine ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.freedesktop_os_release().get('PRETTY_NAME', platform.system())}, libvirt "
        f"{libvirt.getVersion() // 1_000_000}.{libvirt.getVersion() // 1000 % 1000}, "
        f"QEMU via {URI}), {COUNT} domains of type qemu without a guest OS, {RUNNING} running; "
        f"median of {repeat} runs (min–max), each {SETTLE:.0f} s after its preparation; the no-op, which "
        f"changes nothing, runs up to {NOOP_SAMPLES} times after each preparation. Ratios: to the "
        "one-by-one floor and to virt-reconcile.",
        "",
        "| tool | " + " | ".join(shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for tool, scenarios in results.items():
        cells = []
        for scenario in shown:
            times, calls = scenarios[scenario]
            median = statistics.median(times)
            base = statistics.median(results[floor][scenario][0]) if floor in results else None
            mine = statistics.median(results[ours][scenario][0]) if ours in results else None
            cell = f"{median:.2f} s ({min(times):.2f}–{max(times):.2f})"
            if base:
                cell += f"<br>{median / base:.2f}× floor"
            if mine and tool != ours:
                cell += f", {median / mine:.1f}× ours"
            if calls is not None:
                cell += f"<br>{calls} libvirt calls"
            cells.append(cell)
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Notes:",
        "- memory: virt-reconcile and the floor balloon live and persistently (`setMemoryFlags`); the virsh "
        "loop uses `virsh setmem --live --config`; community.libvirt has no memory operation, so its users "
        "redefine the XML with the new `currentMemory`, which changes the persistent config only (the "
        "running guests keep their memory until restarted).",
        "- no-op: the virsh loop checks each domain with `dominfo`/`domstate`; Ansible re-runs the same "
        "playbook; virt-reconcile observes every domain (one XML read each) and finds nothing to do.",
        "- virt-reconcile runs in process on a counting connection, with the CLI's parse cache (its files "
        "kept between runs, as the CLI keeps them) and nothing parsed in memory at the start of each timed "
        "run; its CLI adds about 0.3 s of Python start-up. It reads domain XML 8 at a time and runs the "
        "actions of each phase 8 at a time per host, as the floor's threads do.",
    ]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, dict[str, tuple[list[float], int | None]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tools = list(results)
    shown = measured(results)
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(tools)
    for index, tool in enumerate(tools):
        values = [statistics.median(results[tool][s][0]) for s in shown]
        ax.bar([x + index * width for x in range(len(shown))], values, width, label=tool)
    ax.set_xticks([x + width * (len(tools) - 1) / 2 for x in range(len(shown))], shown)
    ax.set_ylabel("seconds (median, log scale)")
    ax.set_yscale("log")
    ax.set_title(f"{COUNT} domains, {RUNNING} running, on one libvirtd")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default="virt-reconcile,floor1,floor8,virsh,ansible")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="a subset, e.g. no-op")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vr-compare-") as folder:
        work = Path(folder)
        available: dict[str, Callable[[], Tool]] = {
            "virt-reconcile": lambda: VirtReconcile(work),
            "floor1": lambda: Floor(1),
            "floor8": lambda: Floor(8),
            "virsh": lambda: VirshLoop(work),
            "ansible": lambda: Ansible(work),
        }
        results: dict[str, dict[str, tuple[list[float], int | None]]] = {}
        for key in args.tools.split(","):
            tool = available[key]()
            results[tool.label] = {}
            for scenario in args.scenarios.split(","):
                results[tool.label][scenario] = measure(tool, scenario, args.repeat)
                times = results[tool.label][scenario][0]
                print(f"{tool.label:<45} {scenario:<9} {statistics.median(times):7.2f} s", flush=True)
    text = report(results, args.repeat)
    out = Path(args.out)
    write_section(out, "compare", text)  # the fleet's section (bench_fleet.py) stays
    chart(results, out.with_suffix(".png"))
    print()
    print(text)


if __name__ == "__main__":
    main()
