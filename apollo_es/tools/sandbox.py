"""The sandbox every process the tools start runs in: bubblewrap, on a plain Linux host.

Why bubblewrap: it needs no daemon and no root, only unprivileged user namespaces, and it is
what Flatpak and Claude Code use on Linux. A model that may run arbitrary research code for
48 hours must not read the API key that drives it, write outside its workspace, or leave
processes behind.

What a sandboxed process sees:
- its own user, PID, IPC, UTS and cgroup namespaces, and no network unless the task opts in
  (a new network namespace has nothing but a loopback of its own);
- the system read-only: /usr with the /bin, /lib and /sbin links, a short list of /etc files
  (no shadow, no ssh keys, no host passwd), and by default the interpreter that runs apollo-es,
  so research code finds the same packages;
- the workspace read-write at /workspace, its working directory; a /tmp private to the run
  (kept between commands, so what one step writes there the next one finds); fresh /proc, /dev;
- an environment built from an allowlist plus the task's `[env]`, never copied from the
  agent's. bwrap itself starts with it, so no process inside, PID 1 included, has a secret in
  /proc/N/environ;
- uid 1000 without capabilities. `--die-with-parent` and the PID namespace make the outer
  bwrap process the handle of the whole sandbox: when it dies, everything inside dies, `setsid`,
  double forks and `nohup` included.

`kind = "none"` runs the same commands unconfined on the host (still with the allowlisted
environment); it exists for machines without user namespaces, warns, and is recorded in
`RunStarted` so auditors see it.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from apollo_es.errors import ApolloError
from events import SandboxSpec

__all__ = ["SANDBOX_WORKDIR", "Sandbox", "SandboxError", "check", "check_available"]

log = logging.getLogger("apollo_es.sandbox")

SANDBOX_WORKDIR = "/workspace"
"""Where the workspace is inside the sandbox: the same path on every machine and run."""

_UID = 1000
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TOP_LEVEL_LINKS = ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")
_ETC_FILES = (
    "alternatives", "ca-certificates", "ca-certificates.conf", "debian_version", "fonts", "gai.conf",
    "host.conf", "hosts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "mime.types",
    "nsswitch.conf", "os-release", "pip.conf", "protocols", "python3", f"python3.{sys.version_info.minor}",
    "services", "ssl", "timezone",
)
"""System configuration programs need; everything else in /etc (shadow, ssh keys) stays unseen."""

_FIX = "or run with --sandbox none ([sandbox] kind = \"none\" in the task) to run the agent's commands unconfined"


class SandboxError(ApolloError):
    """A sandbox that cannot be made on this machine or from this task's settings."""


