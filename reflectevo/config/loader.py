"""The strict schema loader behind every params dataclass.

A params class is a frozen dataclass deriving from `Schema`; each field declares its type, range and choices
in its annotation (`r: Annotated[Int, Ge(1)] = 8`, `protocol: Protocol = "oracle"` with
`Protocol = Literal["oracle", "intrinsic"]`). `from_dict` validates a mapping with pydantic, so no range is
checked by hand, and turns pydantic's first error into the one line a user sees, naming the dotted key:

    models.tiny-random.lora.r: must be >= 1, got 0
    generate.temprature: unknown key. Did you mean 'temperature'? Valid keys: k, demands, ...
    generate.protocol: unknown protocol 'oracel'. Did you mean 'oracle'? Valid: intrinsic, oracle

Scalars are strict (an integer field refuses `true`, `2.0` and `"2"`; a boolean refuses `1` and `"yes"`);
a number field takes integers and PyYAML-style strings such as `"1e-05"`. After the schema, each object's
`check(where)` runs the rules that span several fields or read a registry (task names, demand ids, settings).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
from annotated_types import Ge, Gt, Interval, Le, Lt, MinLen
from pydantic import AllowInfNan, BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError

from reflectevo.errors import ReflectEvoError, did_you_mean, unknown

T = TypeVar("T")


def _yaml_number(value: Any) -> Any:
    """'1e-05' (how PyYAML writes small floats) -> 1e-05; anything else is left for the schema to judge."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# Strict scalars: every leaf field of a params class uses one of these (tests/test_config_ranges.py checks).
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_yaml_number), Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

# The ranges most fields share.
NonNegInt = Annotated[Int, Ge(0)]                     # counts; limits where 0 means "all"
PosInt = Annotated[Int, Ge(1)]                        # sizes: batch sizes, token budgets, ranks, workers
PosFloat = Annotated[Float, Gt(0)]                    # learning rates
NonNegFloat = Annotated[Float, Ge(0)]                 # weight decay, KL weight, spreads
Fraction = Annotated[Float, Interval(ge=0, lt=1)]     # a share held out or dropped: 1 would leave nothing
Probability = Annotated[Float, Interval(ge=0, le=1)]
Seed = Annotated[Int, Interval(ge=0, le=2**32 - 1)]   # numpy's seed range (transformers.set_seed seeds numpy)


@dataclasses.dataclass(frozen=True)
class Named:
    """Annotation marker: what a choice field's values are called in its error ("unknown model source 'x'");
    without it, the field's own name."""

    kind: str


def choices(tp: Any) -> tuple[str, ...]:
    """The values of a `Literal[...]` type (optionally inside `Annotated`)."""
    tp = _bare(tp)
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"{tp!r} is not a Literal")
    return typing.get_args(tp)


