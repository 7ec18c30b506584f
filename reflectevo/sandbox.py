"""Run model-written Python against assert tests in a separate, locked-down process.

Model code never runs in the pipeline's process. Each check starts a fresh `python -I -S -B`
interpreter (isolated mode: no site-packages, no PYTHON* variables, no user site, no .pyc writes) with
an **empty environment**, in a new session (its own process group), with stdin/stdout/stderr bound
to files of a private per-check folder, and a fresh working folder. Both folders are removed
afterwards. Many checks run in parallel (`run_many`: a thread pool over subprocesses).

Trusted prologue (the child program, `resources/sandbox_child.py`) runs first in the child, before model code:

1. On Linux as root: `unshare(CLONE_NEWNET | CLONE_NEWNS)` -- a network namespace with no interfaces
   (no sockets can reach anything, not even loopback) and a private mount namespace in which fresh
   tmpfs are mounted over `/tmp`, `/var/tmp` and `/dev/shm`, the working folder is bind-mounted in,
   and the Python standard library is bind-mounted read-only so that it stays importable after the
   privilege drop. As another user it tries `CLONE_NEWUSER | CLONE_NEWNET` (unprivileged namespaces).
2. Resource limits: RLIMIT_CPU (timeout + 1 s), RLIMIT_AS (memory cap, default 1 GiB),
   RLIMIT_FSIZE (largest file, default 4 MiB: also caps stdout/stderr), RLIMIT_CORE 0, RLIMIT_NOFILE.
3. As root: drop to `nobody`/`nogroup` (setgroups([]), setgid, setuid), then RLIMIT_NPROC 0 and
   `PR_SET_NO_NEW_PRIVS`. NPROC does not bind uid 0 (root is exempt), which is why the drop matters;
   as nobody, NPROC 0 makes every fork/thread creation fail, so fork bombs die at the first fork.
   As a non-root user NPROC 0 binds directly (the user's own process count is always >= 0).

The parent enforces a **wall-clock timeout** and then SIGKILLs the child's whole process group
(`start_new_session` + `killpg`); it also kills the group after a normal exit, so nothing lingers.

Verdict integrity (what the model cannot fake). Python offers no isolation *inside* a process: code
that runs in the child can read every secret there (frames, gc, /proc/self/mem), replace builtins,
exit early, write to any file descriptor. So the child is treated as fully hostile, and **the verdict
is computed in the parent, never reported by the child**:

- The parent parses every test (`analyse_test`). For `assert <expr>`, each maximal sub-expression the
  parent can evaluate itself (literals, containers of literals, a few pure builtins such as `set`,
  `sorted`, `float`) stays in the parent; every other operand (e.g. the call `f(3)`) is a *leaf* that
  the child evaluates and serialises as plain data (int, float, str, list, tuple, dict, set, ...,
  type-tagged JSON; objects of other types are refused). The parent decodes the data (no code runs
  while decoding) and applies the comparisons, `not`, `and`/`or` itself. An object whose `__eq__`
  always returns True, an overridden `AssertionError`, a patched `print`, `sys.exit(0)`/`os._exit(0)`
  before the tests, signal tampering, or a forged "PASS" line therefore cannot turn a failure into a
  pass: a missing leaf value is a failure, and a forged leaf value only passes if it equals the
  expected one -- exactly what hard-coding the answers (visible in MBPP prompts) would achieve anyway.
- Each run has a random nonce that frames the result records (stray output cannot be mistaken for a
  record); records repeated for the same leaf count as tampering. The nonce is *not* relied upon for
  integrity (hostile code can read it), the parent-side comparison is.
- A test that is not a single `assert` statement is run as-is in the child, and only its "ran without
  raising" report is used: that report *can* be forged. Such tests are counted in
  `SandboxResult.weak_tests`; every MBPP test is a single assert.

What is not enforced (and why):

- Without root and without unprivileged user namespaces there is no network or mount isolation and
  the model code runs with the invoking user's file permissions (it can read, write and delete what
  that user can): namespaces need CAP_SYS_ADMIN, and changing uid needs root. `SandboxResult.isolation`
  records what was in force for each run.
- Reading world-readable host files is not prevented (as `nobody`, only files readable by "other").
- No seccomp filter and no cgroup: CPU time, memory, file size and process count are bounded by
  rlimits only; total disk use is bounded by the tmpfs sizes (and by RLIMIT_FSIZE per file).
- Non-Linux systems: only the subprocess, timeout, empty environment, rlimits that exist and the
  parent-side verdict apply.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 5.0  # seconds, like ReflectEvo's env_mbpp.py
DEFAULT_MEMORY = 1 << 30  # RLIMIT_AS bytes
DEFAULT_FSIZE = 4 << 20  # RLIMIT_FSIZE bytes
OUTPUT_CAP = 8192  # bytes of the child's stdout/stderr kept in a result


# The child's trusted prologue and runner: a module of its own, shipped as package data.
CHILD_PROGRAM = Path(__file__).parent / "resources" / "sandbox_child.py"


@functools.cache
def child_program() -> str:
    """The child's source (resources/sandbox_child.py), passed with `-c`; it holds no secret."""
    return CHILD_PROGRAM.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# Parent side: test analysis (which operands the parent evaluates itself) and value decoding.
