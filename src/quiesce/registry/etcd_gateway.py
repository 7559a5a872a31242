"""A client of etcd's v3 JSON gateway (grpc-gateway) across the members of a cluster.

etcd 3.4 serves the gateway under ``/v3/`` and ``/v3beta/``, 3.3 under
``/v3beta/`` only, 3.5+ under ``/v3/`` only: ``/v3/`` is tried first and
``/v3beta/`` used when it is missing. With several endpoints, a connection
error or an unavailable member (no leader) moves on to the next one. With a
username, a token is fetched from each member (``auth/authenticate``) and sent
with every request. 64-bit integers travel as strings and zero values are
omitted, as protobuf's JSON mapping does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from quiesce.errors import describe
from quiesce.registry import RegistryError

__all__ = ["EtcdError", "EtcdGateway"]

#: gRPC codes after which another member may well succeed: DEADLINE_EXCEEDED,
#: RESOURCE_EXHAUSTED, UNAVAILABLE ("no leader", "leader changed", "request timed out").
_TRY_ANOTHER_MEMBER = {4, 8, 14}
_UNAUTHENTICATED = 16
_NOT_FOUND = 5


class EtcdError(RegistryError):
    """etcd answered with an error; ``code`` is its gRPC status code (0 when unknown)."""

    def __init__(self, message: str, code: int = 0) -> None:
        self.code = code
        super().__init__(message)


class EtcdGateway:
    """Requests to etcd's JSON gateway, failing over across ``endpoints``.

    The base of :class:`~quiesce.registry.etcd.EtcdRegistry`, which checks the
    arguments (see it for their meaning) and names itself in the errors.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        username: str | None,
        password: str | None,
        ssl_context: ssl.SSLContext | None,
        request_timeout: float,
    ) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.request_timeout = request_timeout
        self._username = username
        self._password = password
        self._ssl = ssl_context
        self._client: httpx.AsyncClient | None = None
        self._current = 0  # the member that answered last; tried first
        self._api = "/v3"
        self._tokens: dict[str, str] = {}

    async def _range(self, prefix: bytes) -> tuple[dict[str, bytes], int]:
        """Every key starting with ``prefix`` and its value, and the revision they are at."""
        answer = await self._call(
            "/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
        )
        revision = int(answer.get("header", {}).get("revision", 0))
        kvs = {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in answer.get("kvs", ())
        }
        return kvs, revision

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = self._ssl if self._ssl is not None else True
            if not any(e.startswith("https://") for e in self.endpoints):
                # Plain-HTTP members: nothing to verify, and not loading the CA bundle
                # saves ~80 ms of the first registration.
                verify = False
            self._client = httpx.AsyncClient(
                timeout=self.request_timeout,
                verify=verify,
                # Never pick up an HTTP proxy from the environment for cluster traffic.
                trust_env=False,
            )
        return self._client

    def _members(self) -> list[str]:
        """The endpoints in the order to try them: the last one that answered first."""
        n = len(self.endpoints)
        return [self.endpoints[(self._current + i) % n] for i in range(n)]

    def _answered(self, base: str) -> None:
        self._current = self.endpoints.index(base)

    async def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST one request, failing over across members; the answer's ``result`` or body.

        Raises:
            EtcdError: etcd refused (not a reason to try another member).
            RegistryError: no member answered.

        """
        errors: list[str] = []
        for base in self._members():
            try:
                answer = await self._post(base, method, body)
            except _TryAnotherMember as exc:
                errors.append(f"{base}: {exc}")
                continue
            self._answered(base)
            return answer
        # The members named once each, and no repr: the caller (the App) names the registry.
        raise RegistryError(f"no etcd member answered {method}: " + "; ".join(errors))

    async def _post(self, base: str, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        client = self._http()
        for attempt in range(3):  # a fallback to /v3beta, a fresh auth token, then the call
            try:
                response = await client.post(
                    base + self._api + method, json=body, headers=await self._auth(base)
                )
            except httpx.TransportError as exc:
                raise _TryAnotherMember(describe(exc)) from exc
            if not _is_json(response) and response.status_code == 404 and self._api == "/v3":
                self._api = "/v3beta"  # etcd 3.3 (3.4 serves both; 3.5+ only /v3)
                continue
            first = response.text.strip().split("\n", 1)[0]
            try:
                answer = _result(json.loads(first)) if first else {}
            except EtcdError as exc:
                if exc.code == _UNAUTHENTICATED and self._username is not None and attempt < 2:
                    self._tokens.pop(base, None)  # simple tokens expire and are per member
                    continue
                if exc.code in _TRY_ANOTHER_MEMBER:
                    raise _TryAnotherMember(str(exc)) from exc
                raise
            except ValueError as exc:
                if response.status_code >= 500:
                    raise _TryAnotherMember(f"HTTP {response.status_code}") from exc
                raise EtcdError(
                    f"{self!r}: {method}: HTTP {response.status_code}: {first[:200]!r}"
                ) from exc
            return answer
        raise EtcdError(f"{self!r}: {method}: no gateway or authentication kept failing")

    @contextlib.asynccontextmanager
    async def _stream(
        self, method: str, body: Mapping[str, Any]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Open a streaming call (watch) on the first member that accepts it.

        Raises:
            RegistryError: no member accepted it (``EtcdError`` when etcd refused).

        """
        client = self._http()
        timeout = httpx.Timeout(self.request_timeout, read=None)
        errors: list[str] = []
        for base in self._members():
            headers = await self._auth_or_skip(base, errors)
            if headers is None:
                continue
            request = client.build_request(
                "POST", base + self._api + method, json=body, headers=headers, timeout=timeout
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.TransportError as exc:
                errors.append(f"{base}: {describe(exc)}")
                continue
            try:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    if response.status_code == 401:
                        self._tokens.pop(base, None)  # the next attempt authenticates again
                    if response.status_code >= 500 or response.status_code in (401, 404):
                        errors.append(f"{base}: HTTP {response.status_code} {text[:200]!r}")
                        continue
                    raise EtcdError(f"{self!r}: {method}: HTTP {response.status_code}: {text!r}")
                self._answered(base)
                yield _messages(response)
                return
            finally:
                await response.aclose()
        raise RegistryError(f"no etcd member accepted {method}: " + "; ".join(errors))

    async def _auth_or_skip(self, base: str, errors: list[str]) -> dict[str, str] | None:
        try:
            return await self._auth(base)
        except _TryAnotherMember as exc:
            errors.append(f"{base}: {exc}")
            return None

    async def _auth(self, base: str) -> dict[str, str]:
        """The Authorization header for ``base`` (authenticating first if needed)."""
        if self._username is None:
            return {}
        token = self._tokens.get(base)
        if token is None:
            client = self._http()
            try:
                response = await client.post(
                    base + self._api + "/auth/authenticate",
                    json={"name": self._username, "password": self._password},
                )
            except httpx.TransportError as exc:
                raise _TryAnotherMember(describe(exc)) from exc
            try:
                answer = _result(response.json())
            except EtcdError as exc:
                if exc.code in _TRY_ANOTHER_MEMBER:
                    raise _TryAnotherMember(str(exc)) from exc
                raise EtcdError(f"{self!r}: authentication failed: {exc}", exc.code) from exc
            except ValueError as exc:
                raise _TryAnotherMember(f"authenticate: HTTP {response.status_code}") from exc
            token = str(answer.get("token", ""))
            self._tokens[base] = token
        return {"Authorization": token}


class _TryAnotherMember(Exception):
    """The member cannot serve the request now; another may."""


async def _messages(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.strip():
            yield json.loads(line)


def _result(message: Any) -> dict[str, Any]:
    """The payload of an answer, or the EtcdError it carries.

    Unary answers are the message itself or ``{"error", "code", "message"}``;
    streamed ones are ``{"result": ...}`` or ``{"error": {"grpc_code", "message"}}``.
    """
    if not isinstance(message, dict):
        raise ValueError(f"not a JSON object: {message!r:.200}")
    error = message.get("error")
    if isinstance(error, dict):
        code = int(error.get("grpc_code") or error.get("code") or 0)
        raise EtcdError(str(error.get("message", error)), code)
    if error:
        raise EtcdError(str(message.get("message") or error), int(message.get("code") or 0))
    result = message.get("result", message)
    if not isinstance(result, dict):
        raise ValueError(f"not a JSON object: {result!r:.200}")
    return result


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("application/json")


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key
