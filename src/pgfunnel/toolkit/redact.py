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
# What file text is masked with before any parser sees it: letters only, so that the masked
# text still parses as the YAML, .env, HCL or postgresql.conf it was ("***" would start a YAML
# alias). Line breaks inside a secret are kept, so that line numbers stay right.
INPUT_MASK = "REDACTED"
_MASKS = (MASK, INPUT_MASK)
# Secrets shorter than this are masked where a pattern finds them, but not searched for as
# bare text elsewhere (masking every "app" would garble the output).
MIN_LITERAL = 4

# Names whose value is a secret: *PASSWORD*, *SECRET*, *TOKEN*, ..., and *PASS / *_PASS_*
# (DB_PASS, PGPASS), *PWD.
_SECRET_NAME = (
    r"[A-Za-z0-9_.-]*(?:PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|"
    r"PRIVATE_?KEY|ACCOUNTKEY|CREDENTIALS?)[A-Za-z0-9_.-]*"
    r"|[A-Za-z0-9_.-]+(?:PASS|PWD)(?:_[A-Za-z0-9_.-]*)?"
)
# An unquoted value: up to the end of the line, a comment, or the next `name=` / `name:`
# (`password = hunter 2` is all secret; `password=x dbname=app` is conninfo).
_BARE = r"[^\s'\",;}\]#]+(?:[ \t]+(?![A-Za-z_][\w.-]*[ \t]*[:=])[^\s'\",;}\]#]+)*"
_VALUE = rf"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.|'')*'|\$\{{[^}}\n]*\}}|\$\([^)\n]*\)|{_BARE}"

_SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    # SCRAM and md5 verifiers first: they are whole tokens.
    ("scram", re.compile(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")),
    ("md5", re.compile(r"\bmd5[0-9a-f]{32}\b")),
    (
        "private-key",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    ),
    # user:password@ in a URI; the password runs to the last @ before the host.
    (
        "uri",
        re.compile(
            r"(?<=[A-Za-z][A-Za-z0-9+.-]://)([^:/@\s'\"]*):([^\s'\"]+)(?=@[^@\s'\"]*(?:[\s'\"]|$))"
        ),
    ),
    ("conninfo", re.compile(rf"(?i)\b(password)([ \t]*=[ \t]*)({_VALUE})")),
    # Kubernetes env lists: `- name: DB_PASSWORD` then `value: ...` (either order).
    (
        "k8s-env",
        re.compile(
            rf"(?im)(^[ \t]*-?[ \t]*name:[ \t]*[\"']?(?:{_SECRET_NAME})[\"']?[ \t]*\n"
            rf"[ \t]*value:[ \t]*)({_VALUE})"
        ),
    ),
    (
        "k8s-env",
        re.compile(
            rf"(?im)(^[ \t]*-?[ \t]*value:[ \t]*)({_VALUE})"
            rf"(?=[ \t]*\n[ \t]*name:[ \t]*[\"']?(?:{_SECRET_NAME})[\"']?[ \t]*$)"
        ),
    ),
    # A YAML block scalar under a secret's name: every line of the block.
    (
        "yaml-block",
        re.compile(
            rf"(?im)^([ \t]*-?[ \t]*[\"']?(?:{_SECRET_NAME})[\"']?[ \t]*:"
            r"[ \t]*[|>][-+0-9]*[ \t]*\n)"
            r"((?:[ \t]*\n)*(?P<indent>[ \t]+)[^\n]*(?:\n(?:[ \t]*\n)*(?P=indent)[^\n]*)*)"
        ),
    ),
    (
        "key-value",
        re.compile(
            rf"(?i)(?<![\w.-])((?:{_SECRET_NAME}))([\"']?[ \t]*[:=][ \t]*)({_VALUE})",
        ),
    ),
    # ~/.pgpass: hostname:port:database:username:password
    (
        "pgpass",
        re.compile(r"(?m)^([ \t]*[^:\s#]+:(?:\d+|\*):[^:\s]+:[^:\s]+:)((?:[^\\\n]|\\.)+)$"),
    ),
    ("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("userlist", re.compile(r'^(\s*"(?:[^"]|"")*"\s+)"((?:[^"]|"")+)"', re.M)),
]
# Which group holds the secret in each kind (the whole match when absent).
_SECRET_GROUP = {
    "yaml-block": 2,
    "uri": 2,
    "conninfo": 3,
    "k8s-env": 2,
    "key-value": 3,
    "pgpass": 2,
    "userlist": 2,
}


