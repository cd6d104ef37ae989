"""The hosts of one pass, worked side by side: connections opened, locked and observed from a
bounded pool, kept open until the pass ends, and each host's failure kept to that host.

Hosts reached in-process (the sandbox, ``test:///``) answer as function calls and take their lock
when opened, so they are opened one by one in one global order. Every other host is opened and
observed in the pool. The apply locks of the hosts a pass changes are taken in the pool too, none
waited for; when another run holds one, every lock taken is let go and all are taken one by one in
the global order (by hypervisor), waiting as needed, so two runs over overlapping hosts never wait
on each other in a circle. A host that does not answer fails within its own timeouts (the
adapter's connect deadline and libvirt keepalive), never holding up the others.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TypeVar

from reconciler.engine.hypervisor import HostEnvironment, HostObservation, Hypervisor
from reconciler.engine.preflight import wanted_paths, wanted_secrets
from reconciler.errors import HostError, LockBusyError
from reconciler.spec.models import Domain, Host

T = TypeVar("T")

#: Opens a host: ``connect(host, write)``. It must not take the host's apply lock (the sessions take
#: it through :meth:`Hypervisor.exclusive`, in order), except for a host reached in-process, whose
#: lock guards the state it is opened from.
Connector = Callable[[Host, bool], AbstractContextManager[Hypervisor]]

DEFAULT_HOST_PARALLEL = 16


def in_key_order(hosts: Iterable[Host]) -> list[Host]:
    """Hosts in the one global order every run takes their locks in."""
    return sorted(hosts, key=lambda host: host.spec.address.hypervisor_key)


class HostSessions:
    """The hosts of one pass: connections kept open from observation to the end of apply, and the
    hosts that could not be reached, each with its error (one host's failure spares the others)."""

    def __init__(self, connect: Connector, *, write: bool, parallel: int = DEFAULT_HOST_PARALLEL) -> None:
        self._connect = connect
        self._write = write
        self._parallel = max(1, parallel)
        self._pool: ThreadPoolExecutor | None = None
        self._stacks: dict[str, ExitStack] = {}  # each host's connection and lock, closed together
        self._locks: dict[str, ExitStack] = {}  # each locked host's lock (inside its stack)
        self.hypervisors: dict[str, Hypervisor] = {}
        self.observed: dict[str, HostObservation] = {}
        self.errors: dict[str, HostError] = {}
        self.late_errors: dict[str, HostError] = {}  # failed when its connection closed

    @property
    def unobservable(self) -> dict[str, str]:
        """Each host that could not be observed, with why."""
        return {name: str(error) for name, error in self.errors.items()}

    def __enter__(self) -> HostSessions:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.each(list(self._stacks), lambda name: self._stacks[name].close())  # side by side too
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------------------ side by side

    def each(self, names: Sequence[str], work: Callable[[str], T]) -> dict[str, T]:
        """``work(name)`` for every name, side by side from the pool (one name: in this thread);
        the results in the order of ``names``. ``work`` handles its own host's errors."""
        if len(names) <= 1 or self._parallel == 1:
            return {name: work(name) for name in names}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="host")
        futures: dict[str, Future[T]] = {name: self._pool.submit(work, name) for name in names}
        # Every host's work ends before an error of one is raised: the caller then closes every host,
        # which must not pull a lock or a connection from under a host still applying.
        try:
            wait(futures.values())
        except BaseException:  # Ctrl-C: no host is closed under work still running
            for future in futures.values():
                future.cancel()
            wait(futures.values())
            raise
        return {name: future.result() for name, future in futures.items()}

    # ---------------------------------------------------------------------------------- opening

    def open(self, hosts: Sequence[Host]) -> None:
        """Connect to the hosts this pass may change, lock them when writing, and observe them;
        the connections stay open until the sessions close.

        Hosts reached over a connection are opened side by side first; then every host is taken
        in the one global order: an in-process host is opened (and so locked) and observed there,
        a connected one locked. So every run locks in that order, whatever the mix of hosts, and
        two runs never wait on each other in a circle. The connected hosts are then observed side
        by side.
        """
        ordered = in_key_order(hosts)
        remote = [host.name for host in ordered if not host.spec.address.in_process]
        by_name = {host.name: host for host in ordered}
        opened = self.each(remote, lambda name: self._enter(by_name[name]))
        if self._write and len(remote) == len(ordered) > 1:
            self._lock_side_by_side(opened)
        else:
            for host in ordered:
                if host.spec.address.in_process:
                    self._open_one(host)  # instant, and locked while opened
                elif (
                    (hypervisor := opened[host.name]) is not None
                    and self._write
                    and not self._lock(host.name, hypervisor)
                ):
                    opened[host.name] = None
        live = {name: hypervisor for name, hypervisor in opened.items() if hypervisor is not None}
        for name, seen in self.each(list(live), lambda name: self._observe(name, live[name])).items():
            if seen is not None:
                self.observed[name] = seen
                self.hypervisors[name] = live[name]

    def look_at(self, hosts: Sequence[Host]) -> None:
        """Observe hosts this pass will not change (read only, each closed at once), side by side."""
        by_name = {host.name: host for host in hosts}

        def look(name: str) -> HostObservation | HostError:
            try:
                with self._connect(by_name[name], False) as hypervisor:
                    return hypervisor.observe()
            except HostError as err:
                return err

        for name, seen in self.each(list(by_name), look).items():
            if isinstance(seen, HostError):
                self.errors[name] = seen
            else:
                self.observed[name] = seen

    def _open_one(self, host: Host) -> None:
        """Open, lock and observe one host in this thread."""
        hypervisor = self._enter(host)
        if hypervisor is None or (self._write and not self._lock(host.name, hypervisor)):
            return
        seen = self._observe(host.name, hypervisor)
        if seen is not None:
            self.observed[host.name] = seen
            self.hypervisors[host.name] = hypervisor

    def _enter(self, host: Host) -> Hypervisor | None:
        """Open a host's connection, closed when the sessions close; None (the error kept) if it
        cannot be opened."""
        try:
            context = self._connect(host, self._write)
            hypervisor = context.__enter__()
        except HostError as err:
            self.errors[host.name] = err
            return None
        stack = self._stacks[host.name] = ExitStack()  # one key per host: safe from pool threads
        stack.push(self._closer(host.name, context))
        return hypervisor

    def _lock(self, name: str, hypervisor: Hypervisor, *, wait: bool = True) -> bool | None:
        """Take a host's apply lock until the sessions close: True; False (the error kept) if it
        cannot be taken; None, not waiting (``wait=False``), while another run holds it."""
        lock = ExitStack()
        self._stacks[name].enter_context(lock)  # released with the host, unless let go before
        try:
            lock.enter_context(hypervisor.exclusive(wait=wait))
        except LockBusyError as err:
            if not wait:
                return None
            self.errors[name] = err
            return False
        except HostError as err:
            self.errors[name] = err
            return False
        self._locks[name] = lock
        return True

    def _lock_side_by_side(self, opened: dict[str, Hypervisor | None]) -> None:
        """Take the opened hosts' apply locks side by side, none waited for: a host that does not
        answer fails alone, within its own timeouts, instead of holding up the hosts after it.
        When another run holds one, every lock taken is let go and all are taken again one by one
        in the global order (``opened`` is in it), waiting as needed: a run then waits only while
        holding the locks before the one it waits for, so two runs never wait in a circle."""
        live = {name: hypervisor for name, hypervisor in opened.items() if hypervisor is not None}
        taken = self.each(list(live), lambda name: self._lock(name, live[name], wait=False))
        if None in taken.values():
            for lock in self._locks.values():
                lock.close()
            self._locks.clear()
            taken = {name: taken[name] is not False and self._lock(name, live[name]) for name in live}
        for name, locked in taken.items():
            if not locked:
                opened[name] = None

    def _observe(self, name: str, hypervisor: Hypervisor) -> HostObservation | None:
        """A host's observation; None (the error kept) if it cannot be made."""
        try:
            return hypervisor.observe()
        except HostError as err:
            self.errors[name] = err
            return None

    # ---------------------------------------------------------------------------------- asking

    def environment(
        self, name: str, domains: Sequence[Domain], folders: Collection[str] = ()
    ) -> HostEnvironment:
        """What the pre-flight needs of an open host: its networks, bridges, the domains' files and
        password files (and the filesystems of its pools' ``folders``, for the storage rules).
        A host that cannot say reports everything as not checked (the plan still shows it)."""
        try:
            hypervisor, secrets = self.hypervisors[name], wanted_secrets(domains)
            if not (secrets or folders):  # the common case: only files
                return hypervisor.environment(wanted_paths(domains))
            return hypervisor.environment(wanted_paths(domains), secrets=secrets, folders=folders)
        except HostError as err:
            return HostEnvironment(unchecked=(f"the host could not be asked: {err}",))

    def _closer(
        self, name: str, context: AbstractContextManager[Hypervisor]
    ) -> Callable[[type[BaseException] | None, BaseException | None, object], bool]:
        """An exit callback that records a host error raised while closing (a sandbox saving its state)."""

        def close(kind: type[BaseException] | None, error: BaseException | None, trace: object) -> bool:
            try:
                return bool(context.__exit__(kind, error, trace))  # type: ignore[arg-type]
            except HostError as err:
                self.late_errors[name] = err
                return False

        return close


@contextmanager
def no_lock() -> Iterator[None]:
    """The lock of a host that needs none (a read-only view, a fake in tests)."""
    yield
