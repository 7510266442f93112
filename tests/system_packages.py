"""Debian packages the tests need, installed here when missing (root with apt-get, as on CI):
a fresh machine must pass without anyone installing them by hand."""

from __future__ import annotations

import os
import shutil
import subprocess


def debian_binary(binary: str, package: str) -> str | None:
    """The path of `binary`, after installing `package` if it was missing; None if that failed."""
    path = shutil.which(binary)
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True, check=False)
    return shutil.which(binary)
