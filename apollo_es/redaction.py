"""Keeping secrets out of the log: the values of the agent's own secrets, replaced by their names.

Why: the log is immutable and hash-chained, so a key that once lands in an event can never be
removed without breaking `verify`, and every later request sends it to the model again. The
sandbox already keeps secrets out of the agent's processes; this is the second line: every
tool output and model error is passed through a `Redactor` before it is appended, so a key
that reaches the output some other way (a file copied into the workspace, a server's error
message echoing a header) is recorded as `[REDACTED:ANTHROPIC_API_KEY]`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["Redactor", "is_secret_name"]

_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|(^|_)PWD$|AUTH|CREDENTIAL|COOKIE|SESSION|DSN|WEBHOOK|PRIVATE|SIGNATURE",
    re.IGNORECASE,
)
_NOT_SECRET = frozenset({"PWD", "OLDPWD"})
_URL_WITH_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]*:[^/\s@]+@")
_MIN_LENGTH = 6
"""Shorter values would redact ordinary words and numbers all over the outputs."""


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (DATABASE_URL-style values
    are judged by `Redactor` on their content)."""
    return name.upper() not in _NOT_SECRET and _SECRET_NAME.search(name) is not None


class Redactor:
    """Replaces every known secret value in a text with `[REDACTED:NAME]`.

    Example:
        redact = Redactor.from_environ(extra={"api key": client.api_key})
        redact("key is sk-ant-...")  # 'key is [REDACTED:ANTHROPIC_API_KEY]'
    """

    def __init__(self, secrets: Mapping[str, str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        pairs = sorted(((value, name) for name, value in secrets.items() if len(value) >= _MIN_LENGTH), key=lambda p: -len(p[0]))
        self._names = {value: name for value, name in pairs}
        self._pattern = re.compile("|".join(re.escape(value) for value, _ in pairs)) if pairs else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, extra: Mapping[str, str | None] | None = None) -> Redactor:
        """The secrets of an environment (the process's own by default): variables with a
        secret-looking name, and URLs that carry a password; plus `extra` name -> value."""
        environ = os.environ if environ is None else environ
        secrets = {
            name: value for name, value in environ.items()
            if is_secret_name(name) or _URL_WITH_PASSWORD.match(value)
        }
        secrets.update({name: value for name, value in (extra or {}).items() if value})
        return cls(secrets)

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: f"[REDACTED:{self._names[m.group()]}]", text)