def _system_mounts() -> list[str]:
    """bwrap arguments for the read-only system: /usr and the top-level links into it."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in _TOP_LEVEL_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


@functools.cache
def check_available() -> str:
    """The bwrap executable, once it has shown it can build a sandbox here; else SandboxError
    naming the fix. Cached: the answer does not change while a process runs."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError(
            "bubblewrap (bwrap) is not installed, and the agent's commands run inside it: "
            f"install it (apt-get install bubblewrap, dnf install bubblewrap), {_FIX}"
        )
    probe = [bwrap, "--unshare-all", "--die-with-parent", *_system_mounts(), "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        result = subprocess.run(probe, env={"PATH": _SYSTEM_PATH}, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"bubblewrap failed to start: {exc}; {_FIX}") from exc
    if result.returncode != 0:
        raise SandboxError(
            f"bubblewrap cannot create a sandbox on this machine ({result.stderr.strip() or f'exit code {result.returncode}'}). "
            "Unprivileged user namespaces are probably disabled: enable them "
            "(sysctl -w kernel.unprivileged_userns_clone=1 on Debian, "
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04 and later, "
            "user.max_user_namespaces > 0 elsewhere; in a container, allow the unshare and mount syscalls), "
            f"{_FIX}"
        )
    return bwrap


def check(spec: SandboxSpec) -> None:
    """SandboxError unless this machine can make the sandbox `spec` describes: bubblewrap works
    (for kind bwrap), the read-only paths exist and every device pattern matches something."""
    for name in spec.env:
        if not name.isidentifier() or not name.isascii():
            raise SandboxError(f"environment variable name {name!r} is not valid")
    missing = [path for path in spec.read_only if not os.path.isabs(path) or not os.path.exists(path)]
    if missing:
        raise SandboxError(f"[sandbox] read_only: {', '.join(map(repr, missing))} must be existing absolute paths")
    unmatched = [pattern for pattern in spec.devices if not glob.glob(pattern)]
    if unmatched:
        raise SandboxError(f"[sandbox] devices: nothing on this machine matches {', '.join(map(repr, unmatched))}")
    if spec.kind != "none":
        check_available()


class Sandbox:
    """How the tools start processes for one workspace: the argv around a command, and its environment.

    `state_dir` is apollo-es' own directory for this workspace, outside it; the run's private
    /tmp and the sandbox's passwd file live there.
    """

    def __init__(self, spec: SandboxSpec, root: Path, state_dir: Path) -> None:
        check(spec)
        self.spec = spec
        self.root = root
        self.confined = spec.kind != "none"
        self._devices = sorted({match for pattern in spec.devices for match in glob.glob(pattern)})
        if not self.confined:
            log.warning("sandbox kind 'none': the agent's commands run unconfined on this host")
            self._bwrap_args: list[str] = []
            return
        bwrap = check_available()
        tmp = state_dir / "tmp"
        etc = state_dir / "etc"
        tmp.mkdir(parents=True, exist_ok=True)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "passwd").write_text(f"agent:x:{_UID}:{_UID}:apollo-es agent:/tmp:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")
        (etc / "group").write_text(f"agent:x:{_UID}:\nnogroup:x:65534:\n")
        # Later mounts cover earlier ones: the extra read-only paths come after /tmp, since they
        # may well be below it (a virtualenv or a dataset in /tmp/...).
        self._bwrap_args = [bwrap, *self._namespaces(), *_system_mounts(), *self._etc(etc),
                            "--proc", "/proc", "--dev", "/dev", *self._device_mounts(),
                            "--bind", str(tmp), "/tmp", "--bind", str(root), SANDBOX_WORKDIR, *self._extra_mounts(),
                            "--remount-ro", "/", "--chdir", SANDBOX_WORKDIR]

    @property
    def workdir(self) -> str:
        """The workspace's path as the agent's commands see it."""
        return SANDBOX_WORKDIR if self.confined else str(self.root)

    def argv(self, command: str) -> list[str]:
        """The process to start for a bash command line."""
        limits = []
        if self.spec.memory_mb is not None:
            limits.append(f"--as={self.spec.memory_mb * 2**20}")
        if self.spec.max_processes is not None:
            limits.append(f"--nproc={self.spec.max_processes}")
        inner = ["prlimit", *limits, "--", "bash", "-c", command] if limits else ["bash", "-c", command]
        return [*self._bwrap_args, "--", *inner] if self.confined else inner

    def env(self) -> dict[str, str]:
        """The whole environment of a tool process: an allowlist and the task's `[env]`, nothing inherited."""
        if self.confined:
            path = f"{os.path.realpath(sys.prefix)}/bin:{_SYSTEM_PATH}" if self._agent_python() else _SYSTEM_PATH
            home = "/tmp"
        else:
            path = os.environ.get("PATH", _SYSTEM_PATH)
            home = os.environ.get("HOME", "/tmp")
        env = {"PATH": path, "HOME": home, "USER": "agent", "LANG": "C.UTF-8", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
        return {**env, **self.spec.env}

    # -- pieces of the bwrap command line ------------------------------------------------------

    def _namespaces(self) -> list[str]:
        args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--uid", str(_UID), "--gid", str(_UID), "--hostname", "apollo-sandbox",
                "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
        return args if self.spec.network else [*args, "--unshare-net"]

    def _etc(self, own: Path) -> list[str]:
        args = []
        names = _ETC_FILES + (("resolv.conf",) if self.spec.network else ())
        for name in names:
            if os.path.exists(f"/etc/{name}"):
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        return [*args, "--ro-bind", str(own / "passwd"), "/etc/passwd", "--ro-bind", str(own / "group"), "/etc/group"]

    def _agent_python(self) -> list[str]:
        """The agent interpreter's prefixes outside /usr (a venv and its base), if asked for."""
        if self.spec.python != "agent":
            return []
        prefixes = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
        return sorted(p for p in prefixes if not (p == "/usr" or p.startswith("/usr/")))

    def _extra_mounts(self) -> list[str]:
        args = []
        for path in [*self._agent_python(), *self.spec.read_only]:
            args += ["--ro-bind", path, path]
        return args

    def _device_mounts(self) -> list[str]:
        args = []
        for device in self._devices:
            args += ["--dev-bind", device, device]
        return args
