"""Redaction: SQL literals in queries people see, and secrets in anything the toolkit prints."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

_SQL_LITERAL = re.compile(
    r"""
    (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)   # dollar quoting
  | (?P<string>[EeBbXxNn]?'(?:[^']|'')*'?)                   # 'text', E'..', B'..', X'..'
  | (?P<ident>"(?:[^"]|"")*")                                # quoted identifier: kept
  | (?P<param>\$\d+)                                         # $1 placeholders: kept
  | (?P<number>(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w]))
    """,
    re.VERBOSE | re.DOTALL,
)


def redact_query(query: str | None, limit: int = 200) -> str | None:
    """The query with string and number literals replaced by '?', cut to `limit` characters."""
    if query is None:
        return None

    def repl(m: re.Match[str]) -> str:
        if m.group("ident") or m.group("param"):
            return m.group(0)
        return "?"

    return truncate(_SQL_LITERAL.sub(repl, query), limit)


def truncate(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


MASK = "***"

_SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    # SCRAM and md5 verifiers first: they are whole tokens.
    ("scram", re.compile(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")),
    ("md5", re.compile(r"\bmd5[0-9a-f]{32}\b")),
    ("uri", re.compile(r"(?<=[A-Za-z][A-Za-z0-9+.-]://)([^:/@\s'\"]*):([^@\s'\"]+)(?=@)")),
    ("conninfo", re.compile(r"(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|[^\s'\";&]+)")),
    (
        "key-value",
        re.compile(
            r"(?i)\b([A-Z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE_KEY|"
            r"ACCOUNTKEY)[A-Z0-9_]*)(\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;}\]]+)"
        ),
    ),
    ("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    (
        "private-key",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    ),
    ("userlist", re.compile(r'^(\s*"(?:[^"]|"")*"\s+)"((?:[^"]|"")+)"', re.M)),
]


@dataclass
class Redactor:
    """Masks secrets in text and counts what it found, by kind."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _bump(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def scan(self, text: str) -> str:
        """Masks every secret in `text` and counts it."""
        for kind, pattern in _SECRET_PATTERNS:
            text = pattern.sub(self._replacer(kind), text)
        return text

    def mask(self, text: str) -> str:
        """Masks without counting (for output of text whose secrets were already counted)."""
        for kind, pattern in _SECRET_PATTERNS:
            text = pattern.sub(self._replacer(kind, count=False), text)
        return text

    def _replacer(self, kind: str, count: bool = True) -> Callable[[re.Match[str]], str]:
        def repl(m: re.Match[str]) -> str:
            whole = m.group(0)
            if whole == MASK:
                return whole
            if kind == "uri":
                if m.group(2) == MASK:
                    return whole
                out = f"{m.group(1)}:{MASK}"
            elif kind == "conninfo":
                if m.group(1) in (MASK, f"'{MASK}'"):
                    return whole
                out = f"password={MASK}"
            elif kind == "key-value":
                value = m.group(3).strip("'\"")
                if value in (MASK, "") or value.startswith("${") or value.startswith("$("):
                    return whole
                if _looks_like_reference(value):
                    return whole
                out = f"{m.group(1)}{m.group(2)}{MASK}"
            elif kind == "userlist":
                if m.group(2) == MASK:
                    return whole
                out = f'{m.group(1)}"{MASK}"'
            else:
                out = MASK
            if count:
                self._bump(kind)
            return out

        return repl

    def summary(self) -> str:
        if not self.total:
            return "no secrets found in the inputs"
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        return f"{self.total} secret(s) redacted from everything shown ({kinds})"


def _looks_like_reference(value: str) -> bool:
    """Values that name a secret rather than hold one (secretKeyRef names, file paths)."""
    return value.lower() in {"true", "false", "null", "none", "~"} or value.startswith("/")
