"""The embedded file registry's own behaviour: files, names, retries."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from pathlib import Path

from quiesce.registry import Instance
from quiesce.registry.file import FileRegistry

NOTICE = 5.0


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


async def test_odd_ids_and_names_are_one_safe_file_each(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path, ttl=2)
    odd = Instance(id="../host/1", name=".hidden/svc", endpoints=("http://127.0.0.1:1",))
    await reg.register(odd)
    (stored,) = files(tmp_path)
    assert stored.parent.parent == tmp_path
    assert [i.id for i in await reg.instances(".hidden/svc")] == ["../host/1"]
    await reg.deregister(odd)
    assert files(tmp_path) == []


async def test_register_collects_files_of_crashed_instances(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path, ttl=2)
    folder = tmp_path / "orders"
    folder.mkdir()
    crashed, leftover = folder / "crashed.json", folder / ".crashed.json.4242.0badc0de.tmp"
    for path in (crashed, leftover):
        path.write_text(Instance(id="crashed", name="orders").to_json())
        old = time.time() - 60
        os.utime(path, (old, old))
    assert await reg.instances("orders") == []  # stale: not listed
    await reg.register(Instance(id="live", name="orders"))
    assert sorted(p.name for p in folder.iterdir()) == ["live.json"]
    await reg.deregister(Instance(id="live", name="orders"))


async def test_keep_registered_retries_until_the_directory_is_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the registry's directory should be")
    reg = FileRegistry(blocker / "registry", ttl=1.5, poll_interval=0.02)
    inst = Instance(id="a", name="orders")
    reg.keep_registered(inst)  # never raises: serve now, register when possible
    assert await reg.instances("orders") == []
    blocker.unlink()
    async with asyncio.timeout(NOTICE), reg.watch("orders") as watch:
        async for current in watch:
            if [i.id for i in current] == ["a"]:
                break
    await reg.deregister(inst)
    assert await reg.instances("orders") == []


async def test_unreadable_entry_is_skipped_not_fatal(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path, ttl=2)
    await reg.register(Instance(id="good", name="orders"))
    (tmp_path / "orders" / "bad.json").write_text("{not json")
    assert [i.id for i in await reg.instances("orders")] == ["good"]
    await reg.deregister(Instance(id="good", name="orders"))


async def test_heartbeat_whole_directory_removed_under_a_live_owner_is_made_again(
    tmp_path: Path,
) -> None:
    root = tmp_path / "reg"
    reg = FileRegistry(root, ttl=0.6, poll_interval=0.02)  # a heartbeat every ~0.2 s
    await reg.register(Instance(id="a", name="orders"))
    shutil.rmtree(root)  # a tmp cleaner
    async with asyncio.timeout(NOTICE), reg.watch("orders") as watch:
        async for current in watch:
            if [i.id for i in current] == ["a"]:
                break
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    await reg.deregister(Instance(id="a", name="orders"))
