"""Amazon RDS facts check and advise need: instance classes (vCPUs, memory), the memory RDS
leaves to PostgreSQL (DBInstanceClassMemory), and the evaluation of parameter-group formulas
such as LEAST({DBInstanceClassMemory/9531392},5000)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

# The default of every RDS for PostgreSQL parameter group (RDS User Guide, "Maximum number of
# database connections"): LEAST({DBInstanceClassMemory/9531392},5000).
DEFAULT_MAX_CONNECTIONS_FORMULA = "LEAST({DBInstanceClassMemory/9531392},5000)"

# vCPUs by size name; the memory of a class is vCPUs x the family's GiB per vCPU.
# Source: AWS, Amazon RDS User Guide, "Hardware specifications for DB instance classes"
# (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Concepts.DBInstanceClass.Summary.html).
_SIZE_VCPUS = {
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
    "8xlarge": 32,
    "10xlarge": 40,
    "12xlarge": 48,
    "16xlarge": 64,
    "24xlarge": 96,
    "32xlarge": 128,
    "48xlarge": 192,
}
_UP_TO_16 = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")
_UP_TO_24 = (*_UP_TO_16, "24xlarge")
_UP_TO_32 = (*_UP_TO_24, "32xlarge")
_UP_TO_48 = (*_UP_TO_32, "48xlarge")
# family -> (GiB per vCPU, sizes RDS offers)
_FAMILIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "m4": (4, ("large", "xlarge", "2xlarge", "4xlarge", "10xlarge", "16xlarge")),
    "m5": (4, _UP_TO_24),
    "m5d": (4, _UP_TO_24),
    "m6g": (4, _UP_TO_16),
    "m6gd": (4, _UP_TO_16),
    "m7g": (4, _UP_TO_16),
    "m6i": (4, _UP_TO_32),
    "m6id": (4, _UP_TO_32),
    "m6in": (4, _UP_TO_32),
    "m6idn": (4, _UP_TO_32),
    "m7i": (4, _UP_TO_48),
    "m8g": (4, _UP_TO_48),
    "r4": (7.625, ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")),
    "r5": (8, _UP_TO_24),
    "r5b": (8, _UP_TO_24),
    "r5d": (8, _UP_TO_24),
    "r6g": (8, _UP_TO_16),
    "r6gd": (8, _UP_TO_16),
    "r7g": (8, _UP_TO_16),
    "r6i": (8, _UP_TO_32),
    "r6id": (8, _UP_TO_32),
    "r6in": (8, _UP_TO_32),
    "r6idn": (8, _UP_TO_32),
    "r7i": (8, _UP_TO_48),
    "r8g": (8, _UP_TO_48),
    "x2g": (16, _UP_TO_16),
}
# Burstable classes do not follow the per-vCPU rule: (vCPUs, GiB) per size.
_T3 = {
    "micro": (2, 1.0),
    "small": (2, 2.0),
    "medium": (2, 4.0),
    "large": (2, 8.0),
    "xlarge": (4, 16.0),
    "2xlarge": (8, 32.0),
}
_BURSTABLE: dict[str, dict[str, tuple[int, float]]] = {
    "t3": _T3,
    "t4g": _T3,
    "t2": {**_T3, "micro": (1, 1.0), "small": (1, 2.0)},
}
SOURCE = "AWS RDS User Guide, Hardware specifications for DB instance classes"

# DBInstanceClassMemory is the class's memory less what RDS keeps for the operating system and
# its own agents (RDS User Guide, "DB parameter formula variables"); AWS does not publish the
# figure per class. Published `SHOW max_connections` readings of default parameter groups
# (db.t2.small 198, db.t2.medium 413, db.t2.large / db.m4.large 856, db.r4.large 1660 with
# /9531392) put the reserve at about 250-530 MiB, growing with the class. We take
# 256 MiB + 2% of the nominal memory: within 4% of those readings and never above them, so the
# max_connections we derive errs low (a gate that fails a little early, never late).
RESERVE_FIXED_BYTES = 256 * 1024**2
RESERVE_SHARE = 0.02
RESERVE_NOTE = "estimate: nominal memory - 256 MiB - 2% kept by RDS"


class RdsError(ValueError):
    """An instance class or a parameter formula pgfunnel cannot evaluate."""


@dataclass(frozen=True)
class InstanceClass:
    name: str
    vcpus: int
    memory_gib: float

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 1024**3)

    @property
    def class_memory_bytes(self) -> int:
        """DBInstanceClassMemory as estimated (see RESERVE_NOTE)."""
        nominal = self.memory_bytes
        return nominal - RESERVE_FIXED_BYTES - int(nominal * RESERVE_SHARE)


_CLASS = re.compile(r"^db\.([a-z0-9]+)\.(\w+)$")


def instance_class(name: str) -> InstanceClass:
    """The vCPUs and memory of an RDS DB instance class such as db.r6g.large."""
    text = name.strip().lower()
    m = _CLASS.match(text)
    if not m:
        raise RdsError(f"unknown instance class {name!r} (e.g. db.r6g.large)")
    family, size = m.group(1), m.group(2)
    if family in _BURSTABLE:
        if size in _BURSTABLE[family]:
            vcpus, gib = _BURSTABLE[family][size]
            return InstanceClass(text, vcpus, gib)
    elif family in _FAMILIES:
        per_vcpu, sizes = _FAMILIES[family]
        if size in sizes:
            vcpus = _SIZE_VCPUS[size]
            return InstanceClass(text, vcpus, vcpus * per_vcpu)
    raise RdsError(
        f"{name!r} is not in pgfunnel's table of RDS instance classes ({SOURCE}): pass "
        "--max-connections (and --ram/--cpus for advise)"
    )


# --- parameter formulas ------------------------------------------------------------------------
# RDS's formula syntax (RDS User Guide, "DB parameter formulas"): a number, a variable in braces
# with * and / by integers ({DBInstanceClassMemory/9531392}), and the functions GREATEST, LEAST
# and SUM. Division inside braces keeps the integer part, as RDS does.
_VARIABLES = ("DBInstanceClassMemory", "DBInstanceVCPU")
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([A-Za-z_]\w*)|(.))")


@dataclass
class FormulaResult:
    value: int
    rendered: str  # the formula with each braced term replaced by its value


def evaluate_formula(formula: str, klass: InstanceClass, *, nominal: bool = False) -> FormulaResult:
    """The integer a parameter-group formula gives on `klass`, with DBInstanceClassMemory
    estimated (see RESERVE_NOTE), or taken as the nominal memory with `nominal`."""
    memory = klass.memory_bytes if nominal else klass.class_memory_bytes
    variables = {
        "DBInstanceClassMemory": Fraction(memory),
        "DBInstanceVCPU": Fraction(klass.vcpus),
    }
    parser = _Parser(formula, variables)
    value, rendered = parser.expression()
    parser.end()
    return FormulaResult(math.floor(value), rendered)


class _Parser:
    def __init__(self, text: str, variables: dict[str, Fraction]) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        for m in _TOKEN.finditer(text):
            if m.group(1):
                self.tokens.append(("num", m.group(1)))
            elif m.group(2):
                self.tokens.append(("name", m.group(2)))
            elif m.group(3) and not m.group(3).isspace():
                self.tokens.append(("op", m.group(3)))
        self.pos = 0
        self.variables = variables

    def _fail(self, why: str) -> RdsError:
        return RdsError(f"cannot evaluate {self.text!r}: {why}")

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, kind: str, value: str | None = None) -> str:
        tok = self._peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            raise self._fail(f"expected {value or kind} at {tok[1] if tok else 'the end'!r}")
        self.pos += 1
        return tok[1]

    def end(self) -> None:
        tok = self._peek()
        if tok is not None:
            raise self._fail(f"unexpected {tok[1]!r}")

    def expression(self) -> tuple[Fraction, str]:
        tok = self._peek()
        if tok is None:
            raise self._fail("empty")
        if tok == ("op", "{"):
            self.pos += 1
            value = self._arith()
            self._take("op", "}")
            whole = Fraction(math.floor(value))
            return whole, str(whole)
        if tok[0] == "num":
            self.pos += 1
            return Fraction(tok[1]), tok[1]
        if tok[0] == "name" and tok[1].upper() in ("LEAST", "GREATEST", "SUM"):
            self.pos += 1
            fn = tok[1].upper()
            self._take("op", "(")
            args = [self.expression()]
            while self._peek() == ("op", ","):
                self.pos += 1
                args.append(self.expression())
            self._take("op", ")")
            values = [a[0] for a in args]
            value = Fraction(0)
            if fn == "LEAST":
                value = min(values)
            elif fn == "GREATEST":
                value = max(values)
            else:
                for v in values:
                    value += v
            return value, f"{fn}({', '.join(a[1] for a in args)})"
        raise self._fail(f"unsupported term {tok[1]!r}")

    def _arith(self) -> Fraction:
        value = self._factor()
        while self._peek() in (("op", "*"), ("op", "/"), ("op", "+"), ("op", "-")):
            op = self._take("op")
            rhs = self._factor()
            if op == "/":
                if rhs == 0:
                    raise self._fail("division by zero")
                value = value / rhs
            elif op == "*":
                value = value * rhs
            elif op == "+":
                value = value + rhs
            else:
                value = value - rhs
        return value

    def _factor(self) -> Fraction:
        tok = self._peek()
        if tok is None:
            raise self._fail("unexpected end")
        self.pos += 1
        if tok[0] == "num":
            return Fraction(tok[1])
        if tok[0] == "name" and tok[1] in self.variables:
            return self.variables[tok[1]]
        if tok == ("op", "("):
            value = self._arith()
            self._take("op", ")")
            return value
        known = ", ".join(_VARIABLES)
        raise self._fail(f"unsupported term {tok[1]!r} (known variables: {known})")


def describe_class_memory(klass: InstanceClass) -> str:
    """How DBInstanceClassMemory was estimated, for the step lines people read."""
    return (
        f"{klass.name}: {klass.memory_gib:g} GiB, {klass.vcpus} vCPUs ({SOURCE}); "
        f"DBInstanceClassMemory ~ {klass.class_memory_bytes} bytes ({RESERVE_NOTE})"
    )


def max_connections_step(formula: str, klass: InstanceClass, where: str) -> tuple[int, list[str]]:
    """max_connections from `formula` on `klass` and the step lines that say how."""
    result = evaluate_formula(formula, klass)
    # The same formula on the nominal memory shows how much the estimate moves the value.
    nominal = evaluate_formula(formula, klass, nominal=True).value
    line = f"max_connections = {formula} ({where}) = {result.rendered} = {result.value}"
    if nominal != result.value:
        line += (
            f" ({nominal} with the nominal {klass.memory_gib:g} GiB; SHOW max_connections "
            "on the instance gives the exact value, --max-connections overrides)"
        )
    return result.value, [describe_class_memory(klass), line]


def terraform_parameter_blocks(text: str) -> list[tuple[int, str]]:
    """(offset, body) of each `parameter { ... }` block of a Terraform file; braces inside
    quoted strings (the formulas' {DBInstanceClassMemory/...}) do not end a block."""
    out = []
    for m in re.finditer(r"\bparameter\s*\{", text):
        depth, i, quoted = 1, m.end(), False
        while i < len(text) and depth:
            ch = text[i]
            if quoted:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    quoted = False
            elif ch == '"':
                quoted = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            i += 1
        out.append((m.start(), text[m.end() : i - 1]))
    return out