class Schema:
    """Base of the params dataclasses: pydantic reads the field annotations; unknown keys are refused."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    def validate(self, where: str) -> None:
        """Check this object's declared ranges and choices, then its cross-field rules (`where`: its key)."""
        from_dict(type(self), to_dict(self), where)

    def check(self, where: str) -> None:
        """Rules that span several fields or read a registry; the declared ranges are already checked."""


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def from_dict(cls: type[T], data: Any, where: str, require_all: bool = False) -> T:
    """Build dataclass `cls` from `data`, or raise one ReflectEvoError line naming the key at fault.

    With `require_all`, every field must be given (stage sections: DVC can only track values that are
    written in params.yaml, so no stage silently falls back to a code default)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{where}: expected a mapping, got {_show(data)}")
    try:
        obj = _adapter(cls).validate_python(data)
    except ValidationError as e:
        errors = e.errors()
        first = next((x for x in errors if x["type"] in _UNKNOWN_KEY), errors[0])  # a typo explains the rest
        try:
            line = _one_line(cls, first, where)
        except Exception:  # noqa: BLE001 (an error shape not translated here: pydantic's words, still one line)
            line = f"{_path(where, tuple(first['loc']))}: {first['msg']}"
        raise ReflectEvoError(line) from None
    if require_all:
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                raise ReflectEvoError(f"{where}.{f.name}: required key is missing")
    _check_tree(obj, where)
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def bounds(tp: Any) -> dict[str, float]:
    """The range declared on a field type: {'ge': 0, 'lt': 1}, say; {} when none."""
    out: dict[str, float] = {}
    for m in _metadata(tp):
        for part in (m if isinstance(m, annotated_types.GroupedMetadata) else [m]):
            for key in ("gt", "ge", "lt", "le"):
                if isinstance(part, (Gt, Ge, Lt, Le)) and getattr(part, key, None) is not None:
                    out[key] = getattr(part, key)
    return out


def describe_range(b: dict[str, float]) -> str:
    """{'gt': 0, 'le': 1} -> 'in (0, 1]'; {'ge': 1} -> '>= 1'."""
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = ("]", b["le"]) if "le" in b else (")", b["lt"]) if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return ""


# --------------------------------------------------------------------------------------------------
# pydantic's error -> our line

_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")   # a name, or not even a string
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true/false", "string": "a string",
             "tuple": "a list", "list": "a list", "dict": "a mapping", "dataclass": "a mapping"}


def _one_line(cls: type, err: Any, where: str) -> str:
    loc = tuple(err["loc"])
    kind, value = err["type"], err.get("input")
    if kind in _UNKNOWN_KEY:
        parent = _bare(_type_at(cls, loc[:-1]))
        keys = [f.name for f in dataclasses.fields(parent)] if dataclasses.is_dataclass(parent) else []
        key = str(loc[-1])
        return f"{_path(where, loc[:-1])}.{key}: unknown key.{did_you_mean(key, keys)} Valid keys: {', '.join(keys)}"
    if kind == "missing":
        return f"{_path(where, loc)}: required key is missing"
    tp = _type_at(cls, loc)
    is_key = loc[-1:] == ("[key]",)
    path = _path(where, loc[:-2] if is_key else loc)
    if kind == "literal_error":
        named = next((m.kind for m in _metadata(tp) if isinstance(m, Named)), None)
        return str(unknown(named or str(_field_name(loc)), value, choices(tp), path))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        what = "a number " if _bare(tp) is float and len(bounds(tp)) == 1 else ""
        return f"{path}: must be {what}{describe_range(bounds(tp))}, got {_show(value)}"
    if kind == "finite_number":
        return f"{path}: expected a finite number, got {_show(value)}"
    if kind == "too_short":
        n = err["ctx"]["min_length"]
        return f"{path}: must not be empty" if n == 1 else f"{path}: list at least {n}, got {_show(value)}"
    expected = _EXPECTED.get(kind.split("_")[0])
    if expected:
        return f"{path}: {'key: ' if is_key else ''}expected {expected}, got {_show(value)}"
    return f"{path}: {err['msg']}, got {_show(value)}"


def _path(where: str, loc: tuple) -> str:
    return where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _field_name(loc: tuple) -> Any:
    names = [p for p in loc if isinstance(p, str) and p != "[key]"]
    return names[-2] if loc[-1:] == ("[key]",) and len(names) > 1 else names[-1]


def _bare(tp: Any) -> Any:
    """The type inside `Annotated[...]` (nested Annotated types are flattened by typing)."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _metadata(tp: Any) -> tuple:
    return tuple(getattr(tp, "__metadata__", ()))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _type_at(cls: type, loc: tuple) -> Any:
    """The declared annotation at pydantic's error location `loc` inside `cls` (Any where none is declared)."""
    tp: Any = cls
    parts = list(loc)
    while parts:
        part, base = parts.pop(0), _bare(tp)
        origin = typing.get_origin(base)
        if dataclasses.is_dataclass(base):
            tp = _hints(base).get(part, Any)  # type: ignore[arg-type]
        elif origin is dict:
            key_type, value_type = typing.get_args(base)
            if parts[:1] == ["[key]"]:
                parts.pop(0)
                tp = key_type
            else:
                tp = value_type
        elif origin in (tuple, list):
            tp = typing.get_args(base)[0]
        else:
            break
    return tp


def _check_tree(obj: Any, where: str) -> None:
    """Run `check(where)` on every params object in `obj`, innermost first."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _check_tree(getattr(obj, f.name), f"{where}.{f.name}")
        if isinstance(obj, Schema):
            obj.check(where)
    elif isinstance(obj, tuple):
        for i, v in enumerate(obj):
            _check_tree(v, f"{where}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_tree(v, f"{where}.{k}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["Bool", "Float", "Fraction", "Ge", "Gt", "Int", "Interval", "Le", "Lt", "MinLen", "Named", "NonNegFloat",
           "NonNegInt", "PosFloat", "PosInt", "Probability", "Schema", "Seed", "Str", "bounds", "choices",
           "describe_range", "from_dict", "to_dict"]