# ----------------------------------------------------------------------------------------------------
_SAFE_CALLS: dict[str, Any] = {
    "set": set, "frozenset": frozenset, "list": list, "tuple": tuple, "dict": dict, "sorted": sorted,
    "float": float, "int": int, "str": str, "bool": bool, "complex": complex, "abs": abs, "len": len,
    "round": round, "min": min, "max": max, "sum": sum, "range": range,
}
_SAFE_NAMES = {"True": True, "False": False, "None": None}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}
_CMPOPS = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
           ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
           ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b}


class _NotTrusted(Exception):
    pass


def _trusted_eval(node: ast.AST) -> Any:
    """Evaluate a test operand in the parent when it uses only literals and pure builtins."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _SAFE_NAMES:
        return _SAFE_NAMES[node.id]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        vals = [_trusted_eval(e) for e in node.elts]
        return tuple(vals) if isinstance(node, ast.Tuple) else (vals if isinstance(node, ast.List) else set(vals))
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotTrusted
        return {_trusted_eval(k): _trusted_eval(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        v = _trusted_eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not v
        if not isinstance(v, (int, float, complex)):
            raise _NotTrusted
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _trusted_eval(node.left), _trusted_eval(node.right)
        if not (isinstance(a, (int, float, complex)) and isinstance(b, (int, float, complex))):
            raise _NotTrusted  # no string/list repetition bombs from test text
        return _BINOPS[type(node.op)](a, b)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SAFE_CALLS
            and not node.keywords and len(node.args) <= 3):
        args = [_trusted_eval(a) for a in node.args]
        if node.func.id == "range" and any(not isinstance(a, int) or abs(a) > 10**6 for a in args):
            raise _NotTrusted
        return _SAFE_CALLS[node.func.id](*args)
    raise _NotTrusted


@dataclass(frozen=True)
class TestPlan:
    """How one test is judged: `expr` is an AST whose untrusted operands are `Leaf` placeholders."""

    source: str
    kind: str  # "assert" (judged in the parent) or "exec" (child's report only: weak)
    expr: Any = None
    leaves: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Leaf:
    index: int


@dataclass(frozen=True)
class _Trusted:
    value: Any


def analyse_test(source: str) -> TestPlan:
    """Split a test into parent-evaluated structure and child-evaluated leaves."""
    try:
        mod = ast.parse(source)
    except SyntaxError:
        return TestPlan(source, "exec")
    if len(mod.body) != 1 or not isinstance(mod.body[0], ast.Assert):
        return TestPlan(source, "exec")
    leaves: list[str] = []

    def plan(node: ast.expr) -> Any:
        if isinstance(node, ast.Compare) and all(type(o) in _CMPOPS for o in node.ops):
            return ("cmp", [type(o) for o in node.ops], [plan(x) for x in [node.left, *node.comparators]])
        if isinstance(node, ast.BoolOp):
            return ("and" if isinstance(node.op, ast.And) else "or", [plan(v) for v in node.values])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ("not", plan(node.operand))
        try:
            return _Trusted(_trusted_eval(node))
        except Exception:
            leaves.append(ast.unparse(node))
            return _Leaf(len(leaves) - 1)

    return TestPlan(source, "assert", plan(mod.body[0].test), tuple(leaves))


class _Iterated:
    """An iterator's items as the child reported them; equal only to itself, like a real iterator."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __repr__(self) -> str:
        return f"<iterator {self.items!r}>"


