"""The sandbox's child program: the trusted prologue and runner of one check (see reflectevo/sandbox.py).

`reflectevo.sandbox.run_tests` passes this file's text to `python -I -S -B -c` with an empty
environment; the child reads its config (JSON) from stdin. It holds no secret and uses the standard
library only (no site-packages in the child). In order, before any model code runs:

1. namespaces (`lock_down`): as root a new network and mount namespace (tmpfs over /tmp, /var/tmp,
   /dev/shm; the work folder and a read-only standard library bound in); as another user an
   unprivileged user + network namespace where the kernel allows it;
2. resource limits, the privilege drop to nobody (root only), RLIMIT_NPROC 0, PR_SET_NO_NEW_PRIVS;
3. then the candidate code, the test setup and every test leaf, each result framed by the nonce
   (`emit`) and type-tagged (`make_encoder`) so that the parent decodes plain data and judges.

Importing this module runs nothing (tests load it to check the encoder); only `__main__` does.
"""

import json
import os
import sys

_rd, _wr, _close = os.read, os.write, os.close
_type, _str = type, str  # bound before model code can replace the builtins

NEWNET, NEWNS, NEWUSER = 0x40000000, 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PRELOAD = ("re", "math", "cmath", "collections", "itertools", "functools", "heapq", "bisect", "string",
           "operator", "random", "statistics", "decimal", "fractions", "datetime", "copy", "array",
           "typing", "collections.abc", "struct", "calendar", "textwrap")  # what reference solutions use


def read_all(fd):
    parts = []
    while True:
        b = _rd(fd, 1 << 16)
        if not b:
            return b"".join(parts)
        parts.append(b)


def _mount(libc, src, tgt, fstype, flags, data):
    def enc(s):
        return None if s is None else s.encode()

    return libc.mount(enc(src), enc(tgt), enc(fstype), flags, enc(data)) == 0


def _private_mounts(libc, cfg, iso):
    """As root in a new mount namespace: fresh tmpfs, the work folder at /tmp/work, a read-only stdlib.
    Returns the folder to work in."""
    work = cfg["workdir"]
    ok = _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    std = os.path.dirname(os.__file__)
    dyn = os.path.join(std, "lib-dynload")
    keep = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    size = f"size={4 * cfg['fsize'] + (8 << 20)}"
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if ok and os.path.isdir(d):
            ok = _mount(libc, "tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, size + ",mode=1777")
    if ok:
        for sub in ("/tmp/.stdlib", "/tmp/.stdlib-dynload", "/tmp/work"):
            os.mkdir(sub, 0o755)
        read_only = MS_BIND | MS_REMOUNT | MS_RDONLY
        ok = (_mount(libc, f"/proc/self/fd/{keep}", "/tmp/work", None, MS_BIND, None)
              and _mount(libc, std, "/tmp/.stdlib", None, MS_BIND | MS_REC, None)
              and _mount(libc, None, "/tmp/.stdlib", None, read_only, None))
        if ok and os.path.isdir(dyn):
            ok = (_mount(libc, dyn, "/tmp/.stdlib-dynload", None, MS_BIND, None)
                  and _mount(libc, None, "/tmp/.stdlib-dynload", None, read_only, None))
    os.close(keep)
    if not ok:
        return work
    iso["mountns"] = True
    sys.path[:0] = ["/tmp/.stdlib", "/tmp/.stdlib-dynload"]
    for mod in list(sys.modules.values()):  # packages already loaded find submodules there too
        p = getattr(mod, "__path__", None)
        if isinstance(p, list):
            p[:] = [x.replace(std, "/tmp/.stdlib", 1) if x.startswith(std) else x for x in p]
    return "/tmp/work"


def lock_down(cfg):
    """Namespaces, working folder, rlimits, privilege drop; returns what is in force (`isolation`)."""
    iso = {"netns": False, "mountns": False, "uid": os.getuid(), "nproc_binds": False}
    import resource

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:  # noqa: BLE001 - no ctypes: rlimits only
        libc = None
    work = cfg["workdir"]
    if libc is not None and sys.platform.startswith("linux"):
        if os.getuid() == 0:
            if libc.unshare(NEWNET | NEWNS) == 0:
                iso["netns"] = True
                work = _private_mounts(libc, cfg, iso)
        elif libc.unshare(NEWUSER | NEWNET) == 0:
            iso["netns"] = True
    os.chdir(work)
    os.umask(0o077)

    def lim(name, value):
        r = getattr(resource, name, None)
        if r is None:
            return False
        try:
            resource.setrlimit(r, (value, value))
            return True
        except (ValueError, OSError):
            return False

    lim("RLIMIT_CPU", cfg["cpu"])
    lim("RLIMIT_AS", cfg["memory"])
    lim("RLIMIT_FSIZE", cfg["fsize"])
    lim("RLIMIT_CORE", 0)
    lim("RLIMIT_NOFILE", 64)
    if os.getuid() == 0 and cfg["drop_root"]:
        # without the read-only stdlib bind: load what reference solutions use while it is still readable
        for m in () if iso["mountns"] else PRELOAD:
            try:
                __import__(m)
            except Exception:  # noqa: BLE001, S110 - a module that fails to load is simply not preloaded
                pass
        try:
            os.setgroups([])
            os.setgid(cfg["gid"])
            os.setuid(cfg["uid"])
        except OSError:
            pass
        iso["uid"] = os.getuid()
    if os.getuid() != 0:
        iso["nproc_binds"] = lim("RLIMIT_NPROC", 0)
    if libc is not None and sys.platform.startswith("linux"):
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    return iso


def make_emitter(nonce, fd):
    """emit(record): one JSON line framed by the nonce, written with the os.write captured at start."""
    dumps = json.dumps

    def emit(rec):
        rec["nonce"] = nonce
        data = (dumps(rec) + "\n").encode()
        while data:
            n = _wr(fd, data)
            data = data[n:]

    return emit


def make_encoder(budget=1_000_000, max_depth=100):
    """enc(value): type-tagged JSON of plain data (what `reflectevo.sandbox.decode` reads); other types
    raise TypeError. Builtins are bound now, before model code can replace them."""
    from decimal import Decimal as _D
    from fractions import Fraction as _Fr

    _isinst, _type = isinstance, type
    _dkeys, _dvals, _ditems = type({}.keys()), type({}.values()), type({}.items())
    left = [budget]

    def enc(v, depth=0):
        left[0] -= 1
        if left[0] < 0 or depth > max_depth:
            raise ValueError("result too large or too deep")
        t = _type(v)
        if v is None: return ["N"]
        if t is bool: return ["b", v]
        if _isinst(v, bool): return ["b", bool(v)]
        if _isinst(v, int): return ["i", int.__repr__(v)]
        if _isinst(v, float): return ["f", float.__repr__(v)]
        if _isinst(v, complex): return ["c", float.__repr__(v.real), float.__repr__(v.imag)]
        if _isinst(v, str): return ["s", str.__str__(v)]
        if _isinst(v, (bytes, bytearray)): return ["y", bytes(v).hex()]
        if _isinst(v, _D): return ["D", _D.__str__(v)]
        if _isinst(v, _Fr): return ["Q", int(v.numerator), int(v.denominator)]
        if _isinst(v, range): return ["r", v.start, v.stop, v.step]
        if _isinst(v, list): return ["l", [enc(x, depth + 1) for x in list.__iter__(v)]]
        if _isinst(v, tuple): return ["t", [enc(x, depth + 1) for x in tuple.__iter__(v)]]
        if _isinst(v, frozenset):
            return ["F", [enc(x, depth + 1) for x in frozenset.__iter__(v)]]
        if _isinst(v, set): return ["S", [enc(x, depth + 1) for x in set.__iter__(v)]]
        if _isinst(v, dict):
            return ["d", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in dict.items(v)]]
        if _isinst(v, _dkeys): return ["K", [enc(x, depth + 1) for x in v]]
        if _isinst(v, _ditems):
            return ["E", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v]]
        if _isinst(v, _dvals) or (hasattr(v, "__next__") and hasattr(v, "__iter__")):
            return ["I", [enc(x, depth + 1) for x in v]]
        raise TypeError("unsupported result type " + _type(v).__qualname__)

    return enc


