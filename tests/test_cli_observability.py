"""``leanmq-worker`` observability: ``--metrics-port`` scraped over HTTP, ``--tracing``,
observers declared on the client, and install hints for missing extras."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from leanmq_async import LeanMQ, Queue
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.ops.metrics import PrometheusMetrics
from leanmq_async.ops.tracing import OpenTelemetryTracing
from leanmq_async.testing import free_port
from tests import test_cli
from tests.test_cli import WorkerProcess, app_args, wait_until

# The CLI tests' fixtures: a worker subprocess starter, its environment, a created queue.
start = test_cli.start
env = test_cli.env
orders = test_cli.orders

pytestmark = pytest.mark.anyio


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in a Prometheus text exposition."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    return None


async def _scrape(port: int) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def _handled(port: int, name: str, queue: Queue) -> float:
    value = _sample(await _scrape(port), name, queue=queue.name, group=queue.consumer_group)
    return value or 0.0


async def test_metrics_port_serves_counters_after_messages_were_handled(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    port = free_port()
    proc = start(*app_args(), "--metrics-port", str(port), "--log-format", "json")
    (serving,) = await proc.wait_for_events("metrics_serving")
    assert serving["port"] == port and serving["path"] == "/metrics"
    await orders.send_messages([{"n": i} for i in range(3)])

    async def three_handled() -> bool:
        return await _handled(port, "leanmq_messages_handled_total", orders) == 3

    await wait_until(three_handled, proc=proc)
    text = await _scrape(port)
    labels = {"queue": "orders", "group": orders.consumer_group}
    assert _sample(text, "leanmq_handler_duration_seconds_count", **labels) == 3
    assert _sample(text, "leanmq_queue_depth", queue="orders") == 3  # acknowledged history
    assert _sample(text, "leanmq_queue_pending", **labels) == 0
    async with httpx.AsyncClient() as http:
        missing = await http.get(f"http://127.0.0.1:{port}/other", timeout=10)
    assert missing.status_code == 404
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr()


async def test_workers_serve_one_metrics_port_per_process(
    start: Callable[..., WorkerProcess], orders: Queue
) -> None:
    while True:  # PORT and PORT+1 must both be free
        port = free_port()
        try:
            with socket.create_server(("0.0.0.0", port + 1)):
                break
        except OSError:
            continue
    proc = start(
        *app_args(), "--workers", "2", "--metrics-port", str(port), "--log-format", "json",
        CLI_TEST_SLEEP="0.05",
    )  # fmt: skip
    serving = await proc.wait_for_events("metrics_serving", count=2)
    assert sorted(e["port"] for e in serving) == [port, port + 1]
    assert len({e["pid"] for e in serving}) == 2
    await orders.send_messages([{"n": i} for i in range(40)])

    async def all_counted() -> bool:
        name = "leanmq_messages_handled_total"
        return await _handled(port, name, orders) + await _handled(port + 1, name, orders) == 40

    await wait_until(all_counted, proc=proc)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr()


async def test_observers_declared_on_the_client_are_used_by_the_cli(
    start: Callable[..., WorkerProcess], orders: Queue
) -> None:
    port = free_port()
    proc = start(*app_args("observed_app:mq"), "--metrics-port", str(port), "--log-format", "json")
    await proc.wait_for_events("metrics_serving")
    await orders.send_messages([{"n": 1}, {"fail": 1}])

    async def counted() -> bool:
        text = await _scrape(port)
        labels = {"queue": "orders", "group": orders.consumer_group}
        return (
            _sample(text, "app_messages_handled_total", **labels) == 1
            and _sample(text, "app_messages_failed_total", **labels) == 1
        )

    await wait_until(counted, proc=proc)
    # The CLI served the app's collectors and did not add a second set.
    assert _sample(await _scrape(port), "leanmq_messages_handled_total") is None
    assert "leanmq_messages_handled_total" not in await _scrape(port)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr()


async def test_tracing_follows_the_otel_environment(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    proc = start(
        *app_args(), "--tracing", "--log-format", "json",
        OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="billing",
    )  # fmt: skip
    (sid,) = await orders.send_messages([{"n": 1}])
    await wait_until(lambda: raw.llen(f"{prefix}done"), proc=proc)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr()
    spans = json.loads("[" + ",".join(_json_objects("\n".join(proc.out))) + "]")
    (span,) = [s for s in spans if s["name"] == "orders process"]
    assert span["kind"] == "SpanKind.CONSUMER"
    assert span["attributes"]["leanmq.stream_id"] == sid
    assert span["resource"]["attributes"]["service.name"] == "billing"


async def test_tracing_sdk_disabled_by_the_environment(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    proc = start(*app_args(), "--tracing", OTEL_TRACES_EXPORTER="console", OTEL_SDK_DISABLED="true")
    await orders.send_messages([{"n": 1}])
    await wait_until(lambda: raw.llen(f"{prefix}done"), proc=proc)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr()
    assert "orders process" not in "\n".join(proc.out)


async def test_unknown_otel_exporter_exits_2_with_a_hint(
    start: Callable[..., WorkerProcess],
) -> None:
    proc = start(*app_args(), "--tracing", OTEL_TRACES_EXPORTER="otlp")
    assert await proc.wait() == 2
    assert "pip install opentelemetry-exporter-otlp" in proc.stderr()
    assert "Traceback" not in proc.stderr()


def _json_objects(text: str) -> list[str]:
    """The top-level JSON objects printed one after another (the console exporter)."""
    objects, depth, begin = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                begin = i
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                objects.append(text[begin : i + 1])
    return objects


@pytest.mark.parametrize(
    ("blocked", "args", "hint"),
    [
        ("prometheus_client", ["--metrics-port", "0"], "pip install 'leanmq-async[metrics]'"),
        ("opentelemetry", ["--tracing"], "pip install 'leanmq-async[tracing]'"),
    ],
)
def test_missing_extra_exits_2_with_an_install_hint(
    env: dict[str, str], blocked: str, args: list[str], hint: str
) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; "
        "from leanmq_async.worker.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *app_args(), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert hint in done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr


def test_importing_metrics_without_the_extra_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import leanmq_async.ops.metrics\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith("MissingExtraError ")
    assert "pip install 'leanmq-async[metrics]'" in done.stdout


def test_prometheus_metrics_twice_in_one_registry_share_collectors() -> None:
    registry = CollectorRegistry()
    first = PrometheusMetrics(registry)
    second = PrometheusMetrics(registry)  # used to raise "Duplicated timeseries"
    assert second.handled is first.handled
    default_a, default_b = PrometheusMetrics(), PrometheusMetrics()  # the global REGISTRY
    assert default_a.handled is default_b.handled
    assert PrometheusMetrics(registry, namespace="other").handled is not first.handled
    with pytest.raises(ConfigurationError, match="buckets"):
        PrometheusMetrics(registry, buckets=(1.0, 2.0))


async def test_client_observers_reach_every_worker_and_tracing_injects_headers(
    mq: LeanMQ,
) -> None:
    metrics = PrometheusMetrics(CollectorRegistry())
    tracing = OpenTelemetryTracing()
    client = LeanMQ(mq.url, prefix=mq.prefix, observers=[metrics])
    client.add_observer(tracing)
    client.add_observer(tracing)  # once only
    assert client.observers == [metrics, tracing]
    assert client.header_providers == [tracing.inject_headers]
    extra = PrometheusMetrics(CollectorRegistry())

    @client.queue("orders").handler
    async def handle(data: object) -> None:
        pass

    assert client.worker().settings.observers == (metrics, tracing)
    assert client.worker(observers=[extra]).settings.observers == (metrics, tracing, extra)
    with pytest.raises(ConfigurationError, match="observers are instances"):
        client.add_observer(PrometheusMetrics)
    await client.aclose()


async def test_metrics_port_in_use_exits_2_saying_so(
    start: Callable[..., WorkerProcess],
) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        proc = start(*app_args(), "--metrics-port", str(port))
        assert await proc.wait() == 2
    assert f"metrics port 0.0.0.0:{port}: cannot listen" in proc.stderr()
    assert "Traceback" not in proc.stderr()
