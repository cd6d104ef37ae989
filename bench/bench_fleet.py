"""Fleet benchmark: 20 real libvirt daemons × 200 domains each, 20 ms round trip to every host.

Uses the fleet test tier's lab (``tests/fleetlab.py``, as root): one libvirtd session daemon per
host serving libvirt's test driver over its real remote protocol, each behind a proxy that delays
every chunk by half the round trip (the proxies run in a process of their own, as a network is not
inside the client). Prints, each the median of ``--repeat`` runs:

* virt-reconcile's first plan (hosts empty), apply (define and start every domain) and no-op plans
  of the whole fleet (the first after the apply, which parses every domain's new XML; then the
  steady one, with the default ``--host-parallel`` and with one lane per host), against one host's
  no-op plan (the goal: fleet ≤ 1.5× one host) and against the one-by-one floor: plain
  libvirt-python doing the same reads and writes host after host (open, list, one XMLDesc per
  domain; defineXML + create per domain);
* apply of the fleet plus one hung host (a socket that accepts and never answers), against the
  hung host's connect timeout plus the live fleet's apply (the goal: within that sum).

The floor is measured in the first round only: it is round trips one after another (minutes at
this size), steady from run to run. ``--plot FILE`` draws the figures as a bar chart (matplotlib,
from ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from pathlib import Path

import libvirt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import write_section

from reconciler.cli.main import main
from reconciler.libvirtxml.parse import forget_parsed
from tests.fleetlab import ALLOW_SOCKET_ENV, FleetLab, LabHost

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
CONNECT_TIMEOUT = 5  # seconds: the hung host's connect timeout in the hung-host figure
FIRST_NOOP = "first no-op plan after the apply"
NOOP = "no-op plan"
NOOP_ONE_LANE_EACH = "no-op plan, one lane per host"
ONE_HOST = "one host: no-op plan"
FLOORS = {
    "first plan": "floor: first plan (read, host after host)",
    "apply": "floor: apply (host after host)",
    NOOP: "floor: no-op plan (read, host after host)",
}


def domain_doc(name: str, host: str, state: str = "running") -> dict:
    """One small Domain manifest."""
    return {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Domain",
        "metadata": {"name": name, "host": host},
        "spec": {"vcpus": 1, "memory": "64MiB", "state": state},
    }


def write_manifests(
    root: Path, hosts: list[LabHost], domains: int, *, hung: str | None = None, state: str = "running"
) -> None:
    """A Host per lab host (and the hung one), ``domains`` Domains per live host in ``state``."""
    docs: list[dict] = [
        host.document(capacity={"cpus": 4096, "memory": "16TiB"}, timeouts={"connect": f"{CONNECT_TIMEOUT}s"})
        for host in hosts
    ]
    if hung is not None:
        docs.append(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Host",
                "metadata": {"name": "hung"},
                "spec": {"uri": hung, "timeouts": {"connect": f"{CONNECT_TIMEOUT}s"}},
            }
        )
    (root / "hosts.yaml").write_text(yaml.safe_dump_all(docs))
    for host in hosts:
        body = [domain_doc(f"{host.name}-vm-{index:03d}", host.name, state) for index in range(domains)]
        (root / f"{host.name}.yaml").write_text(yaml.safe_dump_all(body))


def cli(*args: str) -> tuple[int, float, str]:
    """Run the CLI in-process (as a new process would: nothing parsed in memory); exit code, seconds
    and what it printed."""
    forget_parsed()
    started = time.perf_counter()
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    return code, time.perf_counter() - started, out.getvalue()


def reset(hosts: list[LabHost]) -> None:
    """Every domain of the lab hosts destroyed and undefined (directly, without the proxy)."""

    def clear(host: LabHost) -> None:
        for dom in host.connection().listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefine()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(clear, hosts))


def floor_read(hosts: list[LabHost]) -> float:
    """libvirt-python, host after host: open, node info, list, one XMLDesc per domain."""
    started = time.perf_counter()
    for host in hosts:
        conn = libvirt.open(host.uri)
        conn.getInfo()
        for dom in conn.listAllDomains():
            dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.close()
    return time.perf_counter() - started


def floor_apply(hosts: list[LabHost], domains: int) -> float:
    """libvirt-python, host after host: defineXML and create for every domain."""
    started = time.perf_counter()
    for host in hosts:
        conn = libvirt.open(host.uri)
        for index in range(domains):
            name = f"{host.name}-vm-{index:03d}"
            xml = (
                f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
                "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
            )
            conn.defineXML(xml).create()
        conn.close()
    return time.perf_counter() - started


def median(samples: list[float]) -> float:
    """The median of the samples."""
    return statistics.median(samples)


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    """A fresh manifest folder, with the state folder (parse cache, keys) beside it."""
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as name:
        root = Path(name)
        (root / "manifests").mkdir()
        os.environ["VIRT_RECONCILE_STATE_DIR"] = str(root / "state")
        yield root / "manifests"


def measure(lab: FleetLab, domains: int, repeat: int) -> dict[str, float]:
    """Every figure, each the median of ``repeat`` runs."""
    hosts, figures = lab.hosts, {}
    samples: dict[str, list[float]] = {}

    def sample(name: str, run: Callable[[], float]) -> None:
        samples.setdefault(name, []).append(run())

    for round_ in range(repeat):
        floors = round_ == 0  # the floor is round trips one after another: steady, and minutes long
        reset(hosts)
        with folder() as fleet:
            write_manifests(fleet, hosts, domains)
            sample("first plan", lambda: expect(cli("plan", str(fleet)), 2))
            if floors:
                sample("floor: first plan (read, host after host)", lambda: floor_read(hosts))
            sample("apply", lambda: expect(cli("apply", str(fleet), "--auto-approve"), 0))
            # The first no-op after an apply parses every domain's new XML; later ones find it cached.
            sample(FIRST_NOOP, lambda: expect(cli("plan", str(fleet)), 0))
            sample(NOOP, lambda: expect(cli("plan", str(fleet)), 0))
            one_lane_each = ("plan", str(fleet), "--host-parallel", str(len(hosts)))
            sample(NOOP_ONE_LANE_EACH, lambda args=one_lane_each: expect(cli(*args), 0))
            sample(ONE_HOST, lambda: expect(cli("plan", str(fleet), "--host", hosts[0].name), 0))
            if floors:
                sample("floor: no-op plan (read, host after host)", lambda: floor_read(hosts))
            # A hung host holds new domains back (one may still run there), so the hung-host figure
            # changes domains that exist: every domain stopped, with and without a hung host.
            write_manifests(fleet, hosts, domains, state="stopped")
            sample("apply: stop every domain", lambda: expect(cli("apply", str(fleet), "--auto-approve"), 0))
            write_manifests(fleet, hosts, domains)
            expect(cli("apply", str(fleet), "--auto-approve"), 0)  # running again
            write_manifests(fleet, hosts, domains, hung=lab.hung().uri, state="stopped")
            # exit 1: the hung host fails; every live host is applied
            stop_all = ("apply", str(fleet), "--auto-approve")
            sample("apply with one hung host: stop every domain", lambda args=stop_all: expect(cli(*args), 1))
        if floors:
            reset(hosts)
            sample("floor: apply (host after host)", lambda: floor_apply(hosts, domains))
    for name, values in samples.items():
        figures[name] = median(values)
    return figures


def expect(result: tuple[int, float, str], code: int) -> float:
    """The run's seconds, once its exit code is the one expected."""
    got, seconds, out = result
    if got != code:
        raise SystemExit(f"benchmark run exited {got}, expected {code}:\n{out[-3000:]}")
    return seconds