def error_text(e):
    try:
        return (_type(e).__name__ + ": " + _str(e))[:500]
    except BaseException:  # noqa: BLE001 - a hostile exception's __str__ may raise anything
        return "exception"


def run(cfg, emit, enc, builtins):
    """Candidate code, test setup, then each test (exec tests report "ran"; assert tests their leaves)."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    stage = "code"
    try:
        exec(compile(cfg["code"], "<candidate>", "exec"), ns)  # noqa: S102 - the point
        stage = "test setup"
        if cfg["setup"]:
            exec(compile(cfg["setup"], "<setup>", "exec"), ns)  # noqa: S102
    except BaseException as e:  # noqa: BLE001 - model code may raise (or exit) anything
        emit({"kind": "crash", "stage": stage, "error": error_text(e)})
        return
    for ti, test in enumerate(cfg["tests"]):
        try:
            if test["kind"] == "exec":
                exec(compile(test["src"], "<test>", "exec"), ns)  # noqa: S102
                emit({"kind": "ran", "test": ti})
            else:
                for li, src in enumerate(test["leaves"]):
                    val = eval(compile(src, "<test>", "eval"), ns)
                    emit({"kind": "leaf", "test": ti, "leaf": li, "value": enc(val)})
        except BaseException as e:  # noqa: BLE001
            emit({"kind": "error", "test": ti, "error": error_text(e)})
            break
    emit({"kind": "done"})


def main():
    sys.set_int_max_str_digits(0)
    cfg = json.loads(read_all(0))
    _close(0)
    iso = lock_down(cfg)
    import math  # noqa: F401  (loaded after the drop, from the read-only stdlib, as model code would)

    emit = make_emitter(cfg["nonce"], cfg["result_fd"])
    enc = make_encoder()
    emit({"kind": "isolation", "value": iso})
    run(cfg, emit, enc, __builtins__)
    os._exit(0)


if __name__ == "__main__":
    main()
