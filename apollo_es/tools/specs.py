"""The tools offered to the model: names, descriptions and argument schemas, and the check
that a call's arguments fit them.

The names and arguments are fixed, so tasks and recorded trajectories stay portable between
runs, models and versions of this code. `validate_arguments` runs before any handler, so a
handler can trust its inputs: right JSON types, and strings a process or a path can carry
(no NUL byte, no lone surrogate such as a JSON escape can produce).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TOOL_SPECS", "ToolError", "validate_arguments"]


class ToolError(Exception):
    """A problem with a tool call that the agent should see as an error observation."""


def _arg(json_type: str | list[str], description: str) -> dict[str, Any]:
    return {"type": json_type, "description": description}


def _tool(name: str, description: str, required: list[str], /, **properties: dict) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"name": name, "description": description, "input_schema": schema}


_SESSION_ID_ARG = _arg("string", "Session id returned by create_session, e.g. 's1'.")
_PATH_NOTE = "Relative to the workspace root (absolute paths inside the root also work)."

TOOL_SPECS: list[dict[str, Any]] = [
    _tool(
        "run_command",
        "Run a bash command in the workspace root and return its combined stdout and stderr. "
        "The command gets no stdin, and background processes it leaves behind are killed when it "
        "returns: use create_session for servers and long jobs such as training. "
        "Commands run in a sandbox: the workspace is writable, /tmp is private to the run, the "
        "system is read-only and the network is off unless the task allows it.",
        ["command"],
        command=_arg("string", "The bash command line."),
        timeout=_arg("number", "Seconds before the command is killed (default 60, clamped to the workspace maximum)."),
    ),
    _tool(
        "create_session",
        "Start a long-running command (e.g. a training job) in the background. It keeps running "
        "across steps; its output is logged and can be read with get_session_output. Returns a session id.",
        ["command"],
        command=_arg("string", "The bash command line."),
        name=_arg(["string", "null"], "Optional label to recognise the session by."),
    ),
    _tool(
        "get_session_output",
        "Return a session's output so far (stdout and stderr) and whether it is still running.",
        ["session_id"],
        session_id=_SESSION_ID_ARG,
        tail_lines=_arg(["integer", "null"], "Only return the last N lines."),
    ),
    _tool(
        "check_session_idle",
        "Say whether a session is idle: exited, or running without new output for a few seconds "
        "(e.g. waiting for input).",
        ["session_id"],
        session_id=_SESSION_ID_ARG,
    ),
    _tool(
        "send_session_input",
        "Send text to a running session's stdin. A newline is appended unless the text already ends with one.",
        ["session_id", "text"],
        session_id=_SESSION_ID_ARG,
        text=_arg("string", "The input to send."),
    ),
    _tool(
        "kill_session",
        "Stop a session and every process it started.",
        ["session_id"],
        session_id=_SESSION_ID_ARG,
    ),
    _tool(
        "read_file",
        "Return a text file's content, optionally only lines start_line..end_line (1-based, inclusive).",
        ["path"],
        path=_arg("string", f"File to read. {_PATH_NOTE}"),
        start_line=_arg(["integer", "null"], "First line to return (1-based)."),
        end_line=_arg(["integer", "null"], "Last line to return (inclusive)."),
    ),
    _tool(
        "write_file",
        "Create or overwrite a file with the given content, creating parent directories as needed.",
        ["path", "content"],
        path=_arg("string", f"File to write. {_PATH_NOTE}"),
        content=_arg("string", "The complete new content."),
    ),
    _tool(
        "edit_file",
        "Replace one exact occurrence of `old` with `new` in a file. `old` must match exactly once; "
        "include surrounding lines to make it unique.",
        ["path", "old", "new"],
        path=_arg("string", f"File to edit. {_PATH_NOTE}"),
        old=_arg("string", "The exact text to replace (whitespace included)."),
        new=_arg("string", "The replacement text."),
    ),
    _tool(
        "list_files",
        "List files and directories recursively with their sizes.",
        [],
        path=_arg("string", f"Directory to list (default: the workspace root). {_PATH_NOTE}"),
    ),
    _tool(
        "search",
        "Search text files for a Python regular expression; returns `path:line: text` matches.",
        ["pattern"],
        pattern=_arg("string", "Python regular expression, matched against each line."),
        path=_arg("string", f"File or directory to search (default: the workspace root). {_PATH_NOTE}"),
    ),
    _tool(
        "think",
        "Write down your reasoning or a plan. Has no effect on the workspace.",
        ["thought"],
        thought=_arg("string", "Your thought."),
    ),
    _tool(
        "finish",
        "Submit your final answer and end the task.",
        ["answer"],
        answer=_arg("string", "The final answer."),
    ),
]

SPECS_BY_NAME = {spec["name"]: spec for spec in TOOL_SPECS}

_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "null": type(None),
}


def validate_arguments(name: str, arguments: object) -> None:
    """Check arguments against the tool's schema and that every string is usable as is."""
    if name not in SPECS_BY_NAME:
        raise ToolError(f"Unknown tool {name!r}. Available tools: {', '.join(SPECS_BY_NAME)}")
    schema = SPECS_BY_NAME[name]["input_schema"]
    properties = schema["properties"]
    if not isinstance(arguments, dict):
        raise ToolError(f"{name}: arguments must be an object, got {type(arguments).__name__}")
    unknown = sorted(str(key) for key in set(arguments) - set(properties))
    if unknown:
        raise ToolError(f"{name}: unexpected argument(s) {', '.join(unknown)} (accepted: {', '.join(properties)})")
    missing = [key for key in schema["required"] if key not in arguments]
    if missing:
        raise ToolError(f"{name}: missing required argument(s) {', '.join(missing)}")
    for key, value in arguments.items():
        declared = properties[key]["type"]
        allowed = [declared] if isinstance(declared, str) else declared
        if not any(_has_json_type(value, json_type) for json_type in allowed):
            raise ToolError(f"{name}: argument {key!r} must be {' or '.join(allowed)}, got {type(value).__name__}")
        if isinstance(value, str):
            _check_text(name, key, value)


def _has_json_type(value: object, json_type: str) -> bool:
    # bool is a subclass of int in Python, but true/false is not a JSON number.
    return not isinstance(value, bool) and isinstance(value, _JSON_TYPES[json_type])


def _check_text(name: str, key: str, value: str) -> None:
    if "\0" in value:
        raise ToolError(f"{name}: argument {key!r} contains a NUL byte at index {value.index(chr(0))}; "
                        "commands, paths and file contents cannot carry one")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ToolError(f"{name}: argument {key!r} is not valid Unicode at index {exc.start} "
                        f"({value[exc.start]!r}, a lone surrogate)") from exc