def decode(v: Any) -> Any:
    """Decode the child's type-tagged JSON into plain Python data (no code runs)."""
    if not isinstance(v, list) or not v or not isinstance(v[0], str):
        raise ValueError("bad value record")
    tag, rest = v[0], v[1:]
    if tag == "N":
        return None
    if tag == "b":
        return bool(rest[0])
    if tag == "i":
        return int(rest[0])
    if tag == "f":
        return float(rest[0])
    if tag == "c":
        return complex(float(rest[0]), float(rest[1]))
    if tag == "s":
        return str(rest[0])
    if tag == "y":
        return bytes.fromhex(rest[0])
    if tag == "D":
        return Decimal(rest[0])
    if tag == "Q":
        return Fraction(int(rest[0]), int(rest[1]))
    if tag == "r":
        return range(int(rest[0]), int(rest[1]), int(rest[2]))
    if tag == "l":
        return [decode(x) for x in rest[0]]
    if tag == "t":
        return tuple(decode(x) for x in rest[0])
    if tag == "S":
        return {decode(x) for x in rest[0]}
    if tag == "F":
        return frozenset(decode(x) for x in rest[0])
    if tag == "d":
        return {decode(k): decode(x) for k, x in rest[0]}
    if tag == "K":
        return dict.fromkeys(decode(x) for x in rest[0]).keys()
    if tag == "E":
        return {decode(k): decode(x) for k, x in rest[0]}.items()
    if tag == "I":
        return _Iterated([decode(x) for x in rest[0]])
    raise ValueError(f"unknown value tag {tag!r}")


def _judge(expr: Any, leaves: dict[int, Any]) -> Any:
    if isinstance(expr, _Trusted):
        return expr.value
    if isinstance(expr, _Leaf):
        return leaves[expr.index]
    kind = expr[0]
    if kind == "cmp":
        ops, operands = expr[1], [_judge(x, leaves) for x in expr[2]]
        return all(_CMPOPS[op](operands[i], operands[i + 1]) for i, op in enumerate(ops))
    if kind == "not":
        return not _judge(expr[1], leaves)
    values = [bool(_judge(x, leaves)) for x in expr[1]]
    return all(values) if kind == "and" else any(values)


def _short(x: Any, n: int = 200) -> str:
    s = repr(x)
    return s if len(s) <= n else s[:n] + "..."


# ----------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    error: str | None
    timed_out: bool = False
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    weak_tests: int = 0  # tests judged on the child's own report (not single asserts)
    isolation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One check: model code, assert tests, optional test setup code (run after the code, before the tests)."""

    code: str
    tests: Sequence[str]
    setup: str = ""


def _nobody() -> tuple[int, int]:
    try:
        import pwd

        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def run_tests(code: str, tests: Sequence[str], setup: str = "", timeout: float = DEFAULT_TIMEOUT,
              memory: int = DEFAULT_MEMORY, fsize: int = DEFAULT_FSIZE, drop_root: bool = True) -> SandboxResult:
    """Run `code`, then the test `setup` (it may use the code's names), then `tests` in a sandboxed child; judge the tests in this process."""
    plans = [analyse_test(t) for t in tests]
    nonce = secrets.token_hex(16)
    uid, gid = _nobody()
    private = Path(tempfile.mkdtemp(prefix="reflectevo-sbx-"))
    t0 = time.monotonic()
    try:
        work = private / "work"
        work.mkdir()
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        if as_root and drop_root:
            os.chown(work, uid, gid)
        with open(private / "res", "wb") as fres:
            cfg = {"nonce": nonce, "workdir": str(work), "setup": setup, "code": code,
                   "tests": [{"kind": "exec", "src": p.source} if p.kind == "exec"
                             else {"kind": "assert", "leaves": list(p.leaves)} for p in plans],
                   "cpu": int(math.ceil(timeout)) + 1, "memory": int(memory), "fsize": int(fsize),
                   "drop_root": bool(drop_root), "uid": uid, "gid": gid, "result_fd": fres.fileno()}
            (private / "in").write_text(json.dumps(cfg))
            with open(private / "in", "rb") as fin, open(private / "out", "wb") as fout, \
                    open(private / "err", "wb") as ferr:
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", child_program()], stdin=fin,
                                        stdout=fout, stderr=ferr, env={}, cwd=str(private), start_new_session=True,
                                        pass_fds=(fres.fileno(),), close_fds=True)
                timed_out = False
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
        seconds = time.monotonic() - t0
        out = _read_capped(private / "out")
        err = _read_capped(private / "err")
        records = _records(private / "res", nonce)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    iso = next((r.get("value", {}) for r in records if r.get("kind") == "isolation"), {})
    if not isinstance(iso, dict):
        iso = {}
    base = dict(seconds=seconds, stdout=out, stderr=err, isolation=iso,
                weak_tests=sum(p.kind == "exec" for p in plans))
    if timed_out:
        return SandboxResult(False, f"timeout after {timeout:g} s", timed_out=True, **base)
    passed, error = _verdict(plans, records, proc.returncode)
    return SandboxResult(passed, error, **base)