def goal_lines(figures: dict[str, float]) -> list[tuple[str, float]]:
    """The ratios the fleet goal is about: each no-op plan of the fleet against one host's."""
    one = figures[ONE_HOST]
    return [
        ("fleet no-op plan / one host's (default --host-parallel 16)", figures[NOOP] / one),
        ("fleet no-op plan / one host's (one lane per host)", figures[NOOP_ONE_LANE_EACH] / one),
        ("first no-op after the apply / one host's", figures[FIRST_NOOP] / one),
    ]


def report(figures: dict[str, float], hosts: int, domains: int, latency: float) -> None:
    """Print the figures and the ratios the goals are about."""
    print(f"fleet: {hosts} hosts x {domains} domains, {latency:g} ms round trip to each host")
    for name, seconds in figures.items():
        print(f"  {name:45s} {seconds:8.2f} s")
    for name, ratio in goal_lines(figures):
        print(f"  {name:62s} {ratio:6.2f}x  (goal <= 1.5x)")
    for name, floor in FLOORS.items():
        print(f"  {name + ' / floor':45s} {figures[name] / figures[floor]:8.2f}x")
    bound = CONNECT_TIMEOUT + figures["apply: stop every domain"]
    hung = figures["apply with one hung host: stop every domain"]
    print(
        f"  apply with one hung host: {hung:.2f} s; goal: within connect timeout + live apply = {bound:.2f} s"
    )


