"""The servers of one app: started by ``depends_on``, stopped in reverse.

A server starts as soon as the servers it depends on are ready, and stops
once its dependents have stopped; independent servers do both concurrently,
with no barrier per level (go-zero's ServiceGroup waits for a whole phase).
A :class:`~quiesce.servers.contract.StopsLast` server (the admin server)
stops after all the others, whatever ``depends_on`` says.
Each stop is bounded by the server's own timeout and by what is left of the
app's stop budget; what a server cut, or failed to stop, lands in the step's
record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from quiesce import ordering
from quiesce.budget import StopBudget
from quiesce.errors import StartError, describe
from quiesce.observe import Observer
from quiesce.phases import PhaseRecord
from quiesce.servers.contract import (
    Accountable,
    CountsInFlight,
    ExitsOnItsOwn,
    Readiness,
    Server,
    StopsLast,
    own_stop_timeout,
)

__all__ = ["ServerGroup"]


class ServerGroup:
    """Start, drain, stop and watch a set of :class:`~quiesce.Server` objects as one."""

    def __init__(self, servers: Sequence[Server] = (), observer: Observer | None = None) -> None:
        self.servers = list(servers)
        self.observer = observer or Observer()
        #: Servers whose start has begun and whose stop has not: what a stop must stop.
        self.started: list[Server] = []
        self._watchers: list[asyncio.Task[None]] = []

    def graph(self) -> dict[str, list[str]]:
        """Each server's name with the names it depends on."""
        return ordering.graph_of(self.servers)

    def in_flight(self) -> dict[str, int]:
        """Work in flight now, by started server (those that can tell)."""
        return {s.name: s.in_flight for s in self.started if isinstance(s, CountsInFlight)}

    def accounts(self) -> dict[str, dict[str, int | list[str]]]:
        """What each accounting server (a consumer) did with the work it took, by name."""
        return {s.name: s.account() for s in self.servers if isinstance(s, Accountable)}

    def readiness(self) -> dict[str, bool]:
        """Whether each started server that can tell is ready now, by name."""
        return {s.name: s.ready for s in self.started if isinstance(s, Readiness)}

    def endpoints(self) -> tuple[str, ...]:
        """The endpoints of the started servers, in start order."""
        return tuple(ep for s in self.started for ep in s.endpoints())

    async def start(self, rec: PhaseRecord, budget: float) -> None:
        """Start every server once its dependencies are ready, all within ``budget`` seconds.

        At the budget, each server not yet ready is named as cut on ``rec``.

        Raises:
            StartError: a server failed to start; it names the server. Every
                adapter raises one itself; what a server of the user's raises
                otherwise is wrapped into one.

        """
        by_name = {s.name: s for s in self.servers}
        ready: set[str] = set()

        async def start_server(name: str) -> None:
            server = by_name[name]
            rec.waited_for.append(f"server {name}")
            self.started.append(server)  # a start cut by cancellation is stopped too
            try:
                await server.start()
            except StartError:
                self.started.remove(server)
                raise
            except Exception as exc:  # not an adapter's: the contract says StartError
                self.started.remove(server)
                raise StartError(f"server {name!r}", exc) from exc
            ready.add(name)

        try:
            async with asyncio.timeout(budget):
                await ordering.walk(self.graph(), start_server)
        except TimeoutError:
            for server in self.servers:
                if server.name not in ready:
                    state = "starting" if server in self.started else "waiting for its dependencies"
                    rec.timed_out(
                        f"server {server.name} (not ready within {round(budget, 2):g}s, {state})"
                    )

    async def drain(self, rec: PhaseRecord) -> None:
        """Tell every started server to go not-ready while it keeps serving."""
        await _each(rec, self.started, lambda s: s.drain())

    async def stop(self, rec: PhaseRecord, budget: StopBudget) -> None:
        """Stop the started servers, dependents first, each within its share of ``budget``."""
        started = {s.name: s for s in self.started}
        graph = {n: [d for d in deps if d in started] for n, deps in self.graph().items()}
        graph = {n: deps for n, deps in graph.items() if n in started}

        async def stop_server(name: str) -> None:
            server = started[name]
            timeout, hard = budget.server(own_stop_timeout(server))
            load = server.in_flight if isinstance(server, CountsInFlight) else None
            rec.waited_for.append(
                f"server {name}" + ("" if load is None else f" ({load} in flight)")
            )
            self.observer.server_stop_began(name, load)
            cut: Sequence[str] | None = None
            try:
                async with asyncio.timeout(hard):
                    cut = await server.stop(timeout)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the stop itself is being forced
                # A cancellation leaking out of the adapter is its failure, not ours to hide.
                rec.error(f"server {name}", RuntimeError("stop() was cancelled from within"))
            except TimeoutError:
                rec.timed_out(f"server {name} (stop did not return within {timeout:.3g}s)")
            except Exception as exc:
                rec.error(f"server {name}", exc)
            else:
                for item in cut or ():
                    rec.timed_out(f"server {name}: {item}")
            left = server.in_flight if isinstance(server, CountsInFlight) else None
            self.observer.server_stop_ended(name, left, list(cut or ()))
            self.started.remove(server)

        last = {n for n, s in started.items() if isinstance(s, StopsLast) and s.stops_last}
        await ordering.walk(_last_after_the_rest(ordering.reverse(graph), last), stop_server)

    async def stop_at_once(self, rec: PhaseRecord) -> None:
        """Stop every started server with no grace (a forced end); each is named as cut."""
        servers, self.started = self.started, []
        rec.cut.extend(f"server {s.name} [stopped at once]" for s in servers)
        await _each(rec, servers, lambda s: s.stop(0))

    def watch(self, on_exit: Callable[[str, str], None]) -> None:
        """Call ``on_exit(name, cause)`` when a started server stops serving on its own.

        Only servers that can exit on their own (:class:`ExitsOnItsOwn`) are watched.
        """
        for server in self.started:
            if isinstance(server, ExitsOnItsOwn):
                watcher = _watch(server.name, server.wait_closed, on_exit)
                self._watchers.append(asyncio.create_task(watcher, name="quiesce watch"))

    def unwatch(self) -> None:
        """Stop watching: from here on, servers stop because they are told to."""
        for watcher in self._watchers:
            watcher.cancel()


def _last_after_the_rest(stop_graph: dict[str, list[str]], last: set[str]) -> dict[str, list[str]]:
    """The stop graph with each of ``last`` waiting for every other server.

    Only the edges within each set are kept: a server that stops last and
    depends on another would otherwise be waited for by it (a cycle).
    """
    rest = [n for n in stop_graph if n not in last]
    return {
        n: [d for d in deps if (d in last) == (n in last)] + (rest if n in last else [])
        for n, deps in stop_graph.items()
    }


async def _watch(
    name: str, wait_closed: Callable[[], Any], on_exit: Callable[[str, str], None]
) -> None:
    try:
        await wait_closed()
        cause = "stopped serving"
    except Exception as exc:
        cause = describe(exc)
    on_exit(name, cause)


async def _each(rec: PhaseRecord, servers: Sequence[Server], fn: Callable[[Server], Any]) -> None:
    """Call ``fn`` on every server concurrently; record each error under the server's name."""

    async def one(server: Server) -> None:
        try:
            await fn(server)
        except Exception as exc:
            rec.error(f"server {server.name}", exc)

    await asyncio.gather(*(one(s) for s in servers))
