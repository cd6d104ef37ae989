"""A host that never answers fails alone within its connect timeout (and is not dialled again while
an earlier attempt still waits); hosts picked by labels (``--selector``/``-l``) with or without
``--host``; ``--host-parallel`` takes whole numbers of 1 or more.

The only time limits here turn a hang into a failure; they are far above what a run takes.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.cli.main import main
from tests.helpers import Run, cli, domain_yaml, host_yaml, write

ALLOW_SOCKET = ("--allow-uri-param", "socket")
NO_HANG = 60.0  # seconds: a run past this hangs (a 1 s connect timeout was not kept)


class HungSocket:
    """A unix socket that accepts every connection, never answers and never closes one (a hung
    libvirtd), until :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(8)
        threading.Thread(target=self._accept, name="hung-socket", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    client.close()
                    return
                self.clients.append(client)

    def close(self) -> None:
        """Stop listening and hang up on every client: a libvirt open still waiting ends. (Closing
        the listening socket alone would not wake the thread blocked in ``accept``, which would go
        on accepting.)"""
        with self._lock:
            self._closed = True
            for client in self.clients:
                client.close()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[HungSocket]:
    server = HungSocket(tmp_path / "hung.sock")
    yield server
    server.close()


def within_deadline(run: Callable[[], Run]) -> Run:
    """``run()`` in a thread; a failure rather than a hang when it does not return in NO_HANG s."""
    done: list[Run] = []
    thread = threading.Thread(target=lambda: done.append(run()), daemon=True)
    thread.start()
    thread.join(NO_HANG)
    if not done:
        pytest.fail(f"the run did not return within {NO_HANG:.0f} s")
    return done[0]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + NO_HANG
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def hung_host(path: Path) -> str:
    return (
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hung}\nspec:\n"
        f"  uri: 'test+unix:///default?socket={path}'\n"
        "  capacity: {cpus: 16, memory: 64GiB}\n"
        "  timeouts: {connect: 1s}\n"
    )


@pytest.fixture
def beside_a_hung_host(tmp_path: Path, hung: HungSocket) -> Path:
    """Manifests: sandbox hv1 whose domain ``web`` was applied and now wants 2 vCPUs, and a hung
    host ``hung`` with a domain of its own."""
    root = tmp_path / "manifests"
    write(root, "hosts.yaml", host_yaml())
    write(root, "domains.yaml", domain_yaml("web", host="hv1"))
    assert cli("apply", str(root), "--auto-approve").code == 0
    write(root, "hosts.yaml", host_yaml() + "---\n" + hung_host(hung.path))
    write(
        root,
        "domains.yaml",
        domain_yaml("web", host="hv1", vcpus=2) + "---\n" + domain_yaml("db", host="hung"),
    )
    return root


def plan_json(root: Path, *extra: str) -> tuple[int, dict]:
    result = within_deadline(lambda: cli("plan", str(root), *ALLOW_SOCKET, "--format", "json", *extra))
    assert result.out.strip(), result.err
    return result.code, json.loads(result.out)


def test_a_host_that_never_answers_fails_alone_within_its_connect_timeout(beside_a_hung_host: Path, hung):
    code, document = plan_json(beside_a_hung_host)
    assert code == 1
    [error] = document["hosts"]["hung"]["errors"]
    assert error.startswith("hung: cannot connect to test+unix:///default?socket=")
    assert error.endswith(": no answer within 1s")
    hv1 = [(a["action"], a["domain"]) for a in document["actions"] if a["host"] == "hv1"]
    assert hv1 == [("update", "web")]
    assert document["hosts"]["hv1"]["errors"] == []
    assert len(hung.clients) <= 1  # one connection tried, left waiting


def test_the_text_plan_names_the_silent_host_and_plans_the_other(beside_a_hung_host: Path):
    result = within_deadline(lambda: cli("plan", str(beside_a_hung_host), *ALLOW_SOCKET))
    assert result.code == 1
    assert "no answer within 1s" in result.out
    assert "~ update web" in result.out


