"""The wire format: how a message is laid out in a stream entry, and its codecs.

A stream entry holds these fields (bytes names, so Lua scripts can copy them blindly):

``j`` or ``m``
    The envelope, JSON (``j``, the default: readable in ``redis-cli``) or msgpack (``m``):
    ``{"id": <message id>, "ts": <enqueue time, unix s>, "h": {<headers>}, "p": <payload>}``.
    Written once by the producer and never rewritten; unknown keys are tolerated.
``x``
    Expiry time in milliseconds of the *Redis* clock (set by the send script, so a
    producer's or worker's wrong clock never expires a live message).
``a``
    Attempts already made (absent = 0); set by the retry script.
``g``
    Target consumer group; set when a retry or requeue is meant for one group only.
    Consumers of other groups acknowledge and skip the entry.
``dlq.*``
    Dead-letter metadata, on entries of a dead-letter stream only.

Encoders and decoders are built once per codec and per payload type, never per message.
Nothing is ever pickled or imported from message data.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec
import msgspec.inspect

from leanmq_async.exceptions import (
    ConfigurationError,
    MessageDecodeError,
    MessageEncodeError,
    MessageTooLargeError,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Codec",
    "DecodedEntry",
    "Envelope",
    "Serializer",
    "decode_entry",
    "decode_payload",
    "get_codec",
    "payload_decoder",
]

Serializer = Literal["json", "msgpack"]

DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024

FIELD_JSON: Final = b"j"
FIELD_MSGPACK: Final = b"m"
FIELD_EXPIRES: Final = b"x"
FIELD_ATTEMPTS: Final = b"a"
FIELD_GROUP: Final = b"g"
DLQ_FIELD_PREFIX: Final = b"dlq."


class Envelope(msgspec.Struct, omit_defaults=True):
    """What a producer writes: id, enqueue time, headers and the payload."""

    id: str
    ts: float
    p: Any
    h: dict[str, str] = {}


class _IncomingEnvelope(msgspec.Struct):
    """An envelope as read back: the payload stays raw until its type is known."""

    id: str
    ts: float
    p: msgspec.Raw
    h: dict[str, str] = {}


class DecodedEntry(msgspec.Struct):
    """A stream entry split into envelope, payload bytes and the fields scripts maintain."""

    message_id: str
    timestamp: float
    headers: dict[str, str]
    raw_payload: msgspec.Raw
    attempts: int
    expires_at_ms: int | None
    target_group: str | None
    is_msgpack: bool


class Codec:
    """Encodes envelopes and decodes them, with one cached decoder per payload type."""

    def __init__(self, name: Serializer, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
        if max_message_size <= 0:
            raise ConfigurationError(
                f"max_message_size must be a positive number of bytes, got {max_message_size!r}"
            )
        self.name: Serializer = name
        self.max_message_size = max_message_size
        if name == "json":
            self.field = FIELD_JSON
            self._encode = msgspec.json.Encoder(enc_hook=encode_model).encode
        elif name == "msgpack":
            self.field = FIELD_MSGPACK
            self._encode = msgspec.msgpack.Encoder(enc_hook=encode_model).encode
        else:
            raise ConfigurationError(
                f"unknown serializer {name!r}: choose 'json' (default) or 'msgpack'"
            )

    def __repr__(self) -> str:
        return f"Codec({self.name!r}, max_message_size={self.max_message_size})"

    def encode(
        self,
        payload: Any,
        message_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[str, bytes]:
        """Return ``(message_id, envelope bytes)``; raise if unencodable or too large."""
        mid = message_id if message_id is not None else str(uuid.uuid4())
        if not isinstance(mid, str) or not mid:
            raise ConfigurationError(f"message_id must be a non-empty string, got {mid!r}")
        h = dict(headers) if headers else {}
        for name, value in h.items():
            if not isinstance(name, str) or not isinstance(value, str):
                # A reader validates headers as str -> str: a message sent with other
                # types would be dead-lettered as undecodable on its first read.
                raise MessageEncodeError(f"headers must map str to str, got {name!r}: {value!r}")
        envelope = Envelope(id=mid, ts=time.time(), p=payload, h=h)
        try:
            data = self._encode(envelope)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MessageEncodeError(
                f"payload of type {type(payload).__name__} cannot be encoded as {self.name}: "
                f"{exc}. Send JSON-compatible values (dict, list, str, int, float, bool, None), "
                "msgspec Structs, dataclasses, pydantic models, or datetimes/UUIDs."
            ) from exc
        if len(data) > self.max_message_size:
            raise MessageTooLargeError(
                f"encoded message is {len(data)} bytes, over max_message_size="
                f"{self.max_message_size}. Store large data elsewhere and send a reference, "
                "or raise max_message_size."
            )
        return mid, data


_CODECS: dict[str, Codec] = {}


def get_codec(name: Serializer, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Codec:
    """A shared codec for ``(name, max_message_size)``."""
    key = f"{name}:{max_message_size}"
    codec = _CODECS.get(key)
    if codec is None:
        codec = _CODECS[key] = Codec(name, max_message_size)
    return codec


_JSON_ENVELOPE = msgspec.json.Decoder(_IncomingEnvelope)
_MSGPACK_ENVELOPE = msgspec.msgpack.Decoder(_IncomingEnvelope)


def decode_entry(fields: Mapping[bytes, bytes] | None, max_size: int) -> DecodedEntry:
    """Split one stream entry into its parts, or raise :class:`MessageDecodeError`.

    Either codec's entries are accepted whatever the queue's own serializer, so a queue
    can switch serializer without stranding messages.
    """
    if not fields:
        raise MessageDecodeError("entry has no data (deleted or trimmed from the stream)")
    body = fields.get(FIELD_JSON)
    decoder: Any = _JSON_ENVELOPE
    if body is None:
        body = fields.get(FIELD_MSGPACK)
        decoder = _MSGPACK_ENVELOPE
        if body is None:
            names = ", ".join(sorted(repr(k) for k in fields)[:5])
            raise MessageDecodeError(f"entry is not a leanmq message (fields: {names})")
    if len(body) > max_size:
        raise MessageDecodeError(
            f"entry is {len(body)} bytes, over max_message_size={max_size}; left undecoded"
        )
    try:
        env = decoder.decode(body)
    # RecursionError: nesting deeper than msgspec's limit (a 2 KB entry can do that).
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise MessageDecodeError(f"undecodable envelope: {exc}") from exc
    try:
        attempts_raw = fields.get(FIELD_ATTEMPTS)
        attempts = int(attempts_raw) if attempts_raw is not None else 0
        expires_raw = fields.get(FIELD_EXPIRES)
        expires = int(expires_raw) if expires_raw is not None else None
    except ValueError as exc:
        raise MessageDecodeError(f"bad attempts or expiry field: {exc}") from exc
    group_raw = fields.get(FIELD_GROUP)
    try:
        target_group = group_raw.decode() if group_raw is not None else None
    except UnicodeDecodeError as exc:
        raise MessageDecodeError(f"bad target group field: {exc}") from exc
    return DecodedEntry(
        message_id=env.id,
        timestamp=env.ts,
        headers=env.h,
        raw_payload=env.p,
        attempts=attempts,
        expires_at_ms=expires,
        target_group=target_group,
        is_msgpack=decoder is _MSGPACK_ENVELOPE,
    )


def _is_pydantic_model(cls: object) -> bool:
    """Is ``cls`` a pydantic model class? (pydantic is never imported for this.)"""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)


def encode_model(obj: Any) -> Any:
    """The encoders' hook for what msgspec does not know: pydantic models, as JSON data."""
    if _is_pydantic_model(type(obj)):
        return obj.model_dump(mode="json")
    raise TypeError(f"objects of type {type(obj).__name__} are not supported")


