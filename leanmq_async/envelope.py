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

import dataclasses
import math
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
        payload_type: Any = Any,
    ) -> tuple[str, bytes]:
        """Return ``(message_id, envelope bytes)``; raise if unencodable or too large.

        ``payload_type``: the type readers decode the payload as (a typed queue's); the
        payload must decode back equal through it.
        """
        mid = message_id if message_id is not None else str(uuid.uuid4())
        if not isinstance(mid, str) or not mid:
            raise ConfigurationError(f"message_id must be a non-empty string, got {mid!r}")
        h = dict(headers) if headers else {}
        for name, value in h.items():
            if not isinstance(name, str) or not isinstance(value, str):
                # A reader validates headers as str -> str: a message sent with other
                # types would be dead-lettered as undecodable on its first read.
                raise MessageEncodeError(f"headers must map str to str, got {name!r}: {value!r}")
        try:
            body = self._encode(payload)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MessageEncodeError(
                f"payload of type {type(payload).__name__} cannot be encoded as {self.name}: "
                f"{exc}. Send JSON-compatible values (dict, list, str, int, float, bool, None), "
                "msgspec Structs, dataclasses or pydantic models."
            ) from exc
        self._check_exact(payload, body, payload_type)
        data = self._encode(Envelope(id=mid, ts=time.time(), p=msgspec.Raw(body), h=h))
        if len(data) > self.max_message_size:
            raise MessageTooLargeError(
                f"encoded message is {len(data)} bytes, over max_message_size="
                f"{self.max_message_size}. Store large data elsewhere and send a reference, "
                "or raise max_message_size."
            )
        return mid, data

    def _check_exact(self, payload: Any, body: bytes, payload_type: Any = Any) -> None:
        """Refuse a payload that would not arrive exactly as sent (the module's payload rule).

        Untyped values (dicts, lists, scalars) must decode back equal to themselves; a
        Struct, dataclass, attrs or pydantic instance must decode back equal through a
        decoder of its own type (what a handler annotated with that type uses). On a typed
        queue a payload may also decode back equal through the queue's type (what its
        readers use): ``[Item(...)]`` on a ``Queue[list[Item]]``. NaN never compares equal,
        so it is always refused. Only the bytes already encoded are decoded: no walk of the
        payload unless it is refused (then to name the offending path).
        """
        kind = type(payload)
        if kind is str or kind is int or kind is bool or payload is None:
            return  # the common scalars: nothing to lose
        if kind is float and math.isfinite(payload):
            return
        is_msgpack = self.name == "msgpack"
        if kind is not dict and kind is not list and _is_typed_object(payload):
            types = [kind if payload_type is Any else payload_type]
        else:
            types = [Any] if payload_type is Any else [Any, payload_type]
        first: Any = None
        for i, type_ in enumerate(types):
            try:
                back = payload_decoder(type_, is_msgpack).decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
                if i == 0:
                    first = exc
                continue
            if back == payload:
                return
            if i == 0:
                first = back
        if isinstance(first, Exception):
            raise MessageEncodeError(self._inexact(f"$ does not decode back: {first}")) from first
        raise MessageEncodeError(
            self._inexact(_difference(payload, first, "$") or "$ differs after a round trip")
        )

    def _inexact(self, detail: str) -> str:
        return (
            f"payload would not arrive exactly as sent ({self.name}): {detail}. Convert it to "
            "JSON-native values (dicts with str keys, lists, str, int, finite floats, bool, "
            "None), or send a msgspec Struct or dataclass and annotate the handler with that "
            "type: its typed fields (datetime, Decimal, UUID, bytes, tuple, set...) are "
            "decoded back exactly. NaN and infinity are never accepted."
        )


def _is_typed_object(value: Any) -> bool:
    """A msgspec Struct, dataclass, attrs or pydantic instance (decoded back by its type)."""
    kind = type(value)
    return (
        isinstance(value, msgspec.Struct)
        or dataclasses.is_dataclass(kind)
        or hasattr(kind, "__attrs_attrs__")
        or _is_pydantic_model(kind)
    )


def _field_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, msgspec.Struct):
        return value.__struct_fields__
    if dataclasses.is_dataclass(value):
        return tuple(f.name for f in dataclasses.fields(value))
    return tuple(a.name for a in type(value).__attrs_attrs__)


_ABSENT: Any = object()


def _difference(sent: Any, back: Any, path: str) -> str | None:
    """Where ``back`` (the decoded value) first differs from ``sent``, and how; None if equal.

    Only called once a payload was found inexact, to name the offending path.
    """
    if isinstance(sent, float) and not math.isfinite(sent):
        return f"{path} is {sent!r}: NaN and infinity have no exact encoding"
    kind = type(sent)
    if kind is dict and type(back) is dict:
        for key, value in sent.items():
            sub = (
                f"{path}.{key}"
                if isinstance(key, str) and key.isidentifier()
                else f"{path}[{key!r}]"
            )
            if key not in back:
                return f"{path} has the key {key!r} of type {type(key).__name__}: keys must be str"
            found = _difference(value, back[key], sub)
            if found:
                return found
        return None
    if kind is list and type(back) is list and len(sent) == len(back):
        for i, (a, b) in enumerate(zip(sent, back, strict=True)):
            found = _difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if _is_typed_object(sent) and type(back) is kind:
        for name in _field_names(sent):
            found = _difference(getattr(sent, name), getattr(back, name, _ABSENT), f"{path}.{name}")
            if found:
                return found
        return None
    if kind is not type(back):
        return f"{path} is a {kind.__name__} and would arrive as a {type(back).__name__}"
    if sent != back:
        return f"{path} is {sent!r} and would arrive as {back!r}"
    return None


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