def _read_capped(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(OUTPUT_CAP).decode("utf-8", "replace")
    except OSError:
        return ""


def _records(path: Path, nonce: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as fh:
            data = fh.read(64 << 20)
    except OSError:
        return out
    for line in data.split(b"\n"):
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("nonce") == nonce:
            out.append(rec)
    return out


def _verdict(plans: list[TestPlan], records: list[dict[str, Any]], returncode: int | None) -> tuple[bool, str | None]:
    crash = next((r for r in records if r.get("kind") == "crash"), None)
    if crash is not None:
        return False, f"{crash.get('stage', 'code')} raised {crash.get('error', '')}"
    leaves: dict[int, dict[int, Any]] = {}
    ran: set[int] = set()
    errors: dict[int, str] = {}
    for r in records:
        kind, ti = r.get("kind"), r.get("test")
        if kind == "leaf":
            li = r.get("leaf")
            if not isinstance(ti, int) or not isinstance(li, int):
                return False, "malformed result record"
            slot = leaves.setdefault(ti, {})
            if li in slot:
                return False, "result records repeated (tampering)"
            try:
                slot[li] = decode(r.get("value"))
            except (ValueError, TypeError, IndexError, KeyError, OverflowError) as e:
                return False, f"undecodable result: {e}"
        elif kind == "ran" and isinstance(ti, int):
            ran.add(ti)
        elif kind == "error" and isinstance(ti, int):
            errors.setdefault(ti, str(r.get("error", "")))
    for ti, p in enumerate(plans):
        if ti in errors:
            return False, f"test {ti + 1} raised {errors[ti]}: {p.source}"
        if p.kind == "exec":
            if ti not in ran:
                return False, f"test {ti + 1} did not run: {p.source}"
            continue
        got = leaves.get(ti, {})
        if len(got) != len(p.leaves):
            return False, f"test {ti + 1} did not run (exit status {returncode}): {p.source}"
        try:
            ok = bool(_judge(p.expr, got))
        except Exception as e:  # e.g. '<' between incomparable types, as Python itself would raise
            return False, f"test {ti + 1} raised {type(e).__name__}: {e}: {p.source}"
        if not ok:
            shown = ", ".join(_short(got[i]) for i in sorted(got))
            return False, f"test {ti + 1} failed: {p.source} (got {shown})"
    return True, None


def run_many(jobs: Sequence[Job], workers: int | None = None, timeout: float = DEFAULT_TIMEOUT,
             **kw: Any) -> list[SandboxResult]:
    """Run jobs in parallel, one sandboxed child each (default: one per CPU core); results in order."""
    if not jobs:
        return []
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or len(jobs) == 1:
        return [run_tests(j.code, j.tests, j.setup, timeout=timeout, **kw) for j in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(lambda j: run_tests(j.code, j.tests, j.setup, timeout=timeout, **kw), jobs))
