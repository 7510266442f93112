"""Task files: a research task in TOML, and preparing its workspace.

    id = "fix-classifier"
    description = "..."            # the task text the agent gets
    max_steps = 60                 # optional limits
    time_limit = 3600              # seconds of active time (model answers + tool calls)
    token_budget = 2_000_000       # input + output tokens over all calls
    summary_threshold = 100_000    # tokens; summarize the context past this
    system_prompt = "..."          # optional; a default research-agent prompt otherwise

    [workspace]
    files = ["train.py", "data/"]  # copied in, relative to the task file
    setup = ["python3 make_data.py"]

    [eval]
    command = "python3 eval.py"    # its last line's last number is the run's score

    [model]                        # how the model is asked (all optional)
    thinking_budget = 4096         # Anthropic extended thinking: budget_tokens (max_output_tokens must exceed it)
    temperature = 1.0
    top_p = 0.95
    prompt_caching = true          # Anthropic cache_control breakpoints (default on)

    [sandbox]                      # where the agent's commands run (all optional)
    kind = "bwrap"                 # or "none": unconfined on the host, recorded and warned about
    network = false                # true for tasks that pip-install or download data
    memory_mb = 8192               # address-space limit per process
    max_processes = 512            # per sandbox (not enforced for root: the kernel exempts uid 0)
    python = "agent"               # "system": only /usr's python, not the interpreter running apollo-es
    read_only = ["/data/corpus"]   # host paths visible read-only at the same path
    devices = ["/dev/nvidia*"]     # passed through, for GPU research tasks

    [env]                          # the commands' own variables, on top of PATH, HOME, LANG, TERM
    OMP_NUM_THREADS = "4"          # (no secrets: names like *_TOKEN are refused, and it is all recorded)
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec

from apollo_es.errors import ApolloError
from apollo_es.redaction import is_secret_name
from apollo_es.tools import TOOL_SPECS, Workspace
from apollo_es.tools import check as check_sandbox
from events import RunReconfigured, RunStarted, SandboxSpec, ToolSpec
from projections.context import HUMAN_TAG

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ModelSettings", "Task", "TaskError", "load_task", "prepare_workspace", "reconfiguration", "run_started", "sampling_of", "with_thinking"]

DEFAULT_SYSTEM_PROMPT = f"""You are a research engineer working autonomously on a long research task in a workspace.
Work in small verified steps: inspect, hypothesize, run experiments, read the results, iterate.
Call exactly one tool per turn. Use sessions (create_session, get_session_output, check_session_idle)
for anything that runs longer than a minute, such as training jobs, and keep working while they run.
A real person may send you messages wrapped in <{HUMAN_TAG}> tags. They come from the user who owns
this task: follow their guidance, and stop at once if told to stop.
When the task is done, call finish(answer) with a short report of what you did and the final results."""


class TaskError(ApolloError):
    """A task file that cannot be used: unreadable, malformed or inconsistent."""


class WorkspaceSpec(msgspec.Struct, forbid_unknown_fields=True):
    files: list[str] = []
    setup: list[str] = []


class ModelSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The task's `[model]` table, turned into `RunStarted.sampling` and `prompt_caching`."""

    temperature: float | None = None
    top_p: float | None = None
    thinking_budget: Annotated[int, msgspec.Meta(ge=1024)] | None = None
    """Anthropic's minimum budget is 1,024 tokens."""
    prompt_caching: bool = True


class EvalSpec(msgspec.Struct, forbid_unknown_fields=True):
    command: str


_Positive = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
_Seconds = Annotated[float, msgspec.Meta(gt=0, le=10 * 365 * 86_400)]


