"""The agent's tools: their specs, the workspace they act on, and the sandbox their processes run in.

Modules: `specs` (names, schemas, argument checks), `workspace` (the `Workspace` that executes
calls), `files` (opens confined by the kernel), `sessions` (long-running jobs), `processes`
(who may be signalled), `sandbox` (bubblewrap), `observation` (what a call returns).
"""

from apollo_es.tools.observation import Observation
from apollo_es.tools.sandbox import SANDBOX_WORKDIR, SandboxError, check, check_available
from apollo_es.tools.specs import TOOL_SPECS
from apollo_es.tools.workspace import Workspace

__all__ = ["SANDBOX_WORKDIR", "TOOL_SPECS", "Observation", "SandboxError", "Workspace", "check", "check_available"]
