"""What every importer shares: the error, reading JSON with places, the plan, the run builder.

An importer never writes while it reads. It turns a whole file into a `FilePlan` (streams,
each a list of planned events, branches pointing at their parent and fork version) and only
a valid plan reaches the store (see `apollo_es.importers.writer`). A malformed file
therefore writes nothing, and the error names the file, the place in it (a JSON path such as
`$.history[4].tool_calls[0]`, or a line and column) and the reason.

Event ids are derived from the content: uuid5 of (format, stream id, index in the stream,
SHA-256 of the event's payload). Importing the same file twice appends nothing; importing a
file that grew appends only its new tail.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from apollo_es.errors import ApolloError
from events import (
    AgentActed,
    ContentBlock,
    ContextSummarized,
    Event,
    HumanIntervened,
    RunFinished,
    RunStarted,
    ToolCall,
    ToolObserved,
    ToolSpec,
    Usage,
)
from events.kinds import ObservationOrigin, ObservationWindow

if TYPE_CHECKING:
    from apollo_es.importers.fidelity import Fidelity

__all__ = [
    "DEFAULT_REAL_USER_TAGS",
    "FilePlan",
    "PlannedEvent",
    "RecordedPrompt",
    "RunBuilder",
    "Source",
    "StreamPlan",
    "TrajectoryImportError",
    "count",
    "default_stream_id",
    "money",
    "parse_arguments",
    "real_user_text",
    "sanitize_stream_id",
    "to_timestamp",
]

DEFAULT_REAL_USER_TAGS: tuple[str, ...] = ("real_user", "real_user_message", "real-user", "human_message", "user_feedback")
"""Tags that mark a user message as written by a person (not by the task or a tool).