def test_a_second_open_while_the_first_still_waits_is_refused_at_once(beside_a_hung_host: Path, hung):
    first_code, _ = plan_json(beside_a_hung_host)
    assert first_code == 1
    wait_until(lambda: len(hung.clients) == 1, "the first attempt reached the socket")
    code, document = plan_json(beside_a_hung_host)
    assert code == 1
    [error] = document["hosts"]["hung"]["errors"]
    assert ": an earlier attempt to connect still has no answer (for " in error
    assert [(a["action"], a["domain"]) for a in document["actions"]] == [("update", "web")]
    assert len(hung.clients) == 1  # the hung host was not dialled a second time
    hung.close()  # the first attempt ends: the next open is a new attempt, refused by the socket

    def refused_anew() -> bool:
        [error] = plan_json(beside_a_hung_host)[1]["hosts"]["hung"]["errors"]
        return "earlier attempt" not in error and "no answer within" not in error

    wait_until(refused_anew, "a fresh attempt once the first one ended")


def test_an_open_left_waiting_for_ever_does_not_lock_the_host_out(hung, monkeypatch):
    """An abandoned open may wait for ever (a peer that vanished without a word) while the host is
    back: after ``retry_after`` a new one is tried, up to STUCK_PER_URI left waiting at once."""
    from reconciler.adapters.libvirt import connections

    uri = f"test+unix:///default?socket={hung.path}"

    def refused(why: str) -> None:
        with pytest.raises(connections.OpenTimeout, match=re.escape(why)):
            connections.open_within(uri, 0.2, 5)

    refused("no answer within 0.2s")
    refused("an earlier attempt to connect still has no answer (for 0s; another in 30s)")
    monkeypatch.setattr(connections, "retry_after", lambda _connect: 0.0)
    monkeypatch.setattr(connections, "STUCK_PER_URI", 2)
    refused("no answer within 0.2s")  # dialled again
    wait_until(lambda: len(hung.clients) == 2, "a second attempt reached the socket")
    refused("2 earlier attempts to connect still have no answer; none more until one ends")
    assert len(hung.clients) == 2
    hung.close()  # both attempts end: the next open is a new attempt, refused by the socket
    wait_until(lambda: not connections._WAITING.get(uri), "the abandoned attempts ended")


def test_a_saved_plan_keeps_each_hosts_timeouts(tmp_path: Path):
    """``apply --plan`` connects to the hosts the saved plan names (``SavedHost.host``): with the
    Host's own timeouts, not the defaults (10 s to connect, 60 s per call)."""
    from reconciler.files.keys import verifying_key
    from reconciler.offline.savedplan import load_plan
    from reconciler.spec.manifests import load_manifests

    root = tmp_path / "manifests"
    write(root, "hosts.yaml", host_yaml() + "  timeouts: {connect: 2s, call: 5s}\n")
    write(root, "domains.yaml", domain_yaml("web", host="hv1"))
    saved = tmp_path / "plan.json"
    assert cli("plan", str(root), "--out", str(saved)).code == 2
    wanted = load_manifests(root).hosts["hv1"].spec.timeouts
    assert (wanted.connect, wanted.call) == (2.0, 5.0)
    assert load_plan(saved, verifying_key).hosts["hv1"].host("hv1").spec.timeouts == wanted


# ------------------------------------------------------------------------------------ selection

LABELS = {"hv1": "{role: web, zone: a}", "hv2": "{role: web, zone: b}", "hv3": "{role: db, zone: a}"}


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """Three sandbox hosts with labels, each wanting one domain ``web-HOST``."""
    root = tmp_path / "manifests"
    hosts = [
        host_yaml(name, state=f"state/{name}.xml").replace(
            f"metadata: {{name: {name}}}", f"metadata: {{name: {name}, labels: {labels}}}"
        )
        for name, labels in LABELS.items()
    ]
    write(root, "hosts.yaml", "---\n".join(hosts))
    write(root, "domains.yaml", "---\n".join(domain_yaml(f"web-{name}", host=name) for name in LABELS))
    return root


