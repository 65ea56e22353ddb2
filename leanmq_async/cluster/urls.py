"""Parsing and writing ``redis+cluster://`` and ``redis+sentinel://`` URLs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote

from leanmq_async.cluster.types import CLUSTER_SCHEMES, SENTINEL_SCHEMES
from leanmq_async.connection import (
    url_auth,
)
from leanmq_async.exceptions import ConfigurationError


def _split_url(url: str, schemes: Sequence[str]) -> tuple[str, str, str, str, dict[str, str]]:
    """``(scheme, userinfo, hosts, path, query)`` of a multi-host URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in schemes:
        raise ConfigurationError(f"unsupported URL {url!r}: use {' or '.join(schemes)}://")
    rest, _, fragment = rest.partition("#")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    query = {}
    for name, values in parse_qs(query_text, keep_blank_values=True).items():
        query[name] = values[-1]
    if fragment:
        raise ConfigurationError(f"invalid URL {url!r}: unexpected fragment")
    return scheme, userinfo, hosts, path, query


def _hosts(text: str, default_port: int, url: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"invalid port {port_text!r} in {url!r}") from None
        if not host or not 0 < port < 65536:
            raise ConfigurationError(f"invalid host:port {item!r} in {url!r}")
        out.append((unquote(host), port))
    if not out:
        raise ConfigurationError(f"no host in {url!r}")
    return out


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    ssl: bool


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    sentinels: list[tuple[str, int]]
    service_name: str
    db: int
    username: str | None
    password: str | None
    ssl: bool
    sentinel_username: str | None
    sentinel_password: str | None


def _no_options(query: dict[str, str], url: str, allowed: Sequence[str] = ()) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        raise ConfigurationError(
            f"unsupported option(s) {', '.join(unknown)} in {_redact(url)!r}{hint}; "
            "connection settings are LeanMQ's (ConnectionSettings)"
        )


def parse_cluster_url(url: str) -> ClusterAddress:
    """Parse ``redis+cluster://[user[:password]@]host:port[,host:port...][/0]``.

    A plain ``redis://`` / ``rediss://`` URL is accepted too (for ``cluster=True``).
    """
    scheme, userinfo, hosts, path, query = _split_url(url, (*CLUSTER_SCHEMES, "redis", "rediss"))
    _no_options(query, url)
    if path.strip("/") not in ("", "0"):
        raise ConfigurationError(f"Redis Cluster has only database 0, not {path!r} ({url!r})")
    username, password = _credentials(userinfo)
    return ClusterAddress(_hosts(hosts, 6379, url), username, password, scheme.startswith("rediss"))


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Parse ``redis+sentinel://[user[:password]@]host:port[,...]/service_name[/db]``."""
    scheme, userinfo, hosts, path, query = _split_url(url, SENTINEL_SCHEMES)
    _no_options(query, url, ("sentinel_username", "sentinel_password"))
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ConfigurationError(
            f"invalid Sentinel URL {_redact(url)!r}: use "
            "redis+sentinel://host:port[,host:port...]/service_name[/db]"
        )
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ConfigurationError(f"invalid database {parts[1]!r} in {_redact(url)!r}") from None
    username, password = _credentials(userinfo)
    return SentinelAddress(
        sentinels=_hosts(hosts, 26379, url),
        service_name=parts[0],
        db=db,
        username=username,
        password=password,
        ssl=scheme.startswith("rediss"),
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def sentinel_url(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    db: int = 0,
    username: str | None = None,
    password: str | None = None,
    ssl: bool = False,
) -> str:
    """The ``redis+sentinel://`` URL for LeanMQ's ``sentinels=``/``service_name=`` keywords."""
    if not sentinels:
        raise ConfigurationError("sentinels must list at least one (host, port)")
    if not service_name:
        raise ConfigurationError("service_name is required with sentinels")
    auth = url_auth(username, password)
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels)
    scheme = "rediss+sentinel" if ssl else "redis+sentinel"
    return f"{scheme}://{auth}{hosts}/{quote(service_name, safe='')}/{db}"


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"
