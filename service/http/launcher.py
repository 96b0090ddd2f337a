"""Start ``alignnet serve`` as a subprocess and wait until it answers (demo, replayer, benchmarks, tests).

A started service cannot outlive its parent (Linux ``PR_SET_PDEATHSIG``) and is stopped when the block ends.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


class ServiceUnavailable(RuntimeError):
    """A service or stream that should be there is not (did not start, did not answer, no stream)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(artifact: Path, extra: list[str] = (), url: str | None = None, timeout: float = 60.0,
            port: int | None = None, env: dict[str, str] | None = None):
    """Yield the URL of a service: the given one, or `alignnet serve` started here (on ``port``, default a free
    one, with ``env`` added to this process's environment) and stopped afterwards. With
    ``ALIGNNET_BENCH_SERVE_FROM=TREE`` in the environment the service is TREE's package (a benchmark of another
    checkout's service with this checkout's load generator and timing)."""
    import os

    import httpx

    if url:
        yield url.rstrip("/")
        return
    port = port or free_port()
    cmd = [sys.executable, "-m", "alignnet", "serve", "--artifact", str(artifact), "--port", str(port), *extra]
    env = {**os.environ, **(env or {})}
    tree = env.get("ALIGNNET_BENCH_SERVE_FROM") or None  # another checkout's service (scripts/service_ab.py)
    if tree:  # `python -m` puts the working folder first on the path
        env["PYTHONPATH"] = tree
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tree,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServiceUnavailable(f"alignnet serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1.0).json().get("model_loaded"):
                    break
            except (httpx.HTTPError, ValueError):  # not up yet, or something else answers on that port
                pass
            if time.monotonic() > end:
                raise ServiceUnavailable(f"alignnet serve did not answer /health within {timeout:g} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when this process dies, however it dies (no orphaned servers)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
