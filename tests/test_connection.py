"""Connecting: URLs, keywords, unix sockets, ACL users, borrowed clients, error translation."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from leanmq_async import (
    ConfigurationError,
    ConnectionSettings,
    LeanMQ,
    LeanMQConnectionError,
    LeanMQError,
    RedisOperationError,
)
from leanmq_async.connection import build_client, build_url, translate_errors
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio

PASSWORD = "s3cr@t/:?#pw"  # characters that must be quoted in a URL


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    """A private server with a password for the default user and two ACL users."""
    with RedisServer(args=["--requirepass", PASSWORD]) as server:
        admin = redis.Redis(port=server.port, password=PASSWORD)
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+alicepw"], keys=["*"], commands=["+@all"]
        )
        # bob may read but not write streams.
        admin.acl_setuser(
            "bob",
            enabled=True,
            passwords=["+bobpw"],
            keys=["*"],
            commands=["+@all", "-xadd", "-evalsha", "-eval"],
        )
        admin.close()
        yield server


@pytest.fixture
def no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEANMQ_URL", raising=False)


@pytest.fixture(scope="module")
def unix_server() -> Iterator[tuple[RedisServer, str]]:
    server = RedisServer()
    path = os.path.join(server.directory, "redis.sock")
    server.extra_args += ["--unixsocket", path, "--unixsocketperm", "700"]
    with server:
        yield server, path


async def _roundtrip(mq: LeanMQ, name: str = "conn") -> None:
    queue, _ = await mq.create_queue_pair(name)
    sid = await queue.send_message({"hello": name})
    (msg,) = await queue.get_messages()
    assert (msg.id, msg.data) == (sid, {"hello": name})
    assert await queue.acknowledge_messages([msg.id]) == 1


async def test_url_and_prefix(redis_server: RedisServer, prefix: str, raw: aioredis.Redis) -> None:
    async with LeanMQ(url=redis_server.url, prefix=prefix) as mq:
        assert mq.prefix == prefix
        assert mq.url == redis_server.url
        await _roundtrip(mq)
    assert await raw.exists(f"{prefix}{{conn}}", f"{prefix}{{}}:registry") == 2


async def test_keywords_with_password_and_db(auth_server: RedisServer, no_env_url: None) -> None:
    async with LeanMQ(
        redis_host="127.0.0.1",
        redis_port=auth_server.port,
        redis_db=3,
        redis_password=PASSWORD,
        prefix="kw:",
    ) as mq:
        await _roundtrip(mq)
        assert "s3cr" not in repr(mq)  # the password never shows
    check = aioredis.Redis(port=auth_server.port, db=3, password=PASSWORD)
    assert await check.exists("kw:{conn}") == 1
    await check.aclose()
    check0 = aioredis.Redis(port=auth_server.port, db=0, password=PASSWORD)
    assert await check0.exists("kw:{conn}") == 0
    await check0.aclose()


async def test_wrong_or_missing_password(auth_server: RedisServer, no_env_url: None) -> None:
    for password in (None, "wrong"):
        async with LeanMQ(
            redis_host="127.0.0.1", redis_port=auth_server.port, redis_password=password
        ) as mq:
            with pytest.raises(LeanMQConnectionError):
                await mq.queue("x").send_message(1)
            assert (await mq.health())["status"] == "critical"


async def test_acl_user_in_url(auth_server: RedisServer) -> None:
    async with LeanMQ(f"redis://alice:alicepw@127.0.0.1:{auth_server.port}/0", prefix="acl:") as mq:
        await _roundtrip(mq)
        assert (await mq.health()) == {"status": "ok", "redis": True}
        assert "alicepw" not in repr(mq)
        assert "***@127.0.0.1" in repr(mq)


async def test_acl_user_by_keywords(auth_server: RedisServer, no_env_url: None) -> None:
    async with LeanMQ(
        redis_host="127.0.0.1",
        redis_port=auth_server.port,
        redis_username="alice",
        redis_password="alicepw",
        prefix="aclkw:",
    ) as mq:
        await _roundtrip(mq)


async def test_acl_wrong_password(auth_server: RedisServer) -> None:
    async with LeanMQ(f"redis://alice:nope@127.0.0.1:{auth_server.port}/0") as mq:
        with pytest.raises(LeanMQConnectionError) as info:
            await mq.queue("x").send_message(1)
        assert isinstance(info.value, ConnectionError)


async def test_acl_denied_command_is_an_operation_error(auth_server: RedisServer) -> None:
    async with LeanMQ(f"redis://bob:bobpw@127.0.0.1:{auth_server.port}/0", prefix="bob:") as mq:
        queue = mq.queue("denied")
        with pytest.raises(RedisOperationError, match="XADD"):
            await queue.send_message(1)
        with pytest.raises(RedisOperationError):
            await queue.send_message(1, ttl=5)  # the send script


async def test_unix_socket_url(unix_server: tuple[RedisServer, str]) -> None:
    server, path = unix_server
    async with LeanMQ(f"unix://{path}", prefix="unix:") as mq:
        await _roundtrip(mq)
        await mq.queue("conn").send_message(2, ttl=10)
    # Same data over TCP: it is the same server.
    async with LeanMQ(server.url, prefix="unix:") as tcp:
        assert (await tcp.queue("conn").get_info()).message_count == 2


async def test_unix_socket_with_db(unix_server: tuple[RedisServer, str]) -> None:
    _, path = unix_server
    async with LeanMQ(f"unix://{path}?db=5", prefix="unixdb:") as mq:
        await _roundtrip(mq)
    check = aioredis.Redis(unix_socket_path=path, db=5)
    assert await check.exists("unixdb:{conn}") == 1
    await check.aclose()


async def test_borrowed_client_is_not_closed(redis_server: RedisServer, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    mq = LeanMQ(client=client, prefix=prefix)
    assert mq.url == "<borrowed client>"
    await _roundtrip(mq)
    await mq.aclose()
    assert await client.ping()  # still usable
    async with LeanMQ(client=client, prefix=prefix) as again:
        assert (await again.get_queue("conn")).name == "conn"
    assert await client.ping()
    await client.aclose()


async def test_borrowed_client_that_decodes_is_refused(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        LeanMQ(client=client)
    await client.aclose()


async def test_url_and_client_together_are_refused(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    with pytest.raises(ConfigurationError, match="either"):
        LeanMQ(redis_server.url, client=client)
    await client.aclose()


async def test_owned_client_is_closed(redis_server: RedisServer, raw: aioredis.Redis) -> None:
    name = "leanmq-close-test"
    url = f"{redis_server.url}?client_name={name}"

    async def connected() -> int:
        return sum(1 for c in await raw.client_list() if c["name"] == name)

    async with LeanMQ(url) as mq:
        await mq.health()
        assert await connected() == 1
    assert await connected() == 0
    await mq.aclose()  # idempotent

    mq = LeanMQ(url)
    await mq.health()
    await mq.aclose()
    assert await connected() == 0


async def test_no_io_until_first_call() -> None:
    mq = LeanMQ("redis://127.0.0.1:1", prefix="nothing:")  # nothing listens on port 1
    queue = mq.queue("orders")
    assert queue.name == "orders"
    assert queue.stream == "nothing:{orders}"
    assert queue.dead_letter_queue().name == "orders:dlq"
    assert queue.dead_letter_queue().main_queue() is queue
    assert mq.queue("orders") is queue
    with pytest.raises(LeanMQConnectionError, match="unreachable") as info:
        await queue.send_message({"a": 1})
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    health = await mq.health()
    assert health["status"] == "critical" and health["redis"] is False
    await mq.aclose()


async def test_environment_url(
    redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEANMQ_URL", redis_server.url)
    async with LeanMQ(prefix=prefix) as mq:  # the keywords' default port (6379) is not used
        assert mq.url == redis_server.url
        await _roundtrip(mq)


@pytest.mark.parametrize(
    "url", ["http://localhost", "localhost:6379", "redis+sentinel://x", "", "rediss"]
)
def test_unsupported_url(url: str) -> None:
    with pytest.raises(ConfigurationError):
        build_client(url, ConnectionSettings())


@pytest.mark.parametrize(
    "query", ["decode_responses=true", "decode_responses=1", "socket_timeout=abc"]
)
def test_url_options_that_cannot_work_are_refused(query: str) -> None:
    with pytest.raises(ConfigurationError):
        LeanMQ(f"redis://127.0.0.1:1/0?{query}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"socket_timeout": 0},
        {"socket_connect_timeout": -1},
        {"pool_timeout": 0},
        {"max_connections": 1},
    ],
)
def test_connection_settings_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        ConnectionSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_retries", [-1, 1.5, True, "3"])
def test_max_retries_validation(max_retries: object) -> None:
    with pytest.raises(ConfigurationError):
        LeanMQ("redis://127.0.0.1:1", max_retries=max_retries)  # type: ignore[arg-type]


def test_build_url() -> None:
    assert build_url("h", 1, 2, None, None, False) == "redis://h:1/2"
    assert build_url("h", 1, 0, "p w", None, True) == "rediss://:p%20w@h:1/0"
    assert build_url("h", 1, 0, "a@b/c", "u:x", False) == "redis://u%3Ax:a%40b%2Fc@h:1/0"


async def test_custom_connection_settings(redis_server: RedisServer, prefix: str) -> None:
    settings = ConnectionSettings(max_connections=2, socket_timeout=10)
    async with LeanMQ(redis_server.url, prefix=prefix, connection=settings) as mq:
        assert mq.connection_settings is settings
        assert mq.redis.connection_pool.max_connections == 2
        await _roundtrip(mq)


async def test_translate_errors(redis_server: RedisServer, raw: aioredis.Redis) -> None:
    await raw.set("translate:str", "x")
    with (
        pytest.raises(RedisOperationError, match="probe failed: WRONGTYPE") as info,
        translate_errors("probe"),
    ):
        await raw.xadd("translate:str", {"a": "b"})
    assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
    with pytest.raises(LeanMQError), translate_errors():
        raise redis.exceptions.DataError("bad data")
    with pytest.raises(KeyError), translate_errors():
        raise KeyError("not a redis error: untouched")
    await raw.delete("translate:str")


async def test_wrong_key_type_is_an_operation_error(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("typed")
    await raw.set(queue.stream, "not a stream")
    with pytest.raises(RedisOperationError, match="WRONGTYPE"):
        await queue.send_message(1)
    with pytest.raises(RedisOperationError, match="WRONGTYPE"):
        await queue.send_message(1, ttl=1)
    with pytest.raises(RedisOperationError, match="WRONGTYPE"):
        await mq.create_queue_pair("typed")
    assert await raw.get(queue.stream) == b"not a stream"
    assert await raw.exists(queue.keys.meta, queue.keys.dlq) == 0  # nothing half-created
    assert await mq.list_queues() == []


@pytest.mark.parametrize("protocol", [2, 3])
async def test_both_resp_protocols(redis_server: RedisServer, prefix: str, protocol: int) -> None:
    async with LeanMQ(f"{redis_server.url}?protocol={protocol}", prefix=prefix) as mq:
        client_info = await mq.redis.execute_command("CLIENT", "INFO")
        assert f"resp={protocol}".encode() in client_info
        await _roundtrip(mq)
        queue, dlq = await mq.create_queue_pair("resp")
        await queue.send_messages([1, 2], ttl=60)
        await queue.send_message(3, delay=60)
        one, _ = await queue.get_messages(count=5, block_for_seconds=1)
        await queue.move_to_dlq([one.id], "resp")
        (dead,) = await dlq.get_messages()
        assert dead.dead_letter is not None and dead.dead_letter.reason == "resp"
        assert await dlq.requeue_messages([dead.id]) == 1
        info = await queue.get_info()
        assert (info.message_count, info.pending_messages, info.delayed_messages) == (3, 1, 1)
        assert info.consumer_groups == ("resp-group",)
        assert [q.name for q in await mq.list_queues()] == ["conn", "conn:dlq", "resp", "resp:dlq"]
        assert [m.data for m in await queue.get_messages(count=5)] == [1]
        assert await queue.get_messages(block_for_seconds=0.05) == []
