"""Import the application of ``leanmq-worker module:attr`` with precise errors.

:func:`import_from_string` imports ``module`` and walks the dotted ``attr`` path;
:func:`resolve_target` turns what it found into the client to run and the queues to
serve. Every mistake on the command line raises :class:`AppImportError`, whose message is
one line meant for the terminal; an error *inside* the application's module (a syntax
error, a missing dependency) is left to propagate with its traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from leanmq_async.client import LeanMQ
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.queue import Queue

__all__ = [
    "AppImportError",
    "handlers_of",
    "import_from_string",
    "resolve_target",
    "split_import_string",
]


class AppImportError(Exception):
    """The import string does not name a usable application (a command-line mistake)."""


def split_import_string(spec: str) -> tuple[str, str]:
    """``"pkg.module:attr.sub"`` -> ``("pkg.module", "attr.sub")``; raise on a malformed one."""
    module, sep, attrs = spec.partition(":")
    if (
        not sep
        or not module
        or not attrs
        or ":" in attrs
        or any(not part.isidentifier() for part in attrs.split("."))
        or any(not part.isidentifier() for part in module.split("."))
    ):
        raise AppImportError(
            f'import string "{spec}" must be in the form "<module>:<attribute>", '
            'e.g. "myapp.tasks:mq"'
        )
    return module, attrs


def _is_target_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """Is the module we were asked for (or one of its packages) the one not found?"""
    missing = exc.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def import_from_string(spec: str) -> Any:
    """The object named by ``"module:attr"`` (``attr`` may be dotted)."""
    module_name, attrs = split_import_string(spec)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_target_missing(exc, module_name):
            raise  # the application itself imports something that is missing
        hint = "check the name and --app-dir"
        if module_name.endswith(".py"):
            hint = f'name the module, not the file: "{module_name[:-3]}:{attrs}"'
        raise AppImportError(f'could not import module "{module_name}" ({exc}); {hint}') from None
    except ConfigurationError as exc:
        raise AppImportError(f'error while importing "{module_name}": {exc}') from None
    obj: Any = module
    walked: list[str] = []
    for part in attrs.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = f'"{module_name}"' if not walked else f'"{module_name}:{".".join(walked)}"'
            raise AppImportError(f'attribute "{part}" not found in {where}') from None
        walked.append(part)
    return obj


def resolve_target(obj: Any, spec: str) -> tuple[LeanMQ, list[Queue] | None]:
    """``(client, queues)`` for a LeanMQ client, a Queue, or a list/tuple of Queues.

    ``queues`` is None for a client (all its handlers run), else the queues whose
    handlers run.
    """
    if isinstance(obj, LeanMQ):
        return obj, None
    if isinstance(obj, Queue):
        return obj.mq, [obj]
    if isinstance(obj, list | tuple) and obj and all(isinstance(q, Queue) for q in obj):
        queues: Sequence[Queue] = obj
        clients = {id(q.mq) for q in queues}
        if len(clients) > 1:
            raise AppImportError(
                f'"{spec}" holds queues of {len(clients)} different LeanMQ clients; '
                "a worker runs the handlers of one client"
            )
        return queues[0].mq, list(queues)
    kind = type(obj).__name__
    if isinstance(obj, list | tuple):
        kind = f"{kind} of {', '.join(sorted({type(x).__name__ for x in obj})) or 'nothing'}"
    raise AppImportError(
        f'"{spec}" is of type {kind}; expected a LeanMQ client, a Queue, or a list of Queues'
    )


def handlers_of(mq: LeanMQ, queues: list[Queue] | None) -> int:
    """How many handlers a worker for ``(mq, queues)`` would run."""
    wanted = set(queues) if queues is not None else None
    return sum(1 for h in mq.handlers if wanted is None or h.queue in wanted)
