"""Clients that learn of registry changes late, as behind a real load balancer.

The drill's own registry tells its clients of a withdrawn instance within
milliseconds; in a deployment, kube-proxy, an ingress or a sidecar takes a
second or more to stop sending to an endpoint that went away. A service that
closes its listener at the signal survives the first and loses requests in
the second. :class:`LateDiscovery` puts that lag back: every change of the
instance list reaches the clients ``delay`` seconds after the registry saw it
(the first list at once: it is the state at the start, not a change).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from quiesce.registry import Discovery, Instance, Watch
from quiesce.rotation import http_endpoint

__all__ = ["LateDiscovery"]


class LateDiscovery:
    """A :class:`~quiesce.registry.Discovery` that passes on changes ``delay`` seconds late.

    Args:
        inner: the registry whose changes are passed on.
        delay: seconds between the registry's notice of a change and the clients'.

    """

    def __init__(self, inner: Discovery, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        #: The list last passed on to a watcher (which acts on it before anyone else runs).
        self.delivered: list[Instance] = []
        self._delivery = asyncio.Condition()

    async def until_delivered(self, port: int) -> None:
        """Wait until a list with an instance on loopback ``port`` has been passed on.

        Unbounded: the caller bounds it.
        """

        def listed() -> bool:
            return any(http_endpoint(i) == ("http", "127.0.0.1", port) for i in self.delivered)

        async with self._delivery:
            await self._delivery.wait_for(listed)

    async def _deliver(self, instances: list[Instance]) -> list[Instance]:
        async with self._delivery:
            self.delivered = instances
            self._delivery.notify_all()
        return instances

    def __repr__(self) -> str:
        return f"LateDiscovery({self.inner!r}, delay={self.delay:g})"

    async def instances(self, name: str) -> list[Instance]:
        """The registry's list now (a one-off look is not delayed).

        Raises:
            RegistryError: as the inner registry's ``instances``.

        """
        return await self.inner.instances(name)

    def watch(self, name: str) -> Watch:
        """The inner watch's lists, each change ``delay`` seconds after the inner one."""
        return Watch(self._late(name))

    async def _late(self, name: str) -> AsyncGenerator[list[Instance], None]:
        changes: asyncio.Queue[tuple[float, list[Instance]]] = asyncio.Queue()
        first: asyncio.Future[list[Instance]] = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            async with self.inner.watch(name) as watch:
                async for instances in watch:
                    if not first.done():
                        first.set_result(instances)
                    else:
                        changes.put_nowait((time.monotonic() + self.delay, instances))

        # A queue of its own, so that one late change does not hold back the notice
        # of the inner watch's next ones: each is due delay after it happened.
        follower = asyncio.create_task(follow(), name=f"quiesce drill late watch {name}")
        try:
            if not await _before_end(first, follower):
                return
            yield await self._deliver(first.result())
            while True:
                getter = asyncio.ensure_future(changes.get())
                try:
                    if not await _before_end(getter, follower):
                        return
                finally:
                    getter.cancel()
                due, instances = getter.result()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                yield await self._deliver(instances)
        finally:
            follower.cancel()
            await asyncio.wait({follower})


async def _before_end(wanted: asyncio.Future[Any], follower: asyncio.Task[None]) -> bool:
    """Wait for ``wanted``; False when the inner watch ended first (its error is raised)."""
    done, _ = await asyncio.wait({wanted, follower}, return_when=asyncio.FIRST_COMPLETED)
    if wanted in done:
        return True
    # The inner watch failed or ended: its error, or the end, is the client's to handle
    # (it watches again).
    follower.result()
    return False
