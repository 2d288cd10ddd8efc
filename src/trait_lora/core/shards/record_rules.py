"""The rules a fine-tuning record must follow, per format: what Together's server would refuse.

Kept apart from the streaming pass in :mod:`trait_lora.core.shards.validation`: these run once per record of a
possibly huge file, so the well-formed path does no string building.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("chat", "prompt_completion", "text")
ROLES = ("system", "user", "assistant")
_ROLE_LIST = ", ".join(ROLES)

FORMAT_HELP = (
    'each line must be one of: {"messages": [{"role": ..., "content": ...}, ...]} (chat), '
    '{"prompt": ..., "completion": ...} (prompt_completion) or {"text": ...} (text)'
)


def short(value: Any, limit: int = 40) -> str:
    """A repr fit for an error line: a 1 MB bogus role must not become a 1 MB message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "chat"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def _nonempty_str(record: dict[str, Any], key: str) -> str | None:
    """The problem with ``record[key]`` as a training string, or None when it is fine."""
    if key not in record:
        return f"missing {key!r}: add a non-empty string"
    value = record[key]
    if not isinstance(value, str):
        return f"{key!r} must be a string, got {type_name(value)}"
    if not value.strip():
        return f"{key!r} is empty: give it some text"
    return None


def _check_chat(messages: Any) -> list[str]:
    """Every rule a chat record breaks; ordering is only judged between turns with a known role.

    This runs once per record of a possibly huge file, so the well-formed path does no string building.
    """
    if type(messages) is not list:
        return [f"'messages' must be a list of {{role, content}} objects, got {type_name(messages)}"]
    if not messages:
        return ["'messages' is empty: add a user turn and an assistant reply"]
    out: list[str] = []
    previous: str | None = None  # role of the last user/assistant turn; "?" after an unreadable one
    broken = False  # some message has no usable role or content
    assistant_seen = False
    answered = False
    for i, msg in enumerate(messages):
        if type(msg) is not dict:
            out.append(f"messages[{i}] must be an object with 'role' and 'content', got {type_name(msg)}")
            previous, broken = "?", True
            continue
        role = msg.get("role")
        content = msg.get("content")
        if type(content) is not str:
            broken = True
            if "content" not in msg:
                out.append(f"messages[{i}] has no 'content': add the message text as a string")
            else:
                out.append(f"messages[{i}].content must be a string, got {type_name(content)}")
        if role == "user":
            if previous == "user":
                out.append(f"messages[{i}]: two 'user' messages in a row; user and assistant must alternate")
            previous = "user"
        elif role == "assistant":
            if previous is None:
                out.append(
                    f"messages[{i}]: the first non-system message must be from 'user', got 'assistant'"
                )
            elif previous == "assistant":
                out.append(
                    f"messages[{i}]: two 'assistant' messages in a row; user and assistant must alternate"
                )
            previous = "assistant"
            assistant_seen = True
            if not answered and type(content) is str and content and not content.isspace():
                answered = True
        elif role == "system":
            if previous is not None:
                out.append(
                    f"messages[{i}] is a system message after the conversation started; "
                    "move system messages to the start"
                )
        else:
            if "role" not in msg:
                out.append(f"messages[{i}] has no 'role': use one of {_ROLE_LIST}")
            else:
                out.append(f"messages[{i}].role is {short(role)}; use one of {_ROLE_LIST}")
            previous, broken = "?", True
    if broken:
        # A broken message may well be the missing reply (a misspelt role, say): don't pile on guesses.
        return out
    if not assistant_seen:
        out.append("no assistant message: add at least one assistant reply to train on")
    elif not answered:
        out.append("every assistant message is empty: at least one reply needs text to train on")
    return out


def check_record(fmt: str, record: dict[str, Any]) -> list[str]:
    if fmt == "chat":
        return _check_chat(record["messages"])
    keys = ("prompt", "completion") if fmt == "prompt_completion" else ("text",)
    return [p for p in (_nonempty_str(record, k) for k in keys) if p is not None]