def _custom_types(info: msgspec.inspect.Type) -> list[type]:
    """The classes in a type tree that msgspec cannot decode by itself (recursion-safe)."""
    found: list[type] = []
    seen: set[int] = set()
    todo: list[Any] = [info]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            if node.cls is not object:  # msgspec decodes `object` as Any
                found.append(node.cls)
        elif isinstance(node, tuple):
            todo.extend(node)
        elif isinstance(node, msgspec.inspect.Type | msgspec.inspect.Field):
            todo.extend(getattr(node, name) for name in node.__struct_fields__)
    return found


class _PydanticDecoder:
    """Decodes a payload into a type that involves pydantic models, through pydantic."""

    def __init__(self, payload_type: Any, is_msgpack: bool) -> None:
        from pydantic import TypeAdapter

        self._adapter: Any = TypeAdapter(payload_type)
        self._msgpack = msgspec.msgpack.Decoder() if is_msgpack else None

    def decode(self, raw: msgspec.Raw) -> Any:
        from pydantic import ValidationError

        try:
            if self._msgpack is not None:
                return self._adapter.validate_python(self._msgpack.decode(raw))
            return self._adapter.validate_json(bytes(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
            raise msgspec.ValidationError(f"{first['msg']} - at `${path}`{more}") from exc


_PAYLOAD_DECODERS: dict[tuple[bool, Any], Any] = {}


def payload_decoder(payload_type: Any, is_msgpack: bool = False) -> Any:
    """The decoder for ``payload_type`` in one format (built on first use, then reused).

    Types that involve pydantic models are validated by pydantic (an optional dependency);
    everything else by msgspec. A type neither can decode raises ``TypeError`` saying why.
    """
    key = (is_msgpack, payload_type)
    decoder = _PAYLOAD_DECODERS.get(key)
    if decoder is None:
        if payload_type is Any:
            decoder = msgspec.msgpack.Decoder() if is_msgpack else msgspec.json.Decoder()
        else:
            custom = _custom_types(msgspec.inspect.type_info(payload_type))
            unknown = [c for c in custom if not _is_pydantic_model(c)]
            if unknown:
                raise TypeError(
                    f"{unknown[0].__qualname__} is neither a JSON type, a msgspec Struct, a "
                    "dataclass, a TypedDict nor a pydantic model: messages cannot be decoded "
                    "into it"
                )
            if custom:
                decoder = _PydanticDecoder(payload_type, is_msgpack)
            else:
                cls: Any = msgspec.msgpack.Decoder if is_msgpack else msgspec.json.Decoder
                decoder = cls(payload_type)
        _PAYLOAD_DECODERS[key] = decoder
    return decoder


def decode_payload(entry: DecodedEntry, payload_type: Any = Any) -> Any:
    """Decode (and validate) an entry's payload; raise :class:`MessageDecodeError` with the path."""
    try:
        return payload_decoder(payload_type, entry.is_msgpack).decode(entry.raw_payload)
    except msgspec.ValidationError as exc:
        raise MessageDecodeError(f"payload validation failed: {exc}") from exc
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MessageDecodeError(f"undecodable payload: {exc}") from exc