@dataclass
class Redactor:
    """Masks secrets in text and counts what it found, by kind. It remembers each secret, so
    that `mask` also catches one shown out of its context (in a parser's error, say)."""

    counts: dict[str, int] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _bump(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def scan(self, text: str) -> str:
        """Masks every secret in `text` and counts it."""
        return self._apply(text, MASK, count=True)

    def redact_input(self, text: str, count: bool = True) -> str:
        """File text as parsers may see it: secrets masked with INPUT_MASK, counted once, and
        a known secret repeated where no pattern finds it masked too."""
        return self._literals(self._apply(text, INPUT_MASK, count=count), INPUT_MASK)

    def mask(self, text: str) -> str:
        """Masks without counting (for output of text whose secrets were already counted),
        every known secret too wherever it appears."""
        return self._literals(self._apply(text, MASK, count=False), MASK)

    def _literals(self, text: str, token: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= MIN_LITERAL:
                text = text.replace(secret, token)
        return text

    def _apply(self, text: str, token: str, count: bool) -> str:
        for kind, pattern in _SECRET_PATTERNS:
            text = pattern.sub(self._replacer(kind, token, count), text)
        return text

    def _replacer(self, kind: str, token: str, count: bool) -> Callable[[re.Match[str]], str]:
        group = _SECRET_GROUP.get(kind, 0)

        def repl(m: re.Match[str]) -> str:
            whole = m.group(0)
            raw = m.group(group)
            value = _unquote(raw)
            if value in _MASKS or whole in _MASKS or not value.strip():
                return whole
            if kind in ("key-value", "k8s-env", "conninfo") and _looks_like_reference(value):
                return whole
            if kind in ("key-value", "k8s-env") and _BLOCK.match(value):
                return whole  # a YAML block scalar follows: its lines are matched on their own
            if kind == "key-value" and _REFERENCE_NAME.search(m.group(1)):
                return whole
            # Keep the line breaks a secret spans: findings name lines of the file.
            masked = token + "\n" * raw.count("\n")
            if kind == "yaml-block":
                masked = "\n".join(
                    line[: len(line) - len(line.lstrip())] + token if line.strip() else line
                    for line in raw.split("\n")
                )
                for line in raw.split("\n"):
                    if line.strip():
                        self.secrets.add(line.strip())
            if raw[:1] in "'\"" and raw[-1:] == raw[:1] and len(raw) >= 2:
                masked = raw[0] + masked + raw[0]
            out = whole[: m.start(group) - m.start(0)] + masked + whole[m.end(group) - m.start(0) :]
            self.secrets.add(value)
            if raw != value:
                self.secrets.add(raw)
            if count:
                self._bump(kind)
            return out

        return repl

    def summary(self) -> str:
        if not self.total:
            return "no secrets found in the inputs"
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        return f"{self.total} secret(s) redacted from everything shown ({kinds})"


def redact_text(text: str) -> str:
    """File text masked for a parser that needs no count (INPUT_MASK, see Redactor)."""
    return Redactor().redact_input(text, count=False)


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0]:
        return raw[1:-1]
    return raw


# Values that name a secret rather than hold one: booleans, file paths, environment and
# Terraform references, Kubernetes secret names under a *Ref / *Name key.
_REFERENCE = re.compile(
    r"^(?:\$\{.*\}|\$\(.*\)|\$[A-Za-z_]\w*|(?:var|local|data|module)\.[\w.\[\]\"-]+)$"
)


_BLOCK = re.compile(r"^[|>][-+0-9]*$")
# Names of settings that name a secret held elsewhere: secretKeyRef, secretName,
# existingSecret (Helm charts), *_FILE, *_PATH.
_REFERENCE_NAME = re.compile(r"(?i)(?:ref|name|names|file|path|dir)$|^existing")


def _looks_like_reference(value: str) -> bool:
    v = value.strip()
    return (
        v.lower() in {"true", "false", "null", "none", "~", "yes", "no"}
        or v.startswith("/")
        or bool(_REFERENCE.match(v))
    )
