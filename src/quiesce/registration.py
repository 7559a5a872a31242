"""The app's instance in its registry: registered once its servers are bound, deregistered once.

A register that fails or is cut may still have written the instance, so the
stop takes it out whenever the register began. An instance the stop could not
deregister is named by the last report (it leaves when its lease or heartbeat
expires).
"""

from __future__ import annotations

import asyncio
import logging

from quiesce import config
from quiesce.errors import StartError, describe
from quiesce.phases import PhaseRecord
from quiesce.registry import (
    ChecksNames,
    Instance,
    KeepsRegistering,
    Registry,
    from_url,
    redact,
)

__all__ = ["Registration"]

logger = logging.getLogger("quiesce.lifecycle")


class Registration:
    """One instance's registration, from the app's ``registry`` option.

    ``option`` is None (no registry), a URL, or a :class:`~quiesce.Registry`;
    ``timeout`` bounds each registry call; with ``required=False`` a failed
    register at start serves anyway and keeps registering in the background.
    """

    def __init__(self, option: object, *, timeout: float, required: bool) -> None:
        self.option = option
        self.timeout = timeout
        self.required = required
        self.registry: Registry | None = None
        self.instance: Instance | None = None
        #: The register call began: from here on the stop must deregister.
        self.began = False
        self.deregistered = False

    def resolve(self, name: str) -> None:
        """Build the registry from the option (nothing is contacted) and check ``name``.

        Raises:
            ConfigError: the option is neither None, a URL nor a Registry; a bad
                URL; a service name the registry cannot store safely.

        """
        config.check_registry(self.option)
        option = self.option
        if isinstance(option, str):
            self.registry = from_url(option)
        elif isinstance(option, Registry):
            self.registry = option
        # The name becomes a registry key: one that would land in another service's is refused.
        if isinstance(self.registry, ChecksNames):
            self.registry.check_name(name)

    @property
    def label(self) -> str:
        """The registry as the user named it, with any password masked."""
        return redact(self.option) if isinstance(self.option, str) else repr(self.option)

    async def register(self, rec: PhaseRecord, instance: Instance, budget: float) -> bool:
        """Register ``instance`` within ``registry_timeout`` (and ``budget``).

        Returns whether it is registered now (False: it goes on in the background).

        Raises:
            StartError: the registry failed or did not answer, and ``required``
                (or the registry cannot keep registering in the background).

        """
        registry = self.registry
        assert registry is not None
        self.instance = instance
        where = f"registry {self.label}"
        rec.waited_for.append(where)
        self.began = True
        try:
            async with asyncio.timeout(min(self.timeout, budget)):
                await registry.register(instance)
        except Exception as exc:
            cause: BaseException | str = exc
            if isinstance(exc, TimeoutError):
                cause = f"no answer within registry_timeout={self.timeout:g}s"
            if self.required or not isinstance(registry, KeepsRegistering):
                raise StartError(where, cause) from exc
            logger.warning(
                "%s: %s; serving anyway, registering in the background",
                where,
                cause if isinstance(cause, str) else describe(cause),
            )
            registry.keep_registered(instance)
            return False
        return True

    async def deregister(self, rec: PhaseRecord) -> None:
        """Withdraw the instance (the caller bounds the call)."""
        assert self.registry is not None
        assert self.instance is not None
        rec.waited_for.append(f"registry {self.label}")
        await self.registry.deregister(self.instance)
        self.deregistered = True

    def left_behind(self) -> list[str]:
        """The instance, if it may still be in the registry (for the last report)."""
        if not self.began or self.deregistered or self.instance is None:
            return []
        return [
            f"instance {self.instance.id} still in registry {self.label} "
            "(deregister could not run; it leaves when its lease or heartbeat expires)"
        ]
