"""The file registry against another local user: takeover, planted links, and the stale sweep.

Tests run as root here; "another user" is a directory or file chowned to
uid 4242, which only root can do (skipped otherwise). Every refusal must
leave what it refused untouched and never return an instance from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.registry import Instance, RegistryError
from quiesce.registry.file import FileRegistry

OTHER_UID = 4242
#: Bound on the App subprocess failing its start (it exits at once when refused).
RUN_TIMEOUT = 20.0

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="chown to another uid needs root (these tests run as root in CI)"
)


def instance(ident: str = "mine", name: str = "orders") -> Instance:
    return Instance(id=ident, name=name, endpoints=("http://127.0.0.1:8000",))


def plant(folder: Path, ident: str = "attacker", name: str = "orders") -> Path:
    """A fresh instance file, as another user would write it to take traffic."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ident}.json"
    path.write_text(Instance(id=ident, name=name, endpoints=("http://10.6.6.6:80",)).to_json())
    return path


def aged(path: Path, seconds: float = 3600) -> Path:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    # With no umask at all, only modes the registry asks for explicitly are owner-only.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- takeover -------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("level", ["registry", "service"])
async def test_file_directory_owned_by_another_user_is_refused_and_left_alone(
    tmp_path: Path, level: str
) -> None:
    root = tmp_path / "reg"
    planted = plant(root / "orders")
    os.chown(root if level == "registry" else root / "orders", OTHER_UID, OTHER_UID)
    reg = FileRegistry(root, ttl=5)
    with pytest.raises(RegistryError) as info:
        await reg.register(instance())
    message = str(info.value)
    bad = root if level == "registry" else root / "orders"
    assert message == (
        f"refusing {bad}: owned by uid {OTHER_UID}, not 0 "
        "(another user could take the registry over)"
    )
    assert sorted(p.name for p in (root / "orders").iterdir()) == [planted.name]
    # Discovery does not believe it either: the attacker's instance is never returned.
    with pytest.raises(RegistryError, match=f"owned by uid {OTHER_UID}"):
        await reg.instances("orders")


@pytest.mark.parametrize("bits", [0o777, 0o770, 0o1777])
async def test_file_directory_writable_by_others_is_refused(tmp_path: Path, bits: int) -> None:
    root = tmp_path / "reg"
    plant(root / "orders")
    os.chmod(root, bits)  # ours, but anyone (or the group) may add or swap files
    reg = FileRegistry(root, ttl=5)
    with pytest.raises(RegistryError, match=f"refusing {root}: mode {bits:o} is writable"):
        await reg.register(instance())
    assert [p.name for p in (root / "orders").iterdir()] == ["attacker.json"]


async def test_file_directory_that_is_a_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    # The case: a planted link makes a root register sweep a root-only directory.
    victim = tmp_path / "victim"
    (victim / "orders").mkdir(parents=True)
    victim.chmod(0o700)
    keep = victim / "orders" / "keep.json"
    keep.write_text(Instance(id="keep", name="orders").to_json())
    aged(keep)
    link = tmp_path / "reg"
    link.symlink_to(victim)
    reg = FileRegistry(link, ttl=5)
    with pytest.raises(RegistryError, match=f"refusing {link}: it is a symlink"):
        await reg.register(instance())
    assert [p.name for p in (victim / "orders").iterdir()] == ["keep.json"]
    with pytest.raises(RegistryError, match="symlink"):
        await reg.instances("orders")


async def test_file_service_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    plant(elsewhere)
    root = tmp_path / "reg"
    root.mkdir(mode=0o700)
    (root / "orders").symlink_to(elsewhere)
    reg = FileRegistry(root, ttl=5)
    with pytest.raises(RegistryError, match="orders: it is a symlink"):
        await reg.register(instance())
    assert [p.name for p in elsewhere.iterdir()] == ["attacker.json"]