InnovatorBench's agent wraps annotator messages as `<real_user>...</real_user>` (its system
prompt: "If context is provided in the <real_user></real_user> tag, follow it"); apollo-es
itself renders them as `<real_user_message>`. The others are spellings seen in similar
setups. Override with `real_user_tags=` or `apollo-es import --real-user-tag`.
"""

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/apollo-es/importers")
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~@/+=-]{0,199}")
_encoder = msgspec.json.Encoder()


class TrajectoryImportError(ApolloError):
    """A trajectory file that cannot be imported; nothing from it was written.

    `file` is the path, `place` where in it (a JSON path like `$.history[3].content`, or
    `line 12, column 5`; empty for the file as a whole), `reason` what is wrong.
    """

    def __init__(self, file: str | Path, place: str, reason: str) -> None:
        self.file, self.place, self.reason = str(file), place, reason
        super().__init__(f"{file}: {place}: {reason}" if place else f"{file}: {reason}")


# -- reading -------------------------------------------------------------------------------


class Source:
    """One input file (or directory) being read, so every check can name it in its error."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def fail(self, place: str, reason: str) -> NoReturn:
        raise TrajectoryImportError(self.path, place, reason)

    def want(self, value: Any, kind: type | tuple[type, ...], place: str, what: str = "") -> Any:
        """`value` if it has JSON type `kind` (dict, list, str, int/float, bool), else fail."""
        if isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind)):
            return value
        expected = what or " or ".join(_json_type_name(k) for k in _as_tuple(kind))
        self.fail(place, f"expected {expected}, found {_describe(value)}")

    def field(self, obj: dict, key: str, kind: type | tuple[type, ...], place: str, *, required: bool = False, default: Any = None) -> Any:
        """`obj[key]` checked against `kind`; a missing key or null is `default` unless required."""
        value = obj.get(key)
        if value is None:
            if required:
                self.fail(place, f"missing required field {key!r}")
            return default
        return self.want(value, kind, f"{place}.{key}")

    def text(self, value: Any, place: str) -> str:
        """Message content as text: a string, null, or a list of content blocks.

        Text blocks are joined with newlines; an image block becomes `[image]`; reasoning
        blocks are left out here (see `reasoning_of_blocks`).
        """
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            parts = []
            for i, block in enumerate(value):
                if isinstance(block, str):
                    parts.append(block)
                    continue
                block = self.want(block, dict, f"{place}[{i}]", "a string or a content block object")
                kind = block.get("type", "text")
                if kind in ("thinking", "reasoning", "redacted_thinking"):
                    continue
                if kind in ("image", "image_url", "input_image"):
                    parts.append("[image]")
                elif kind == "refusal":
                    parts.append(self.want(block.get("refusal", ""), str, f"{place}[{i}].refusal"))
                elif "text" in block:
                    parts.append(self.want(block["text"], str, f"{place}[{i}].text"))
                else:
                    self.fail(f"{place}[{i}]", f"content block of type {kind!r} has no text")
            return "\n".join(parts)
        self.fail(place, f"expected text or a list of content blocks, found {_describe(value)}")

    def load_json(self, path: Path | None = None) -> Any:
        """Parse a JSON file; a syntax error names its line and column."""
        path = path or self.path
        data = self._read_bytes(path)
        try:
            return msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError):
            pass
        # slower, but says where the problem is (and accepts NaN/Infinity, which the checks
        # of numbers then refuse or ignore)
        return _checked_json(path, "", data.decode("utf-8", errors="replace"))

    def load_jsonl(self) -> Iterator[tuple[int, Any]]:
        """(line number, value) of every non-blank line of a JSON-lines file."""
        data = self._read_bytes(self.path).decode("utf-8", errors="replace")
        for number, line in enumerate(data.splitlines(), 1):
            if line.strip():
                yield number, _checked_json(self.path, f"line {number}", line)

    def _read_bytes(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except IsADirectoryError:
            raise TrajectoryImportError(path, "", "is a directory, expected a file") from None
        except OSError as exc:
            raise TrajectoryImportError(path, "", f"cannot read: {exc.strerror or exc}") from None


MAX_DEPTH = 200
"""Deeper JSON is refused: no trajectory nests that far, and Python's parser would overflow."""


def _checked_json(path: Path, line: str, text: str) -> Any:
    """`text` parsed; an error names the line and column, a lone surrogate its JSON path."""
    depth = _max_depth(text)
    if depth > MAX_DEPTH:
        raise TrajectoryImportError(path, line, f"nested {depth} levels deep, more than the {MAX_DEPTH} allowed")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{line}, column {exc.colno}" if line else f"line {exc.lineno}, column {exc.colno}"
        raise TrajectoryImportError(path, where, f"not valid JSON: {exc.msg}") from None
    place = _surrogate_place(value, "$")
    if place is not None:
        raise TrajectoryImportError(path, f"{line}: {place}" if line else place, "contains a lone surrogate (\\ud800-\\udfff), not text")
    return value


def _max_depth(text: str) -> int:
    """The deepest nesting of arrays and objects, brackets inside strings aside (an upper
    bound is enough: it only decides whether the parser may recurse)."""
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        char = token.group()[0]
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _surrogate_place(value: Any, place: str) -> str | None:
    """The JSON path of the first string (or key) holding a lone surrogate, or None."""
    stack = [(value, place)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if _SURROGATE.search(key):
                    return where
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _json_type_name(kind: type) -> str:
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false"}.get(kind, kind.__name__)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parse_arguments(arguments: Any) -> tuple[dict[str, Any], str | None]:
    """(arguments, raw_arguments) of a tool call as the model wrote it.

    A JSON object (as text or already parsed) is the arguments; blank or missing means none;
    anything else is kept verbatim in `raw_arguments` with `arguments={}` (a malformed call is
    recorded, so a rule can flag it, never dropped).
    """
    if isinstance(arguments, dict):
        return arguments, None
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}, None
    if not isinstance(arguments, str):
        return {}, json.dumps(arguments, ensure_ascii=False)
    try:
        value = json.loads(arguments)
    except (json.JSONDecodeError, RecursionError):
        return {}, arguments
    return (value, None) if isinstance(value, dict) else ({}, arguments)


def real_user_text(text: str, tags: tuple[str, ...]) -> str | None:
    """The inner text when `text` is wholly wrapped in one of the real-user `tags`, else None."""
    stripped = text.strip()
    for tag in tags:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if stripped.startswith(opening) and stripped.endswith(closing) and len(stripped) >= len(opening) + len(closing):
            inner = stripped[len(opening): len(stripped) - len(closing)]
            if closing not in inner:
                return inner.strip("\n")
    return None


def to_timestamp(value: Any) -> str | None:
    """A source timestamp in the store's format (ISO-8601 UTC, microseconds, `Z`), or None.

    Accepts ISO-8601 text (a time without a zone is taken as UTC: the sources write local
    time without saying which) and Unix epochs in seconds or milliseconds.
    """
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, (int, float)):
            seconds = value / 1000 if value > 1e11 else value
            moment = datetime.fromtimestamp(seconds, timezone.utc)
        elif isinstance(value, str) and value.strip():
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sanitize_stream_id(text: str) -> str:
    """`text` made into a valid stream id: other characters become `-`, long ids keep a hash."""
    cleaned = re.sub(r"[^A-Za-z0-9._:~@/+=-]+", "-", text).strip("-") or "run"
    if not cleaned[0].isalnum():
        cleaned = "r" + cleaned
    if len(cleaned) > 200:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        cleaned = cleaned[:187] + "-" + digest
    return cleaned