class Task(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
    description: str
    max_steps: _Positive | None = None
    time_limit: _Seconds | None = None
    token_budget: _Positive | None = None
    summary_threshold: _Positive = 100_000
    context_limit: _Positive = 128_000
    max_output_tokens: _Positive = 8_192
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    tags: list[str] = []
    workspace: WorkspaceSpec = msgspec.field(default_factory=WorkspaceSpec)
    eval: EvalSpec | None = None
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    sandbox: SandboxSpec = msgspec.field(default_factory=SandboxSpec)
    """The file's `[sandbox]` table, with its top-level `[env]` table as `sandbox.env`."""
    source_dir: str = ""
    """Directory of the task file; workspace files are relative to it (set by load_task)."""


def load_task(path: str | Path) -> Task:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(f"{path} is not valid TOML: {exc}") from exc
    env, sandbox = data.pop("env", {}), data.get("sandbox", {})
    if not isinstance(env, dict) or not isinstance(sandbox, dict):
        raise TaskError(f"{path}: [env] and [sandbox] must be tables")
    secret = [name for name in env if is_secret_name(name)]
    if secret:
        raise TaskError(f"{path}: [env] {', '.join(secret)}: secrets do not go in task files (they are recorded in the run's log)")
    try:
        task = msgspec.convert({**data, "sandbox": {**sandbox, "env": env}, "source_dir": str(path.parent.resolve())}, Task)
    except msgspec.ValidationError as exc:
        raise TaskError(f"{path}: {exc}") from exc
    if not task.description.strip():
        raise TaskError(f"{path}: description is empty")
    if task.summary_threshold >= task.context_limit:
        raise TaskError(f"{path}: summary_threshold ({task.summary_threshold}) must be below context_limit ({task.context_limit})")
    for name in task.workspace.files:
        source = Path(task.source_dir) / name
        inside = source.resolve().is_relative_to(task.source_dir) and source.resolve() != Path(task.source_dir)
        if Path(name).is_absolute() or ".." in Path(name).parts or not inside:
            raise TaskError(f"{path}: workspace file {name!r} must be a path inside the task's directory")
        if not source.exists():
            raise TaskError(f"{path}: workspace file {name!r} does not exist (looked at {source})")
    return task


def prepare_workspace(task: Task, root: str | Path) -> Path:
    """Copy the task's files into a new or empty workspace directory and run its setup commands
    in the task's sandbox (checked first, so a machine without one fails before anything is made)."""
    check_sandbox(task.sandbox)
    root = Path(root).resolve()
    if root.exists() and any(root.iterdir()):
        raise TaskError(f"workspace {root} is not empty; pick a new directory")
    root.mkdir(parents=True, exist_ok=True)
    for name in task.workspace.files:
        source, target = Path(task.source_dir) / name, root / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)
        except (shutil.Error, OSError) as exc:  # SameFileError: the workspace holds the task's own files
            raise TaskError(f"cannot copy workspace file {name!r} into {root}: {exc}") from exc
    workspace = Workspace(root, sandbox=task.sandbox, max_timeout=3600)
    workspace.sessions.discard()  # an earlier workspace at this path may have left sessions behind
    for command in task.workspace.setup:
        result = workspace.execute("run_command", {"command": command, "timeout": 3600})
        if result.is_error:
            raise TaskError(f"setup command {command!r} failed: {result.output[-2000:]}")
    return root


def sampling_of(task: Task, provider: str) -> dict[str, Any]:
    """The request settings the task's `[model]` table asks for, in the provider's own terms."""
    settings = task.model
    sampling: dict[str, Any] = {k: v for k, v in (("temperature", settings.temperature), ("top_p", settings.top_p)) if v is not None}
    return with_thinking(sampling, settings.thinking_budget, task.max_output_tokens, provider)


def with_thinking(sampling: dict[str, Any], budget: int | None, max_output_tokens: int, provider: str) -> dict[str, Any]:
    """`sampling` with Anthropic extended thinking at `budget` tokens (unchanged for None), after
    checking the provider takes it and the answer has room for it."""
    if budget is None:
        return sampling
    if provider != "anthropic":
        raise TaskError(f"thinking_budget is for the anthropic provider, not {provider!r}")
    if max_output_tokens <= budget:
        raise TaskError(f"max_output_tokens ({max_output_tokens}) must exceed thinking_budget ({budget}): "
                        "the thinking is part of the answer")
    return {**sampling, "thinking": {"type": "enabled", "budget_tokens": budget}}


def reconfiguration(
    run: RunStarted,
    *,
    thinking_budget: int | None = None,
    prompt_caching: bool | None = None,
    max_output_tokens: int | None = None,
    max_steps: int | None = None,
    time_limit: float | None = None,
    token_budget: int | None = None,
    reason: str = "",
) -> RunReconfigured | None:
    """The event that changes a run's settings from now on (`run` as the fold has it now), or
    None when nothing is asked to change. TaskError for settings the run cannot take."""
    output = max_output_tokens or run.max_output_tokens
    current = run.sampling.get("thinking", {}).get("budget_tokens") if isinstance(run.sampling.get("thinking"), dict) else None
    checked = with_thinking(run.sampling, thinking_budget or current, output, run.provider or "anthropic")  # it still fits
    sampling = checked if thinking_budget else None
    if prompt_caching and run.provider not in ("", "anthropic"):
        raise TaskError(f"prompt caching is for the anthropic provider, not {run.provider!r}")
    changes = {"sampling": sampling, "prompt_caching": prompt_caching, "max_output_tokens": max_output_tokens,
               "max_steps": max_steps, "time_limit": time_limit, "token_budget": token_budget}
    if all(value is None for value in changes.values()):
        return None
    return RunReconfigured(**changes, reason=reason)


def run_started(task: Task, *, model: str, provider: str, workspace: Path) -> RunStarted:
    """The first event of a run of this task."""
    return RunStarted(
        task_id=task.id,
        task=task.description.strip(),
        system_prompt=task.system_prompt,
        tools=[ToolSpec(**spec) for spec in TOOL_SPECS],
        model=model,
        provider=provider,
        sampling=sampling_of(task, provider),
        prompt_caching=task.model.prompt_caching and provider == "anthropic",
        summary_threshold=task.summary_threshold,
        context_limit=task.context_limit,
        max_output_tokens=task.max_output_tokens,
        environment=f"apollo-es research workspace (ResearchGym-style tools), sandbox {task.sandbox.kind}"
        + (", network on" if task.sandbox.network else ""),
        workspace=str(workspace),
        max_steps=task.max_steps,
        time_limit=task.time_limit,
        token_budget=task.token_budget,
        eval_command=task.eval.command if task.eval else "",
        tags=task.tags,
        sandbox=task.sandbox,
    )