async def test_file_ancestor_writable_by_others_without_sticky_bit_is_refused(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may rename reg away and put their own in its place
    reg = FileRegistry(shared / "reg", ttl=5)
    with pytest.raises(RegistryError, match=f"refusing {shared}: mode 777"):
        await reg.register(instance())
    assert list(shared.iterdir()) == []


async def test_file_watch_of_a_refused_directory_lists_nothing_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "reg"
    plant(root / "orders")
    os.chmod(root / "orders", 0o777)
    reg = FileRegistry(root, ttl=5, poll_interval=0.01)
    caplog.set_level(logging.WARNING, "quiesce.registry")
    async with reg.watch("orders") as watch:
        assert await anext(watch) == []
        # About 20 polls on: still nothing new yielded (the attacker's instance never is).
        pending = asyncio.ensure_future(anext(watch))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done, pending.result()
        os.chmod(root / "orders", 0o700)
        assert [i.id for i in await asyncio.wait_for(pending, 5)] == ["attacker"], "fixed"
    refusals = [r for r in caplog.records if "lists nothing" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    assert "mode 777 is writable by other users" in refusals[0].getMessage()


@needs_root
async def test_file_instance_owned_by_another_user_or_a_symlink_is_not_listed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "reg"
    reg = FileRegistry(root, ttl=5)
    await reg.register(instance("mine"))
    foreign = plant(root / "orders", "foreign")
    os.chown(foreign, OTHER_UID, OTHER_UID)
    # A link to a file elsewhere (say another service's, or one the attacker owns).
    target = plant(tmp_path / "outside", "linked")
    (root / "orders" / "linked.json").symlink_to(target)
    assert [i.id for i in await reg.instances("orders")] == ["mine"]
    await reg.deregister(instance("mine"))


async def test_file_directories_are_0700_and_instance_files_0600_whatever_the_umask(
    tmp_path: Path, umask_zero: None
) -> None:
    root = tmp_path / "a" / "reg"
    reg = FileRegistry(root, ttl=5)
    await reg.register(instance())
    assert (mode(tmp_path / "a"), mode(root), mode(root / "orders")) == (0o700, 0o700, 0o700)
    assert mode(root / "orders" / "mine.json") == 0o600
    await reg.deregister(instance())


@needs_root
def test_file_app_with_a_taken_over_default_directory_exits_1_with_one_line(
    tmp_path: Path,
) -> None:
    # The default directory, <tmp>/quiesce-registry-<uid>, pre-created by another user.
    (tmp_path / f"quiesce-registry-{os.getuid()}").mkdir(mode=0o777)
    taken = tmp_path / f"quiesce-registry-{os.getuid()}"
    taken.chmod(0o777)
    os.chown(taken, OTHER_UID, OTHER_UID)
    code = "from quiesce import App; App(name='orders', registry='file:').run()"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == 1, done.stderr
    failed = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(failed) == 1, done.stderr
    assert f"refusing {taken}: owned by uid {OTHER_UID}" in failed[0]
    assert "Traceback" not in done.stderr
    assert "deregister" not in failed[0]
    assert "cannot delete" not in done.stderr, "a directory never written is not an error"
    assert list(taken.iterdir()) == [], "nothing written into the other user's directory"


# -- the stale sweep ----------------------------------------------------------------------


async def test_file_stale_sweep_deletes_only_its_own_records_and_temp_files(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "orders"
    folder.mkdir()
    crashed = folder / "crashed.json"
    crashed.write_text(Instance(id="crashed", name="orders").to_json())
    temp = folder / ".crashed.json.4242.0badc0de.tmp"
    temp.write_text("half an instance")
    kept = {
        "notes.txt": "an hour old, not ours",
        "config.json": json.dumps({"replicas": 3}),
        "payments.json": Instance(id="payments", name="payments").to_json(),
        "renamed.json": Instance(id="original", name="orders").to_json(),
        ".notes.txt.swp": "an editor's",
        ".x.json.1.tmp": "not our temp-file pattern",
    }
    for name, text in kept.items():
        (folder / name).write_text(text)
    (folder / "subdir").mkdir()
    for path in folder.iterdir():
        aged(path)
    reg = FileRegistry(tmp_path, ttl=2)
    await reg.register(instance("live"))
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([*kept, "subdir", "live.json"])
    await reg.deregister(instance("live"))
