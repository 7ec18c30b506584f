"""`reflectevo serve` under hostile requests: time, server RSS and whether the server still answers.

    .venv/bin/python bench/bench_serve.py [--model tiny-random] [--rss-cap-gb 4] [--out bench/results/serve.json]

Starts `reflectevo serve` (its default limits) in a subprocess and sends, one after another: a normal
completion, a 200 KB prompt (`"a " * 100_000`, 100,001 tokens against tiny-random's `max_length` of 512),
a 20 MB prompt (one JSON body of 20 MB), a 7.9 MB prompt (just under the default body limit of 8 MiB)
and a normal completion again. For each: HTTP status, wall time,
and the server's RSS before and its peak during the request (/proc/<pid>/status, sampled every 20 ms).
A watchdog kills the server once its RSS passes `--rss-cap-gb` (so a server without limits cannot take
the machine's memory); a case it ends is recorded as `killed at the RSS cap`.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Watch(threading.Thread):
    """Samples the server's RSS; kills it past the cap."""

    def __init__(self, pid: int, cap_mib: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.cap, self.peak, self.killed, self.stop = pid, cap_mib, 0.0, False, False

    def run(self) -> None:
        while not self.stop:
            rss = _rss_mib(self.pid)
            self.peak = max(self.peak, rss)
            if rss > self.cap and not self.killed:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.02)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _post(url: str, data: bytes, timeout: float) -> tuple[int | str, str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()[:200]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:200]
    except Exception as e:  # noqa: BLE001 - a dead server, a reset connection: recorded as the outcome
        return type(e).__name__, str(e)[:200]


def main(model: str = "tiny-random", rss_cap_gb: float = 4.0, timeout: float = 600.0,
         out: Path = ROOT / "bench/results/serve.json") -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "reflectevo.cli", "serve", "--model", model, "--served-model-name", model, "--port", "0",
                             "--params", str(ROOT / "params.yaml")], stderr=subprocess.PIPE, text=True, env=env)
    line = ""
    while "serving" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise SystemExit("the server did not start")
    url = line.split(" at ", 1)[1].split()[0] + "/completions"
    normal = json.dumps({"model": model, "prompt": "Hello there", "max_tokens": 8, "temperature": 0}).encode()
    cases = [("normal", normal),
             ("200 KB prompt", json.dumps({"model": model, "prompt": "a " * 100_000, "max_tokens": 16}).encode()),
             ("20 MB prompt", json.dumps({"model": model, "prompt": "a " * 10_000_000, "max_tokens": 16}).encode()),
             ("7.9 MB prompt", json.dumps({"model": model, "prompt": "a " * 3_950_000, "max_tokens": 16}).encode()),
             ("normal after", normal)]
    watch = Watch(proc.pid, rss_cap_gb * 1024)
    watch.start()
    results = []
    try:
        for name, body in cases:
            if proc.poll() is not None:
                results.append({"case": name, "outcome": "server gone"})
                continue
            before = _rss_mib(proc.pid)
            watch.peak = before
            t0 = time.perf_counter()
            status, text = _post(url, body, timeout)
            rec = {"case": name, "body_bytes": len(body), "status": status, "seconds": round(time.perf_counter() - t0, 3),
                   "rss_before_mib": round(before, 1), "rss_peak_mib": round(watch.peak, 1),
                   "answer": text[:160]}
            if watch.killed:
                rec["outcome"] = f"killed at the RSS cap ({rss_cap_gb} GB)"
            print(rec, flush=True)
            results.append(rec)
    finally:
        watch.stop = True
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        proc.stderr.close()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    doc = {"model": model, "commit": commit, "date": time.strftime("%Y-%m-%d"),
           "machine": f"{_cpu()}, {os.cpu_count()} cores", "rss_cap_gb": rss_cap_gb, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