def default_stream_id(fmt: str, path: str | Path) -> str:
    """`<format>/<file name without extension>`, e.g. `swe-agent/marshmallow-1867.default`."""
    path = Path(path)
    name = path.name if path.is_dir() else path.stem
    return sanitize_stream_id(f"{fmt}/{name}")


def valid_stream_id(stream_id: str) -> bool:
    return _STREAM_ID.fullmatch(stream_id) is not None


# -- the plan ------------------------------------------------------------------------------


@dataclass(eq=False)
class PlannedEvent:
    """An event to import, with its source timestamp and the planned event it answers."""

    event: Event
    recorded_at: str | None = None
    causation: PlannedEvent | None = None
    place: str = ""
    """Where in the file it comes from, for errors found when it is validated."""
    event_id: str = ""
    """Assigned by `FilePlan.assign_ids`, from the content."""


@dataclass(frozen=True)
class RecordedPrompt:
    """The messages a source agent sent its model, as the source file recorded them, and the
    version of the imported stream whose context must equal them."""

    version: int
    messages: list[tuple[str, str]]
    """(role, text) in order, the system prompt included."""
    place: str
    known_difference: str = ""
    """Why this prompt cannot be reproduced, when the importer knows (shown with the mismatch)."""


@dataclass(eq=False)
class StreamPlan:
    """One stream to write: a run, or a branch of an earlier stream of the same plan."""

    stream_id: str
    events: list[PlannedEvent] = field(default_factory=list)
    parent_id: str | None = None
    fork_version: int | None = None
    reason: str = ""
    prompts: list[RecordedPrompt] = field(default_factory=list)
    """The source's own record of what its model was sent, checked by `importers.fidelity`."""
    notes: list[str] = field(default_factory=list)
    """What the import cannot reproduce and why; written into `RunStarted.import_notes`."""
    fidelity: Fidelity | None = None
    """The comparison of the fold with `prompts`, once `importers.fidelity.record_notes` ran."""

    @property
    def first_version(self) -> int:
        """The version of `events[0]`: after the fork and its `BranchCreated` for a branch."""
        return 1 if self.fork_version is None else self.fork_version + 2


@dataclass(eq=False)
class FilePlan:
    """Everything one input file becomes, validated, before anything is written."""

    format: str
    path: str
    streams: list[StreamPlan]
    warnings: list[str] = field(default_factory=list)

    def assign_ids(self) -> None:
        """Content-derived event ids: uuid5(format, stream id, index, sha256(payload)).

        A person's reject or approve names the action it judges by that action's id, known
        only now: it is filled in from the planned event's `causation` before hashing.
        """
        for stream in self.streams:
            for index, planned in enumerate(stream.events):
                event = planned.event
                if isinstance(event, HumanIntervened) and event.kind in ("reject", "approve") and planned.causation is not None:
                    planned.event = msgspec.structs.replace(event, target_event_id=planned.causation.event_id)
                digest = hashlib.sha256(_encoder.encode(planned.event)).hexdigest()
                planned.event_id = str(uuid.uuid5(_NAMESPACE, f"{self.format}\n{stream.stream_id}\n{index}\n{digest}"))

    @property
    def event_count(self) -> int:
        return sum(len(s.events) for s in self.streams)


# -- building a run ------------------------------------------------------------------------


