"""Start-up benchmark: wall time of short CLI commands, each run as a fresh process.

Runs ``virt-reconcile --version``, ``validate manifests`` and ``plan manifests`` ``--runs`` times
each on a copy of the example manifests in a temporary folder, made a git repository as a real
manifests checkout is (``--no-git``: a plain folder), so ``plan`` pays for the revision and root
identity it records. One unmeasured run of each comes first: it fills the parse cache, as any
earlier run on unchanged manifests has. Prints per command the median, p90 and fastest wall time
and their ratio to the goal (``--goal``, 0.15 s), then the import time of ``reconciler.cli`` alone
and, per command, the time it spends importing and the packages that cost the most (``python -X
importtime``, one run each).

Nothing is left behind: the parse cache, the state folder (plan signing key), the sandbox state and
the bytecode cache all live in the temporary folder. By default Python may write bytecode there
(``PYTHONPYCACHEPREFIX``), as an installed package has its ``.pyc`` files; ``--no-bytecode``
compiles every module from source on every run (what ``PYTHONDONTWRITEBYTECODE=1`` does to a
checkout), which is slower by the compile time of every module a command imports.

    .venv/bin/python bench/bench_startup.py [--runs 20] [--goal 0.15] [--no-git] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests"
COMMANDS: tuple[tuple[str, ...], ...] = (("--version",), ("validate", "manifests"), ("plan", "manifests"))
#: The exit codes each command may end with here: ``plan`` exits 2 when it has changes to show.
ACCEPTED = {"--version": {0}, "validate": {0}, "plan": {0, 2}}
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| +(\S+)$")


@dataclass(frozen=True)
class Timing:
    """Wall times of one command, in seconds."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p90(self) -> float:
        if len(self.times) < 2:
            return self.times[0]
        return statistics.quantiles(self.times, n=10, method="inclusive")[-1]

    @property
    def fastest(self) -> float:
        return min(self.times)


def cli_command() -> list[str]:
    """The console script next to this interpreter (as users run it), else ``python -m reconciler``."""
    script = Path(sys.executable).parent / "virt-reconcile"
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]


def environment(work: Path, *, bytecode: bool) -> dict[str, str]:
    """The environment of every measured process: caches and state inside ``work``, no colour."""
    env = dict(os.environ)
    env.update(
        VIRT_RECONCILE_CACHE_DIR=str(work / "cache"),
        VIRT_RECONCILE_STATE_DIR=str(work / "state"),
        NO_COLOR="1",
    )
    env.pop("FORCE_COLOR", None)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def make_example(work: Path, *, git: bool) -> Path:
    """A copy of the example manifests in ``work``, committed to a new git repository with ``git``."""
    checkout = work / "checkout"
    shutil.copytree(EXAMPLE, checkout / "manifests", ignore=shutil.ignore_patterns("state"))
    (checkout / ".gitignore").write_text("/manifests/state/\n")
    if git:
        identity = ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]
        for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "-m", "example"]):
            subprocess.run(["git", *command], cwd=checkout, check=True, capture_output=True)
    return checkout


def run_once(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall time of one run of ``command``; fails on an exit code the command should not have."""
    start = time.perf_counter()
    done = subprocess.run(
        command, check=False, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seconds = time.perf_counter() - start
    name = next(arg for arg in command if arg in ACCEPTED)
    if done.returncode not in ACCEPTED[name]:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr.decode()}")
    return seconds


def measure(command: list[str], cwd: Path, env: dict[str, str], runs: int) -> Timing:
    """``runs`` timed runs after one warm-up run (which fills the parse and bytecode caches)."""
    run_once(command, cwd, env)
    return Timing(tuple(run_once(command, cwd, env) for _ in range(runs)))


def cli_import_time(env: dict[str, str], runs: int) -> Timing:
    """How long ``import reconciler.cli`` takes in a fresh interpreter (what every command pays)."""
    code = "import time; t = time.perf_counter(); import reconciler.cli; print(time.perf_counter() - t)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        )
        times.append(float(done.stdout))
    return Timing(tuple(times))


def import_profile(
    args: tuple[str, ...], cwd: Path, env: dict[str, str]
) -> tuple[float, list[tuple[str, float]]]:
    """One run under ``-X importtime``: seconds spent importing, and the packages that cost the most
    (each module's own time, summed over its top-level package).

    ``-X importtime`` adds its own overhead, so these figures are somewhat above the true cost;
    they show where the time goes, the wall times above what it comes to.
    """
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "reconciler", *args],
        check=False,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    packages: dict[str, int] = defaultdict(int)
    for line in done.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match is not None:  # each module's own time, summed per top-level package
            packages[match[3].split(".")[0]] += int(match[1])
    total = sum(packages.values())
    top = sorted(packages.items(), key=lambda item: -item[1])[:6]
    return total / 1e6, [(name, micros / 1e6) for name, micros in top]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (default: 20)")
    parser.add_argument("--goal", type=float, default=0.15, help="wall-time goal in seconds (default: 0.15)")
    parser.add_argument("--no-git", dest="git", action="store_false", help="the copy is not a git repository")
    parser.add_argument(
        "--no-bytecode", dest="bytecode", action="store_false", help="compile every module on every run"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vr-bench-startup-") as folder:
        work = Path(folder)
        checkout = make_example(work, git=options.git and shutil.which("git") is not None)
        env = environment(work, bytecode=options.bytecode)
        cli = cli_command()
        where = "a git checkout" if (checkout / ".git").exists() else "a plain folder"
        bytecode = "bytecode cached" if options.bytecode else "no bytecode cache"
        print(f"{' '.join(cli)} in {where}, {bytecode}; {options.runs} runs each, goal {options.goal:.3f} s")
        print(f"{'command':<22} {'median':>8} {'p90':>8} {'fastest':>8} {'median/goal':>12} {'p90/goal':>9}")
        for args in COMMANDS:
            timing = measure([*cli, *args], checkout, env, options.runs)
            print(
                f"{' '.join(args):<22} {timing.median:>7.3f}s {timing.p90:>7.3f}s {timing.fastest:>7.3f}s"
                f" {timing.median / options.goal:>11.2f}x {timing.p90 / options.goal:>8.2f}x"
            )
        imports = cli_import_time(env, options.runs)
        milliseconds = f"median {imports.median * 1000:.1f} ms, p90 {imports.p90 * 1000:.1f} ms"
        print(f"\nimport reconciler.cli alone: {milliseconds}")
        print("\nimports per command (python -X importtime, one run; inflated by the measurement):")
        for args in COMMANDS:
            total, top = import_profile(args, checkout, env)
            shown = ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in top)
            print(f"  {' '.join(args):<20} {total * 1000:6.1f} ms: {shown}")


if __name__ == "__main__":
    main()