def markdown(figures: dict[str, float], hosts: int, domains: int, latency: float, plot_name: str) -> str:
    """The figures as the fleet section of docs/benchmarks.md."""
    hung = figures["apply with one hung host: stop every domain"]
    rows = [f"| {name} | {seconds:.2f} s |" for name, seconds in figures.items()]
    ratios = [f"{name} {figures[name] / figures[floor]:.2f}×" for name, floor in FLOORS.items()]
    goals = [f"- {name}: **{ratio:.2f}×** (goal ≤ 1.5×)." for name, ratio in goal_lines(figures)]
    return "\n".join(
        [
            "## A fleet",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} by `bench/bench_fleet.py` (as root) on the same kind of "
            f"machine: {hosts} libvirtd daemons (the fleet tier's lab: libvirt's test driver behind the real "
            f"remote protocol), {domains} domains each, {latency:g} ms of round trip to every host "
            "(a proxy, in a process of its own, delays each chunk by half of it). Median of 3 runs; the "
            "floor (libvirt-python, host after host, one call after another) once. The no-op plan is "
            "the steady one (the domains' XML parsed by an earlier run, as every run after the first "
            "finds it); the first no-op after the apply parses every domain's new XML.",
            "",
            "| run | wall time |",
            "|---|---|",
            *rows,
            "",
            *goals,
            f"- With the default `--host-parallel 16`, {hosts} hosts are worked in two waves; one lane "
            "per host (`--host-parallel` at least the number of hosts) works them all at once. The "
            f"lab's {hosts} daemons and its proxy process share this machine's CPUs with the client, "
            "which real hypervisors would not: the fleet's figures move by ±0.2 s from run to run.",
            f"- Against the one-by-one floor: {', '.join(ratios)}.",
            f"- Stopping every domain with one hung host in the fleet (a socket that accepts and never "
            f"answers, connect timeout {CONNECT_TIMEOUT} s): {hung:.2f} s, against the timeout plus the "
            f"live fleet's work, {CONNECT_TIMEOUT + figures['apply: stop every domain']:.2f} s; the hung "
            "host fails alone (exit 1).",
            "",
            f"![fleet benchmark]({plot_name})",
        ]
    )


def plot(figures: dict[str, float], path: Path) -> None:
    """A horizontal bar chart of the figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figures)
    fig, axis = plt.subplots(figsize=(9, 4.5))
    colours = ["#999999" if name.startswith("floor") else "#3b7dd8" for name in names]
    axis.barh(names, [figures[name] for name in names], color=colours)
    axis.invert_yaxis()
    axis.set_xlabel("seconds (median)")
    axis.set_title("A fleet at 20 ms round trip: virt-reconcile (blue), floor (grey)", fontsize=10)
    for index, name in enumerate(names):
        axis.text(figures[name], index, f" {figures[name]:.2f}s", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run() -> None:
    """Parse the options, start the lab, measure, print (and plot)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write a bar chart (PNG) of the figures here")
    parser.add_argument(
        "--doc", type=Path, help="write the figures as the fleet section of this markdown file"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_fleet: skipped (the fleet lab starts libvirtd daemons as another user: run as root)")
        return
    os.environ.update(ALLOW_SOCKET_ENV)
    with FleetLab(hosts=args.hosts, latency_ms=args.latency_ms) as lab:
        figures = measure(lab, args.domains, args.repeat)
    report(figures, args.hosts, args.domains, args.latency_ms)
    if args.plot is not None:
        plot(figures, args.plot)
        print(f"  plot: {args.plot}")
    if args.doc is not None:
        plot_name = args.plot.name if args.plot is not None else "benchmarks-fleet.png"
        write_section(
            args.doc, "fleet", markdown(figures, args.hosts, args.domains, args.latency_ms, plot_name)
        )
        print(f"  written: {args.doc}")


if __name__ == "__main__":
    run()