class RunBuilder:
    """Appends planned events for one stream, keeping track of tool calls awaiting results.

    Every importer maps its format onto these few calls, so the rules that make a fold
    reproduce the source (which call a result answers, where human messages go) live here.
    """

    def __init__(self, stream: StreamPlan, *, model: str = "", real_user_tags: tuple[str, ...] = DEFAULT_REAL_USER_TAGS, annotator: str = "imported") -> None:
        self.stream = stream
        self.model = model
        self.real_user_tags = real_user_tags
        self.annotator = annotator
        self.pending: dict[str, tuple[PlannedEvent, str]] = {}
        """Tool call id -> (the action that made the call, tool name), oldest first."""
        self.last_action: PlannedEvent | None = None
        self.steps = 0

    @property
    def next_version(self) -> int:
        return self.stream.first_version + len(self.stream.events)

    @property
    def head_version(self) -> int:
        """The version of the newest planned event (the fork version if there is none yet)."""
        return self.next_version - 1

    def add(self, event: Event, at: str | None = None, *, causation: PlannedEvent | None = None, place: str = "") -> PlannedEvent:
        planned = PlannedEvent(event, at, causation, place)
        self.stream.events.append(planned)
        return planned

    def start(self, *, task_id: str, task: str, system_prompt: str = "", tools: list[ToolSpec] | None = None, model: str = "",
              provider: str = "", environment: str = "", tags: list[str] | None = None, at: str | None = None, place: str = "",
              sampling: dict[str, Any] | None = None, demonstrations: list[str] | None = None,
              observation_window: ObservationWindow | None = None) -> PlannedEvent:
        self.model = self.model or model
        return self.add(
            RunStarted(task_id=task_id, task=task, system_prompt=system_prompt, tools=tools or [], model=model, provider=provider,
                       environment=environment, tags=tags or [], sampling=sampling or {}, demonstrations=demonstrations or [],
                       observation_window=observation_window),
            at, place=place,
        )

    def act(self, *, text: str = "", reasoning: str = "", tool_calls: list[ToolCall] | None = None, model: str | None = None,
            stop_reason: str = "", usage: Usage | None = None, latency_ms: float = 0.0, at: str | None = None,
            place: str = "", reasoning_signature: str = "", cost_usd: float | None = None,
            blocks: list[ContentBlock] | None = None) -> PlannedEvent:
        calls = list(tool_calls or [])
        action = self.add(
            AgentActed(model=model or self.model, text=text, reasoning=reasoning, reasoning_signature=reasoning_signature,
                       tool_calls=calls, stop_reason=stop_reason, usage=usage or Usage(), latency_ms=latency_ms, cost_usd=cost_usd,
                       blocks=blocks or []),
            at, place=place,
        )
        self.pending = {call.id: (action, call.name) for call in calls}
        self.last_action = action
        self.steps += 1
        return action

    def observe(self, output: str, *, call_id: str | None = None, tool_name: str = "", is_error: bool = False,
                exit_code: int | None = None, duration_ms: float = 0.0, at: str | None = None, place: str = "",
                rebind: bool = True, origin: ObservationOrigin = "tool") -> PlannedEvent:
        """A tool result. Its call id names a pending call; a missing or unknown id is bound
        to the oldest pending call when `rebind` (hand-edited files carry stale ids); with no
        call pending it is feedback from the environment (a user message)."""
        if call_id not in self.pending and rebind and self.pending:
            call_id = next(iter(self.pending))
        if call_id is None or call_id not in self.pending:
            return self.environment(output, at=at, place=place, is_error=is_error, exit_code=exit_code)
        action, name = self.pending.pop(call_id)
        return self.add(
            ToolObserved(tool_call_id=call_id, output=output, tool_name=tool_name or name, is_error=is_error,
                         exit_code=exit_code, duration_ms=duration_ms, origin=origin),
            at, causation=action, place=place,
        )

    def environment(self, text: str, *, at: str | None = None, place: str = "", is_error: bool = False, exit_code: int | None = None) -> PlannedEvent:
        """A user message that is not the task and not a person: the fold shows it verbatim."""
        return self.add(ToolObserved(tool_call_id="", output=text, is_error=is_error, exit_code=exit_code), at,
                        causation=self.last_action, place=place)

    def human(self, message: str, *, at: str | None = None, place: str = "", annotator: str | None = None,
              verbatim: bool = False) -> PlannedEvent:
        """A person's message; `verbatim` when the source agent saw it as a plain user turn."""
        return self.add(HumanIntervened(annotator=annotator or self.annotator, kind="guidance", message=message,
                                        seen_version=self.head_version or None, verbatim=verbatim), at, place=place)

    def reject(self, action: PlannedEvent, message: str, *, at: str | None = None, place: str = "") -> PlannedEvent:
        """A person refused `action` in the source (OpenHands' user_rejected): masked for training."""
        return self.add(HumanIntervened(annotator=self.annotator, kind="reject", message=message,
                                        seen_version=self.head_version or None), at, causation=action, place=place)

    def user(self, text: str, *, at: str | None = None, place: str = "") -> PlannedEvent:
        """A user message after the task: a person's if wrapped in a real-user tag, else the environment's."""
        inner = real_user_text(text, self.real_user_tags)
        if inner is not None:
            return self.human(inner, at=at, place=place)
        return self.environment(text, at=at, place=place)

    def summarize(self, summary: str, *, replaces_from: int, replaces_to: int, model: str = "", usage: Usage | None = None,
                  at: str | None = None, place: str = "", prompt_id: str = "") -> PlannedEvent:
        return self.add(ContextSummarized(summary=summary, replaces_from=replaces_from, replaces_to=replaces_to, model=model,
                                          usage=usage or Usage(), prompt_id=prompt_id), at, place=place)

    def finish(self, status: str, *, final_answer: str = "", error: str = "", at: str | None = None, place: str = "") -> PlannedEvent:
        return self.add(RunFinished(status=status, final_answer=final_answer, error=error), at, place=place)

    def finish_unless_finished(self) -> None:
        """End a source that does not say how it ended with status `imported`, so it is not listed as open."""
        if not self.stream.events or not isinstance(self.stream.events[-1].event, RunFinished):
            self.finish("imported")


