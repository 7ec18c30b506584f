"""The README's commands and links cannot drift from the code.

Convention (docs/architecture.md, "Documentation that is tested"): a ```sh block holds commands. Every
command must exist with the flags shown: the `reflectevo` command and the stage, bench and script files
are parsed by their own typer (or argparse) definitions, `dvc` commands by DVC's own parser, `make`
targets by `make -n`; every `-S key=value` must name a key of params.yaml, and params.yaml with all of a
command's `-S` values applied must pass `reflectevo params check`. A ```sh block after the line
`<!-- test: run -->` is also run here, in a temporary folder holding a copy of params.yaml; one after
`<!-- test: run after repro -->` is run by tests/test_pipeline.py in its project after `dvc repro` on the
tiny model. ```text blocks are output, or commands that need what a test cannot have (a bucket, a
server). README.md has no other kind of block; in docs/*.md only the ```sh blocks are checked.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN, RUN_AFTER_REPRO = "run", "run after repro"
MARKER = re.compile(r"^\s*<!--\s*test:\s*(.+?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
# environment variables of other tools that the pages may set (the project's own are found in its code)
OTHER_ENV = {"HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "PIP_EXTRA_INDEX_URL", "CUDA_VISIBLE_DEVICES",
             "OPENAI_API_KEY", "OPENAI_BASE_URL", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
SCRIPT_DIRS = ("stages", "bench", "scripts")


@dataclass
class Block:
    page: Path
    line: int          # line of the opening fence
    lang: str
    marker: str | None  # "run", "run after repro", or None
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mk = MARKER.match(prev)
        out.append(Block(page, start + 1, lang, mk.group(1) if mk else None, "\n".join(body)))
        i += 1
    return out


def sh_blocks(marker: str | None = "any") -> list[Block]:
    return [b for p in PAGES for b in blocks(p) if b.lang == "sh" and (marker == "any" or b.marker == marker)]


def commands(text: str) -> list[list[str]]:
    """The block's simple commands as argument lists (comments dropped; `&&`, `;`, `||`, `|` split)."""
    text = re.sub(r"\\\n", " ", text)
    out: list[list[str]] = []
    for line in text.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split, lex.commenters = True, "#"
        cmd: list[str] = []
        for tok in lex:
            if tok in ("&&", "||", ";", "|", "&"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            out.append(cmd)
    return out


# ------------------------------------------------------------------------------------------------ checkers


@functools.cache
def project_text() -> str:
    files = [*ROOT.glob("reflectevo/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("bench/*.py"), ROOT / "Makefile"]
    return "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def check_env(name: str) -> None:
    assert name in OTHER_ENV or re.search(rf"\b{re.escape(name)}\b", project_text()), \
        f"environment variable {name} is read by nothing in the project"


@functools.cache
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


@functools.cache
def stage_names(cwd: Path) -> set[str]:
    return set((yaml.safe_load((cwd / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages") or {})


def check_params_override(sets: list[str], tmp: Path) -> None:
    """Like `dvc exp run -S`: each key must exist in params.yaml; the result must pass `reflectevo params check`."""
    from typer.testing import CliRunner

    from reflectevo.cli import app

    p = copy.deepcopy(params())
    for s in sets:
        key, sep, value = s.partition("=")
        assert sep, f"-S {s}: expected key=value"
        node, parts = p, key.split(".")
        for part in parts[:-1]:
            assert isinstance(node, dict) and part in node, f"-S {s}: {key} is not a key of params.yaml"
            node = node[part]
        assert isinstance(node, dict) and parts[-1] in node, f"-S {s}: {key} is not a key of params.yaml"
        node[parts[-1]] = yaml.safe_load(value) if value else ""
    f = tmp / "params.yaml"
    f.write_text(yaml.safe_dump(p, sort_keys=False), encoding="utf-8")
    res = CliRunner().invoke(app, ["params", "check", str(f)])
    assert res.exit_code == 0, f"-S {' -S '.join(sets)}: reflectevo params check says: {res.output.strip()}"


def check_dvc(args: list[str], cwd: Path, tmp: Path) -> None:
    from dvc.cli.parser import get_main_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = get_main_parser().parse_args(args)
    except (SystemExit, Exception) as e:   # argparse exits; DVC's parser raises DvcParserError
        raise AssertionError(f"dvc {' '.join(args)}: DVC's parser refuses it: {err.getvalue().strip()[-300:]}") from e
    if args[:1] == ["repro"] or args[:2] == ["exp", "run"]:
        for target in getattr(ns, "targets", None) or []:
            assert target.split("@")[0] in stage_names(cwd), f"dvc {' '.join(args)}: no stage {target} in {cwd / 'dvc.yaml'}"
    if args[:2] == ["exp", "run"] and ns.set_param:
        check_params_override(list(ns.set_param), tmp)


def click_command(script: Path):
    """The click command behind a typer script (`app`, or `typer.run(main)`), or None for argparse scripts."""
    import typer

    spec = importlib.util.spec_from_file_location(f"_doc_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if isinstance(getattr(mod, "app", None), typer.Typer):
        return typer.main.get_command(mod.app)
    if "typer.run(main)" in script.read_text(encoding="utf-8"):
        app = typer.Typer(add_completion=False)
        app.command()(mod.main)
        return typer.main.get_command(app)
    return None


def _click_exceptions(cmd):
    """The exceptions module of the click that built `cmd` (typer vendors its own copy)."""
    core = next(k.__module__ for k in type(cmd).__mro__ if k.__name__ == "Command" and k.__module__.endswith(".core"))
    return importlib.import_module(core.removesuffix(".core") + ".exceptions")


def parse_click(cmd, name: str, args: list[str]) -> None:
    """Parse like click does before running: unknown options and commands, missing or extra arguments
    fail. A path that must exist is not required to (it is what an earlier command or stage writes)."""
    exc = _click_exceptions(cmd)
    try:
        ctx = cmd.make_context(name, list(args))
        while hasattr(cmd, "resolve_command"):   # a group: go down to the subcommand, as click does
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                break
            sub_name, cmd, rest = ctx.command.resolve_command(ctx, rest)
            ctx = cmd.make_context(sub_name, rest, parent=ctx)
    except exc.BadParameter as e:
        if "does not exist" not in str(e):
            raise AssertionError(f"{name} {' '.join(args)}: {e.format_message()}") from None
    except exc.ClickException as e:
        raise AssertionError(f"{name} {' '.join(args)}: {e.format_message()}") from None


def check_script(script: Path, args: list[str]) -> None:
    assert script.is_file(), f"{script.relative_to(ROOT)}: no such script"
    cmd = click_command(script)
    if cmd is not None:
        parse_click(cmd, str(script.relative_to(ROOT)), args)
        return
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=False)
    assert res.returncode == 0, f"{script.relative_to(ROOT)} --help failed: {res.stderr[-1000:]}"
    for a in args:
        if a.startswith("--"):
            assert a.split("=")[0] in res.stdout, f"{script.relative_to(ROOT)}: no option {a} in its --help"


def check_pip(args: list[str]) -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = meta.get("optional-dependencies") or {}
    deps = " ".join([*meta.get("dependencies", []), *(d for v in extras.values() for d in v)])
    assert args[:1] == ["install"], f"pip {' '.join(args)}: only `pip install` is documented"
    for a in args[1:]:
        if a.startswith("-"):
            continue
        m = re.fullmatch(r"(\.|[A-Za-z0-9_.-]+)(?:\[([\w,-]+)\])?", a)
        assert m, f"pip install {a}: not a package or the project"
        if m.group(1) == ".":
            for extra in (m.group(2) or "").split(","):
                assert not extra or extra in extras, f"pip install {a}: pyproject.toml has no extra {extra!r}"
        else:
            assert re.search(rf"\b{re.escape(m.group(1))}\b", deps), f"pip install {a}: not a dependency of the project"


def check_command(argv: list[str], cwd: Path, tmp: Path) -> Path:
    """Check one command; returns the working directory for the next one (after a `cd`)."""
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        check_env(argv[0].split("=")[0])
        argv = argv[1:]
    assert argv, "empty command"
    exe, args = argv[0], argv[1:]
    if exe == "export":
        for a in args:
            check_env(a.split("=")[0])
    elif exe == "cd":
        cwd = (cwd / args[0]).resolve()
        assert cwd.is_dir(), f"cd {args[0]}: no such folder"
    elif exe == "make":
        res = subprocess.run(["make", "-n", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, f"make {' '.join(args)}: {res.stderr.strip()}"
    elif exe in ("source", "."):
        venv = re.search(r"^VENV\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
        assert args == [f"{venv}/bin/activate"], f"source {' '.join(args)}: make creates {venv}/bin/activate"
    elif exe == "pip":
        check_pip(args)
    elif exe == "dvc":
        check_dvc(args, cwd, tmp)
    elif exe == "reflectevo":
        import typer

        from reflectevo.cli import app

        parse_click(typer.main.get_command(app), "reflectevo", args)
    elif exe == "python" and args[:2] == ["-m", "reflectevo.cli"]:
        return check_command(["reflectevo", *args[2:]], cwd, tmp)
    elif exe == "python":
        assert args and args[0].split("/")[0] in SCRIPT_DIRS, f"python {' '.join(args)}: not a script of the project"
        check_script(cwd / args[0], args[1:])
    else:
        raise AssertionError(f"{exe}: not a command the documentation test knows; use a ```text block for it, "
                             "or teach tests/test_readme.py to check it")
    return cwd


# ------------------------------------------------------------------------------------------------ tests


def test_the_readme_has_only_sh_and_text_blocks():
    bad = [f"{b.where}: ```{b.lang}" for b in blocks(ROOT / "README.md") if b.lang not in ("sh", "text")]
    assert bad == [], "README code blocks are ```sh (tested commands) or ```text (output)"
    assert sh_blocks(RUN) and sh_blocks(RUN_AFTER_REPRO)


def test_markers_name_a_known_kind_and_stand_before_a_sh_block():
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = MARKER.match(line)
            if m:
                assert m.group(1) in (RUN, RUN_AFTER_REPRO), f"{page.name}:{i + 1}: unknown marker {m.group(1)!r}"
                nxt = next((x for x in lines[i + 1:] if x.strip()), "")
                assert nxt.strip() == "```sh", f"{page.name}:{i + 1}: a marker must stand right before a ```sh block"


@pytest.mark.parametrize("block", sh_blocks(), ids=lambda b: b.where)
def test_every_sh_command_exists_with_its_flags(block, tmp_path):
    cwd = ROOT
    cmds = commands(block.text)
    assert cmds, f"{block.where}: an empty ```sh block"
    for argv in cmds:
        cwd = check_command(argv, cwd, tmp_path)


@pytest.mark.parametrize("block", sh_blocks(RUN), ids=lambda b: b.where)
def test_runnable_blocks_run(block, tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, f"{block.where}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{block.where}: printed nothing"


def test_the_checker_refuses_what_does_not_exist(tmp_path):
    wrong = [(["reflectevo", "presets", "--nope"], "No such option"),
             (["reflectevo", "nope"], "No such command"),
             (["dvc", "exp", "run", "-S", "generate.kk=4"], "not a key of params.yaml"),
             (["dvc", "exp", "run", "-S", "generate.k=-1"], "params check says"),
             (["dvc", "repro", "nope"], "no stage nope"),
             (["dvc", "exp", "show", "--nope"], "refuses"),
             (["python", "stages/evolve.py", "chain"], "Missing argument"),
             (["python", "stages/train.py", "--nope"], "No such option"),
             (["pip", "install", ".[nope]"], "no extra"),
             (["make", "nope"], "make nope"),
             (["NOPE_VAR=1", "make", "repro"], "read by nothing"),
             (["curl", "x"], "not a command the documentation test knows")]
    for argv, msg in wrong:
        with pytest.raises(AssertionError, match=re.escape(msg)):
            check_command(argv, ROOT, tmp_path)


def test_commands_split_like_the_shell():
    assert commands("python stages/evolve.py chain 3 && dvc repro   # two\nX=1 make \\\n  repro") == \
        [["python", "stages/evolve.py", "chain", "3"], ["dvc", "repro"], ["X=1", "make", "repro"]]
    assert commands("dvc exp show --drop 'models.*'") == [["dvc", "exp", "show", "--drop", "models.*"]]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return {_slug(re.sub(r"[`*]", "", h)) for h in re.findall(r"^#+\s+(.+)$", text, re.MULTILINE)}


def test_relative_links_point_to_files_and_headings_that_exist():
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.name}: {target}: no such heading in {dest.name}")
    assert bad == []


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
