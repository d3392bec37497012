"""Client errors as plain text, the exception's type and message first."""

from __future__ import annotations

import re
import traceback

__all__ = ["client_error_reply", "error_headline", "plain_error"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Timeout|Failure)\b.*")
# Flower's simulation engine wraps an error as "<class 'ray.exceptions.ActorDiedError'>:<'message".
_WRAPPED = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>:<'\s*(.*?)(?:'>)?$")


def error_headline(text: str) -> str:
    """The line naming the exception ("NameError: name 'torch' is not defined"): the last line
    that starts with an exception type, else Flower's wrapped one ("ActorDiedError: ..."), else
    the last non-empty line."""
    lines = [line.strip() for line in _ANSI.sub("", str(text)).splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION.match(line):
            return line
    for line in lines:
        wrapped = _WRAPPED.match(line)
        if wrapped and wrapped[2]:
            return f"{wrapped[1]}: {wrapped[2]}"
    return lines[-1] if lines else ""


def plain_error(text: str) -> str:
    """`text` without ANSI colour codes, its headline (`error_headline`) first, then the full
    text (a traceback, wrapper lines) after a blank line when there is more; a text that already
    starts with its headline (`client_error_reply`'s) is kept as it is."""
    clean = _ANSI.sub("", str(text)).strip()
    head = error_headline(clean)
    return clean if clean.startswith(head) else f"{head}\n\n{clean}"


def client_error_reply(message, exc: BaseException, limit: int | None = None):
    """The error reply (a Flower `Message`) to `message` for a ClientApp that raised `exc`, as
    Flower's engines send one: its reason is "Type: message", a blank line, then the traceback
    (`limit` frames at most)."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    trace = "".join(traceback.format_exception(exc, limit=limit)).strip()
    error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{head}\n\n{trace}")
    return Message(error, reply_to=message)
