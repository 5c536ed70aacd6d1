"""The common SFT record formats, detected from a record's fields and converted to chat messages.

Every format becomes a list of {"role": system|user|assistant, "content": str}; the `text` format
(plain pre-training text) becomes a single message with role "text".
"""

from __future__ import annotations

from typing import Any, Callable

from mixjax.errors import MixjaxError

Messages = list[dict[str, str]]

_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
    "system": "system",
}
_CHAT_ROLES = {"system", "user", "assistant"}


def _field(record: dict, name: str) -> Any:
    if name not in record:
        raise ValueError(f"missing field '{name}'")
    return record[name]


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field '{name}' is {type(value).__name__}, expected a string")
    return value


def _from_messages(record: dict) -> Messages:
    messages = _field(record, "messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list")
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError("each message needs 'role' and 'content'")
        if m["role"] not in _CHAT_ROLES:
            raise ValueError(f"unknown role '{m['role']}' (expected system, user or assistant)")
        out.append({"role": m["role"], "content": _text(m["content"], "content")})
    return out


def _from_sharegpt(record: dict) -> Messages:
    turns = _field(record, "conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversations' must be a non-empty list")
    out = []
    for t in turns:
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise ValueError("each conversation turn needs 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(str(t["from"]).lower())
        if role is None:
            raise ValueError(f"unknown speaker '{t['from']}' in 'conversations'")
        out.append({"role": role, "content": _text(t["value"], "value")})
    return out


def _from_prompt_response(record: dict) -> Messages:
    return [
        {"role": "user", "content": _text(_field(record, "prompt"), "prompt")},
        {"role": "assistant", "content": _text(_field(record, "response"), "response")},
    ]


def _from_prompt_completion(record: dict) -> Messages:
    return [
        {"role": "user", "content": _text(_field(record, "prompt"), "prompt")},
        {"role": "assistant", "content": _text(_field(record, "completion"), "completion")},
    ]


def _from_question_answer(record: dict) -> Messages:
    return [
        {"role": "user", "content": _text(_field(record, "question"), "question")},
        {"role": "assistant", "content": _text(_field(record, "answer"), "answer")},
    ]


def _from_alpaca(record: dict) -> Messages:
    instruction = _text(_field(record, "instruction"), "instruction")
    extra = record.get("input") or ""
    prompt = f"{instruction}\n\n{_text(extra, 'input')}" if extra else instruction
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": _text(_field(record, "output"), "output")},
    ]


def _from_openmath(record: dict) -> Messages:
    return [
        {"role": "user", "content": _text(_field(record, "problem"), "problem")},
        {"role": "assistant",
         "content": _text(_field(record, "generated_solution"), "generated_solution")},
    ]


def _from_orca(record: dict) -> Messages:
    system = record.get("system_prompt") or ""
    messages = [{"role": "system", "content": _text(system, "system_prompt")}] if system else []
    return messages + [
        {"role": "user", "content": _text(_field(record, "question"), "question")},
        {"role": "assistant", "content": _text(_field(record, "response"), "response")},
    ]


def _from_text(record: dict) -> Messages:
    return [{"role": "text", "content": _text(_field(record, "text"), "text")}]


# Detection order matters: the first format whose required fields are all present wins.
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict], Messages]]] = {
    "messages": (("messages",), _from_messages),
    "sharegpt": (("conversations",), _from_sharegpt),
    "orca": (("system_prompt", "question", "response"), _from_orca),
    "openmath": (("problem", "generated_solution"), _from_openmath),
    "alpaca": (("instruction", "output"), _from_alpaca),
    "prompt_response": (("prompt", "response"), _from_prompt_response),
    "prompt_completion": (("prompt", "completion"), _from_prompt_completion),   # OpenAI/TRL SFT
    "question_answer": (("question", "answer"), _from_question_answer),          # GSM8K, QA sets
    "text": (("text",), _from_text),
}


def detect_format(record: dict, where: str) -> str:
    """The first format whose fields the record has; `where` names the file and line for errors."""
    if not isinstance(record, dict):
        raise MixjaxError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, (fields, _) in FORMATS.items():
        if all(f in record for f in fields):
            return name
    raise MixjaxError(
        f"{where}: unknown format (fields {sorted(record)[:8]}); expected one of "
        f"{', '.join(FORMATS)} or pass `format`")


def check_format_name(name: str, where: str = "`format`") -> str:
    if name not in FORMATS:
        raise MixjaxError(f"{where}: unknown format '{name}'; expected one of {', '.join(FORMATS)}")
    return name


def to_messages(record: dict, format_name: str, where: str) -> Messages:
    """Convert one record; errors name `where` (file:line) and the problem."""
    if not isinstance(record, dict):
        raise MixjaxError(f"{where}: expected a JSON object, got {type(record).__name__}")
    try:
        return FORMATS[format_name][1](record)
    except ValueError as e:
        raise MixjaxError(f"{where}: {e} (format {format_name})") from None