def count(value: Any) -> int | None:
    """A token or call count from a source file: a finite number from 0 to 2**53, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if 0 <= value <= 2**53 else None


def money(value: Any) -> float | None:
    """A cost in dollars from a source file: a finite, non-negative number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def openai_usage(raw: Any) -> Usage:
    """Usage from an OpenAI-style (or litellm/Anthropic-flavoured) `usage` object; zeros if absent."""
    if not isinstance(raw, dict):
        return Usage()

    def number(*keys: str, within: dict | None = None) -> int:
        source = raw if within is None else within
        for key in keys:
            value = count(source.get(key))
            if value is not None:
                return value
        return 0

    details = raw.get("prompt_tokens_details") if isinstance(raw.get("prompt_tokens_details"), dict) else {}
    return Usage(
        input_tokens=number("prompt_tokens", "input_tokens"),
        output_tokens=number("completion_tokens", "output_tokens"),
        cache_read_tokens=number("cache_read_input_tokens") or number("cached_tokens", within=details),
        cache_write_tokens=number("cache_creation_input_tokens"),
    )


def reasoning_of(message: dict) -> tuple[str, str]:
    """(reasoning, signature) of an assistant message in any of the usual spellings."""
    for key in ("reasoning_content", "reasoning", "thinking"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value, ""
    texts, signature = [], ""
    for source in (message.get("thinking_blocks"), message.get("content")):
        if not isinstance(source, list):
            continue
        for block in source:
            if isinstance(block, dict) and block.get("type") in ("thinking", "reasoning"):
                text = block.get("thinking", block.get("text", ""))
                if isinstance(text, str):
                    texts.append(text)
                if isinstance(block.get("signature"), str):
                    signature = block["signature"]
    fields = message.get("provider_specific_fields")
    if not texts and isinstance(fields, dict) and isinstance(fields.get("reasoning_content"), str):
        texts.append(fields["reasoning_content"])
    return "\n".join(texts), signature


def openai_tool_calls(src: Source, raw: Any, place: str, id_prefix: str) -> list[ToolCall]:
    """OpenAI-style `tool_calls` (`[{id, type, function: {name, arguments}}]`) as ToolCalls.

    Also accepts the list as JSON text, calls with `name`/`arguments` at the top level, and
    arguments already parsed. A call without an id gets `<id_prefix>-<n>`.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except json.JSONDecodeError as exc:
            src.fail(place, f"tool calls are text that is not JSON: {exc.msg}")
    raw = src.want(raw, list, place)
    calls = []
    for i, item in enumerate(raw):
        item = src.want(item, dict, f"{place}[{i}]", "a tool call object")
        function = item.get("function", item)
        function = src.want(function, dict, f"{place}[{i}].function")
        name = src.want(function.get("name"), str, f"{place}[{i}].function.name")
        arguments, raw_arguments = parse_arguments(function.get("arguments", function.get("input")))
        call_id = item.get("id") or item.get("call_id")
        call_id = src.want(call_id, str, f"{place}[{i}].id") if call_id is not None else f"{id_prefix}-{i}"
        calls.append(ToolCall(id=call_id, name=name, arguments=arguments, raw_arguments=raw_arguments))
    return calls


def tool_specs(src: Source, raw: Any, place: str) -> list[ToolSpec]:
    """OpenAI-style tool definitions (`[{type: function, function: {name, description, parameters}}]`)."""
    raw = src.want(raw, list, place)
    specs = []
    for i, item in enumerate(raw):
        item = src.want(item, dict, f"{place}[{i}]", "a tool definition object")
        function = src.want(item.get("function", item), dict, f"{place}[{i}].function")
        name = src.want(function.get("name"), str, f"{place}[{i}].function.name")
        description = function.get("description") or ""
        description = src.want(description, str, f"{place}[{i}].function.description")
        schema = function.get("parameters", function.get("input_schema")) or {"type": "object", "properties": {}}
        schema = src.want(schema, dict, f"{place}[{i}].function.parameters")
        specs.append(ToolSpec(name=name, description=description, input_schema=schema))
    return specs
