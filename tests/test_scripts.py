"""The Lua layer: one file per script under leanmq_async/lua/, each with its contract at
the top, one shared prelude, all registered in one place (leanmq_async.scripts)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from leanmq_async.scripts import PRELUDE, Scripts, source
from leanmq_async.store import Store
from leanmq_async.testing import RedisServer

LUA = Path(__file__).parent.parent / "leanmq_async" / "lua"
NAMES = Scripts.names()
SECTIONS = ("KEYS", "ARGV", "REPLY", "ATOMIC", "ERRORS")


def header_and_body(name: str) -> tuple[list[str], str]:
    """The leading comment block of ``lua/<name>.lua`` (without ``-- ``) and the rest."""
    lines = (LUA / f"{name}.lua").read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    return [line[3:] if line.startswith("-- ") else "" for line in lines[:end]], "\n".join(
        lines[end:]
    )


def sections(header: list[str]) -> dict[str, str]:
    """``{"KEYS": text, ...}``: a section runs from its name to the next section's."""
    out: dict[str, str] = {}
    current = None
    for line in header:
        word = line.split(" ", 1)[0]
        if word in SECTIONS:
            current = word
            out[current] = line[len(word) :].strip()
        elif current is not None:
            out[current] += "\n" + line.strip()
    return out


def prelude_functions() -> list[str]:
    return re.findall(r"^local function (\w+)", (LUA / "prelude.lua").read_text(), re.M)


def test_one_file_per_script_and_one_script_per_file() -> None:
    files = {p.stem for p in LUA.glob("*.lua")}
    assert files == {*NAMES, PRELUDE}
    assert len(NAMES) == 24


@pytest.mark.parametrize("name", NAMES)
def test_every_script_documents_its_contract(name: str) -> None:
    header, body = header_and_body(name)
    assert header[0].startswith(f"{name}.lua: "), "the first line names the file and its job"
    found = sections(header)
    assert list(found) == list(SECTIONS), f"{name}.lua: sections {list(found)}"
    for section, text in found.items():
        assert len(text) > 5, f"{name}.lua: {section} is empty"
    # Every KEYS[n] / ARGV[n] the script reads by number is described under its section.
    for kind in ("KEYS", "ARGV"):
        for index in set(re.findall(rf"\b{kind}\[(\d+)\]", body)):
            assert f"[{index}]" in found[kind], f"{name}.lua: {kind}[{index}] undocumented"


def test_the_prelude_only_defines_helpers() -> None:
    code = [
        line
        for line in (LUA / "prelude.lua").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("--")
    ]
    assert not any("KEYS" in line or "ARGV" in line for line in code)
    top_level = [line for line in code if not line.startswith(" ")]
    assert all(line.startswith(("local function ", "end")) for line in top_level), top_level


def test_every_prelude_function_is_used_and_none_is_redefined() -> None:
    bodies = {name: header_and_body(name)[1] for name in NAMES}
    for function in prelude_functions():
        users = [name for name, body in bodies.items() if re.search(rf"\b{function}\(", body)]
        assert users, f"prelude function {function} is used by no script"
        for name, body in bodies.items():
            assert f"function {function}(" not in body, f"{name}.lua redefines {function}"


def test_every_script_runs_after_the_prelude() -> None:
    prelude = (LUA / "prelude.lua").read_text()
    for name in NAMES:
        assert source(name) == f"{prelude}\n{(LUA / f'{name}.lua').read_text()}"


@pytest.fixture
def fresh_server() -> Iterator[RedisServer]:
    """A server of its own: no script loaded, and SCRIPT FLUSH touches no other test."""
    with RedisServer() as server:
        yield server


@pytest.mark.anyio
async def test_every_script_compiles_and_loads_on_a_real_server(
    fresh_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(fresh_server.url)
    try:
        scripts = Scripts.register(client)
        for name, script in zip(NAMES, scripts.all(), strict=True):
            # SCRIPT LOAD compiles the script: a syntax error fails here.
            assert await client.script_load(source(name)) == script.sha, name
        await client.script_flush()
        store = Store(client)
        shas = [script.sha for script in store.scripts.all()]
        assert not any(await client.script_exists(*shas))
        await store.load_scripts()
        assert all(await client.script_exists(*shas))
    finally:
        await client.aclose()
