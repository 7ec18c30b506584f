"""Recipes: committed files of params overrides (`configs/recipes/<name>.yaml`), applied as one DVC experiment.

A recipe maps dotted params.yaml keys to values (`generate.k: 32`, `prepare.tasks: [...]`). `reflectevo recipe
run NAME` turns each entry into `dvc exp run -S key=value` (Hydra's override grammar, as DVC parses it), after
applying them, with DVC's own code, to a copy of params.yaml and validating the result: a recipe that names a
key params.yaml lacks (DVC's `-S` refuses those), an unknown task or subtask, or a value the schema rejects is one
line (file:line, the key, did you mean) and nothing runs or is written. `-S` given on top wins over the recipe.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError, did_you_mean, unknown

RECIPE_DIR = Path("configs") / "recipes"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    overrides: dict[str, Any]          # dotted key -> value, in file order
    lines: dict[str, int]              # dotted key -> line number in the file (1-based)


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: ./configs/recipes, then the installed project's."""
    out = [Path.cwd() / RECIPE_DIR]
    if (REPO_ROOT / RECIPE_DIR).resolve() != out[0].resolve():
        out.append(REPO_ROOT / RECIPE_DIR)
    return out


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            found.setdefault(p.stem, p)
    return found


def recipe_path(name: str) -> Path:
    """A recipe name (configs/recipes/<name>.yaml) or a path to a recipe file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or "/" in name:
        if not p.is_file():
            raise ReflectEvoError(f"recipe file {p} not found")
        return p
    known = available()
    if name not in known:
        raise unknown("recipe", name, known, "recipe")
    return known[name]


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def load_recipe(name: str) -> Recipe:
    from ruamel.yaml import YAML

    path = recipe_path(name)
    try:
        data = YAML(typ="rt", pure=True).load(path.read_text())
    except Exception as e:  # ruamel's errors carry line and column
        raise ReflectEvoError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict) or not data:
        raise ReflectEvoError(f"{path}: a recipe is a mapping of params.yaml keys (dotted) to values")
    lines = {str(k): data.lc.key(k)[0] + 1 for k in data}
    return Recipe(name=path.stem, path=path, overrides={str(k): _plain(v) for k, v in data.items()}, lines=lines)


_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_/-]*")      # a string Hydra reads back as that string, unquoted
_HYDRA_WORDS = {"true", "false", "null", "nan", "inf"}


def hydra_value(v: Any) -> str:
    """A value in Hydra's override grammar (what `dvc exp run -S key=<value>` parses): strings quoted."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".e") else r + ".0"
    if isinstance(v, str):
        if _BARE.fullmatch(v) and v.lower() not in _HYDRA_WORDS:
            return v
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    raise ReflectEvoError(f"cannot pass {v!r} ({type(v).__name__}) as a params value")


def check_keys(params: dict[str, Any], recipe: Recipe) -> None:
    """Every recipe key exists in params.yaml (DVC's -S refuses new keys): one line naming file:line and key."""
    for key in recipe.overrides:
        node: Any = params
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                have = list(node) if isinstance(node, dict) else []
                prefix = ".".join(parts[:i])
                raise ReflectEvoError(
                    f"{recipe.path}:{recipe.lines.get(key, 0)}: key {key!r}: params.yaml has no "
                    f"{'key ' + repr(part) if not prefix else repr(part) + ' under ' + repr(prefix)}."
                    f"{did_you_mean(part, have)} (dvc exp run -S cannot add keys; valid here: "
                    f"{', '.join(map(str, have[:20]))}{' ...' if len(have) > 20 else ''})")
            node = node[part]


def user_overrides(args: list[str]) -> list[str]:
    """The `-S key=value` / `--set-param key=value` overrides among `dvc exp run` arguments."""
    out, it = [], iter(args)
    for a in it:
        if a in ("-S", "--set-param"):
            out.append(next(it, ""))
        elif a.startswith("--set-param="):
            out.append(a.split("=", 1)[1])
        elif a.startswith("-S") and len(a) > 2:
            out.append(a[2:])
    return [o for o in out if o and ":" not in o.split("=", 1)[0]]   # file.yaml:key=value targets another file


def overrides(recipe: Recipe, on_top: list[str] = ()) -> list[str]:
    """`key=value` strings for `dvc exp run -S`; a key the user sets on top is left to the user's value."""
    theirs = {o.split("=", 1)[0].lstrip("+~") for o in on_top}
    return [f"{k}={hydra_value(v)}" for k, v in recipe.overrides.items() if k not in theirs]


def apply(params_file: Path, recipe: Recipe | None, on_top: list[str] = ()) -> dict[str, Any]:
    """The params `dvc exp run -S ...` would write for this recipe (and the overrides on top), computed with DVC's
    own code on a temporary copy, then validated (`reflectevo.config.validate_all`). Nothing in the project is
    written. Returns the resulting params."""
    from reflectevo.config.params import read_params
    from reflectevo.paramsfile import validate_all

    params = read_params(params_file)
    if recipe is not None:
        check_keys(params, recipe)
    ovr = (overrides(recipe, list(on_top)) if recipe is not None else []) + list(on_top)
    with tempfile.TemporaryDirectory(prefix="reflectevo-recipe-") as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copyfile(params_file, copy)
        if ovr:
            from dvc.utils.hydra import apply_overrides

            try:
                apply_overrides(copy, ovr)
            except Exception as e:
                cause = f" ({' '.join(str(e.__cause__).split())[:300]})" if e.__cause__ else ""
                where = f"recipe {recipe.path}" if recipe is not None else "-S overrides"
                raise ReflectEvoError(f"{where}: dvc exp run -S would refuse these overrides: {e}{cause}") from None
        result = read_params(copy)
    try:
        validate_all(result)
    except ReflectEvoError as e:
        where = f"recipe {recipe.path}" if recipe is not None else "params"
        raise ReflectEvoError(f"{where} applied to {params_file}: {e}") from None
    return result


__all__ = ["RECIPE_DIR", "Recipe", "apply", "available", "check_keys", "hydra_value", "load_recipe", "overrides",
           "recipe_path", "user_overrides"]