@pytest.mark.parametrize(
    ("options", "hosts"),
    [
        (["-l", "role=web"], ["hv1", "hv2"]),
        (["--selector", "role=web", "-l", "zone!=b"], ["hv1"]),
        (["-l", "role=web,zone=b"], ["hv2"]),
        (["-l", "role==db"], ["hv3"]),
        (["-l", "zone"], ["hv1", "hv2", "hv3"]),
        (["-l", "!gpu", "--host", "hv3"], ["hv3"]),
        (["--host", "hv3", "--host", "hv1", "-l", "zone=a"], ["hv1", "hv3"]),  # manifest order
        (["--host", "hv1", "--host", "hv2", "-l", "zone!=a"], ["hv2"]),
    ],
)
def test_plan_picks_hosts_by_label_and_name(labelled: Path, options: list[str], hosts: list[str]):
    code, document = plan_json(labelled, *options)
    assert code == 2  # a domain to define on each host planned
    assert list(document["hosts"]) == hosts
    assert sorted(a["host"] for a in document["actions"] if a["action"] == "define") == sorted(hosts)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["-l", "role=cache"], "no host matches the selector 'role=cache' among the hosts of the manifests"),
        (["-l", "role=web", "-l", "zone=c"], "no host matches the selector 'role=web,zone=c'"),
        (["--host", "hv3", "-l", "role=web"], "no host matches the selector 'role=web' among the hosts hv3"),
    ],
)
@pytest.mark.parametrize(
    "command", [["plan"], ["apply", "--auto-approve"], ["snapshot", "--out", "snap.json"]]
)
def test_a_selector_that_matches_no_host_is_an_error(
    labelled: Path, tmp_path: Path, command: list[str], options: list[str], message: str
):
    command = [part.replace("snap.json", str(tmp_path / "snap.json")) for part in command]
    result = cli(*command, str(labelled), *options)
    assert result.code == 1
    assert f"error: {message}" in result.err
    assert not (labelled / "state").exists() and not (tmp_path / "snap.json").exists()


def test_apply_and_snapshot_touch_only_the_selected_hosts(labelled: Path, tmp_path: Path):
    assert cli("apply", str(labelled), "--auto-approve", "-l", "role=db").code == 0
    assert sorted(path.name for path in (labelled / "state").glob("*.xml")) == ["hv3.xml"]
    snapshot = tmp_path / "snap.json"
    assert (
        cli("snapshot", str(labelled), "--out", str(snapshot), "-l", "zone=a", "--host-parallel", "1").code
        == 0
    )
    assert sorted(json.loads(snapshot.read_text())["hosts"]) == ["hv1", "hv3"]


def test_host_parallel_changes_nothing_but_how_many_at_once(labelled: Path):
    one = plan_json(labelled, "--host-parallel", "1")
    many = plan_json(labelled, "--host-parallel", "3")
    assert one == many == plan_json(labelled)


# ------------------------------------------------------------------------------------ usage errors

COMMANDS = [["plan"], ["apply"], ["snapshot", "--out", "x.json"], ["daemon", "--source", "x"]]


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of a usage error (exit 2) for ``argv``."""
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        ("role=web,", "has an empty requirement"),
        ("role in (web)", "label key 'role in (web)' is not a name"),
        ("role=no spaces", "label value 'no spaces' is not"),
        ("=web", "label key '' is not a name"),
    ],
)
def test_a_malformed_selector_is_a_usage_error(command, selector: str, problem: str, capsys):
    err = usage_error([*command, "-l", selector], capsys)
    assert f"argument --selector/-l: selector {selector!r}" in err
    assert problem in err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_host_parallel_takes_a_whole_number_of_1_or_more(command, value: str, capsys):
    err = usage_error([*command, f"--host-parallel={value}"], capsys)
    assert f"argument --host-parallel: {value!r} is not a whole number of 1 or more" in err
