"""Start a real `realm-web serve` process on a free loopback port for the server tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[server]
max_body_bytes = 65536
shutdown_grace_s = 1.0

[[tenants]]
name = "alpha"
api_keys = ["sk-alpha-000001", "sk-alpha-000002"]
max_tokens = 400

[[tenants]]
name = "beta"
api_keys = ["sk-beta-0000001"]
requests_per_minute = 3

[[tenants]]
name = "gamma"
api_keys = ["sk-gamma-000001"]
models = ["some-other-model"]

[[tenants]]
name = "delta"
api_keys = ["sk-delta-000001"]
tokens_per_minute = 120

[[tenants]]
name = "solo"
api_keys = ["sk-solo-0000001"]
max_concurrent = 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, model_dir: Path, tmp: Path, config: str | None = CONFIG, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "realm_web.cli", "serve", "--port", str(self.port), "--model", str(model_dir),
               "--max-length", "512", "--max-slots", "16", "--log-level", "info", *(extra or [])]
        if config is not None:
            cfg = tmp / "server.toml"
            cfg.write_text(config)
            cmd += ["--config", str(cfg)]
        self.log = open(tmp / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)
