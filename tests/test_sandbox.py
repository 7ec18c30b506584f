"""Sandbox: hostile MBPP predictions are judged not correct, return in time and leave the host untouched."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from reflectevo.sandbox import Job, analyse_test, run_many, run_tests
from reflectevo.tasks.base import Item
from reflectevo.tasks.reflectevo_tasks import MBPPTask

TIMEOUT = 2.0
TESTS = ("assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0")
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Each program is the whole prediction; none of them computes add() correctly, so none may pass.
HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory_bomb": "x = []\nwhile True:\n    x.append(bytearray(10**8))\n",
    "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 100000)\n",
    "write_outside": ("open({canary_dir!r} + '/pwned.txt', 'w').write('x')\n"
                     "open('/tmp/reflectevo-pwned.txt', 'w').write('x')\ndef add(a, b): return 0\n"),
    "delete_files": "import os, shutil\nos.remove({canary_file!r})\nshutil.rmtree({canary_dir!r})\ndef add(a, b): return 0\n",
    "network": "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'x')\n"
               "def add(a, b): return 0\n",
    "env_secrets": "import os\nsecret = os.environ.get('REFLECTEVO_CANARY_SECRET')\nassert secret\n"
                   "def add(a, b): return 0\n",
    "read_secret_file": "data = open({secret_file!r}).read()\ndef add(a, b): return 0\n",
    "subprocess": "import subprocess\nsubprocess.run(['touch', {spawn_file!r}])\ndef add(a, b): return 0\n",
    "os_exit_before_asserts": "import os\nos._exit(0)\n",
    "sys_exit_before_asserts": "import sys\nsys.exit(0)\n",
    "override_assertion_error": ("import builtins\nclass Fake(Exception): pass\nbuiltins.AssertionError = Fake\n"
                                 "def add(a, b): return 0\n"),
    "always_equal_object": ("class Yes:\n    def __eq__(self, other): return True\n    def __bool__(self): return True\n"
                            "def add(a, b): return Yes()\n"),
    "patch_print_and_stdout": ("import sys, builtins\nbuiltins.print = lambda *a, **k: None\n"
                               "sys.stdout.write('PASS\\n')\nsys.stdout = None\ndef add(a, b): return 0\n"),
    "signal_tampering": ("import signal\nfor s in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU):\n"
                         "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(0)\nwhile True:\n    pass\n"),
    "forged_records": ("import os, json\nfor fd in range(3, 20):\n    try:\n"
                       "        os.write(fd, (json.dumps({{'kind': 'done'}}) + '\\n').encode())\n    except OSError:\n"
                       "        pass\nos._exit(0)\n"),
    "setsid_escape": "import os\nif os.fork() == 0:\n    os.setsid()\n    open({spawn_file!r}, 'w')\nos._exit(0)\n",
}


@pytest.fixture()
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    canary_file = canary_dir / "keep.txt"
    canary_file.write_text("keep")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("s3cret")
    secret_file.chmod(0o600)
    monkeypatch.setenv("REFLECTEVO_CANARY_SECRET", "hunter2")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    yield {"canary_dir": str(canary_dir), "canary_file": str(canary_file), "secret_file": str(secret_file),
           "spawn_file": str(tmp_path / "spawned.txt"), "port": server.getsockname()[1], "server": server}
    server.close()
    Path("/tmp/reflectevo-pwned.txt").unlink(missing_ok=True)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_not_correct(name: str, host) -> None:
    code = HOSTILE[name].format(**{k: v for k, v in host.items() if k != "server"})
    item = Item(id="t", task="mbpp", question="add", answer="def add(a, b): return a + b", tests=TESTS)
    t0 = time.monotonic()
    verdict = MBPPTask(timeout=TIMEOUT).verify(f"Action: [BEGIN]\n{code}\n[END]", item)
    elapsed = time.monotonic() - t0
    assert not verdict.correct, verdict
    assert verdict.error
    assert elapsed < TIMEOUT + 1.0, elapsed
    # the host is untouched
    assert Path(host["canary_file"]).read_text() == "keep"
    assert not (Path(host["canary_dir"]) / "pwned.txt").exists()
    assert not Path("/tmp/reflectevo-pwned.txt").exists()
    time.sleep(0.05)
    assert not Path(host["spawn_file"]).exists()
    assert os.environ["REFLECTEVO_CANARY_SECRET"] == "hunter2"
    with pytest.raises(socket.timeout):
        host["server"].accept()


def test_correct_code_passes_and_wrong_code_fails_with_reason() -> None:
    ok = run_tests("def add(a, b):\n    return a + b\n", TESTS)
    assert ok.passed and ok.error is None
    bad = run_tests("def add(a, b):\n    return a - b\n", TESTS)
    assert not bad.passed and "test 1 failed" in (bad.error or "") and "got -1" in (bad.error or "")


def test_setup_code_runs_after_the_code_and_before_the_tests() -> None:
    code = "class Box:\n    def __init__(self, v): self.v = v\ndef get(b): return b.v\n"
    assert run_tests(code, ["assert get(box) == 7"], setup="box = Box(7)").passed


def test_isolation_in_force() -> None:
    r = run_tests("import os\ndef f(): return os.getuid()\n", ["assert f() == f()"])
    assert r.passed
    if AS_ROOT:
        assert r.isolation["uid"] != 0 and r.isolation["netns"] and r.isolation["mountns"]
    assert r.isolation["nproc_binds"]


def test_environment_is_empty_and_cwd_is_fresh() -> None:
    # LC_CTYPE is the only variable, set by the interpreter itself (PEP 538 C-locale coercion)
    code = ("import os\ndef env(): return {k: v for k, v in os.environ.items() if k != 'LC_CTYPE'}\n"
            "def files(): return sorted(os.listdir('.'))\n")
    r = run_tests(code, ["assert env() == {}", "assert files() == []"])
    assert r.passed, r.error


def test_forged_value_must_equal_the_expected_one() -> None:
    # the verdict is computed in the parent from plain data: a value of a foreign type is refused
    r = run_tests("class X(int):\n    def __eq__(self, o): return True\ndef f(): return X(5)\n", ["assert f() == 6"])
    assert not r.passed
    r = run_tests("def f(): return object()\n", ["assert f() == 6"])
    assert not r.passed and "unsupported result type" in (r.error or "")


def test_analyse_test_keeps_literals_in_the_parent() -> None:
    plan = analyse_test("assert set(f(1)) == set([1, 2]) and g() != -3")
    assert plan.kind == "assert" and plan.leaves == ("set(f(1))", "g()")
    assert analyse_test("for i in range(3):\n    assert f(i)").kind == "exec"


def test_result_types_round_trip() -> None:
    code = ("from collections import Counter, OrderedDict, namedtuple\nP = namedtuple('P', 'x y')\n"
            "def f(): return [1.5, (2, 'a'), {3}, frozenset([4]), {'k': None}, b'x', 1+2j, True, 10**30]\n"
            "def g(): return map(str, [1, 2])\ndef h(): return Counter('aab')\ndef p(): return P(1, 2)\n")
    tests = ["assert f() == [1.5, (2, 'a'), {3}, frozenset([4]), {'k': None}, b'x', 1+2j, True, 10**30]",
             "assert list(g()) == ['1', '2']", "assert h() == {'a': 2, 'b': 1}", "assert p() == (1, 2)"]
    r = run_tests(code, tests)
    assert r.passed, r.error
    assert not run_tests(code, ["assert g() == ['1', '2']"]).passed  # a map is not a list, as in Python


def test_run_many_is_parallel_and_ordered() -> None:
    jobs = [Job("import time\ntime.sleep(0.5)\ndef f(): return %d\n" % i, [f"assert f() == {i}"]) for i in range(4)]
    t0 = time.monotonic()
    results = run_many(jobs, workers=4)
    assert all(r.passed for r in results)
    assert time.monotonic() - t0 < 4 * 0.5  # serial would take >= 2 s
