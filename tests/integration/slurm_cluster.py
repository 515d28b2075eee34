"""A real two-node SLURM cluster on this machine, for testing launch/slurm.

It runs its own munged (private key and socket), one slurmctld and two slurmd daemons (`-N n1`,
`-N n2`) that both live on 127.0.0.1 on free ports, with every state, spool, log and PID file in one
temporary folder. Daemons are stopped through their PID files. Clients reach the cluster through
`SLURM_CONF`, so several clusters (or a system one) can coexist.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NODES = ("n1", "n2")
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
HOSTS_MARK = "# capsgan-dist test SLURM nodes"
_OUTER_SLURM = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


def missing_binaries() -> list[str]:
    """SLURM / munge programs this machine lacks."""
    found = {b: shutil.which(b) or (Path("/usr/sbin") / b).is_file() for b in BINARIES}
    return [b for b, ok in found.items() if not ok]


def _free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that are free right now on 127.0.0.1."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _resolves(name: str) -> bool:
    try:
        socket.gethostbyname(name)
        return True
    except OSError:
        return False


def _ensure_hosts(names: tuple[str, ...]) -> None:
    """Make the fake node names resolve to 127.0.0.1 (MASTER_ADDR comes from `scontrol show hostnames`).

    The lines stay after the tests: removing them could break a cluster another test run is using.
    """
    missing = [n for n in names if not _resolves(n)]
    if not missing:
        return
    try:
        with open("/etc/hosts", "a") as f:
            f.write(f"127.0.0.1 {' '.join(missing)}  {HOSTS_MARK}\n")
    except OSError as e:
        pytest.skip(f"node names {missing} do not resolve and /etc/hosts is not writable ({e.strerror}); "
                    "add '127.0.0.1 n1 n2' to /etc/hosts")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


@dataclass
class Job:
    """What `scontrol show job` says about a job."""

    id: int
    state: str
    exit_code: int
    signal: int
    fields: dict[str, str] = field(repr=False)


@dataclass
class SlurmCluster:
    """A running local cluster; `env` is the environment clients and jobs need."""

    root: Path
    env: dict[str, str]
    pid_files: list[Path]

    def run(self, *cmd: str, timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=kw.pop("env", self.env), **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}{proc.stdout}\n{self.logs()}")
        return proc

    def job_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (e.g. the test's CLI environment) pointed at this cluster, without outer SLURM variables."""
        env = {k: v for k, v in base.items() if not k.startswith(_OUTER_SLURM)}
        env["SLURM_CONF"] = self.env["SLURM_CONF"]
        return env

    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Submit a batch job; returns its id."""
        out = self.run("sbatch", "--parsable", *args, env={**self.env, **(env or {})}, cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> Job:
        """The job's current record (kept by slurmctld for MinJobAge seconds after it ends)."""
        text = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))
        code, sig = (int(x) for x in fields.get("ExitCode", "0:0").split(":"))
        return Job(job_id, fields.get("JobState", "?"), code, sig, fields)

    def wait_until(self, what: str, predicate, timeout: float, poll: float = 0.25):
        """Poll `predicate()` until it returns something truthy; fail with the cluster logs after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")
            time.sleep(poll)

    def wait_job(self, job_id: int, timeout: float) -> Job:
        """Poll until the job reaches a final state (not requeued); returns its record."""
        def done() -> Job | None:
            j = self.job(job_id)
            return j if j.state in TERMINAL else None
        return self.wait_until(f"job {job_id} to end", done, timeout)

    def logs(self, tail: int = 2000) -> str:
        """The end of every daemon log, for failure messages."""
        parts = []
        for p in sorted(self.root.glob("log/*.log")):
            parts.append(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job still queued or running (a failed test must not leave training processes)."""
        ids = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if not ids:
            return
        self.run("scancel", *ids, check=False)
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i", check=False).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.25)

    def stop(self) -> None:
        """Cancel jobs, stop the daemons by their PID files (SIGTERM, SIGKILL after 20 s), remove the folder."""
        try:
            self.cancel_all()
        except (OSError, subprocess.SubprocessError):
            pass  # the controller may already be gone; stop the daemons anyway
        pids = [p for p in (_pid(f) for f in self.pid_files) if p]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20  # slurmd takes up to ~10 s to exit after SIGTERM
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _slurm_conf(root: Path, host: str, ctld_port: int, node_ports: list[int], munge_socket: Path) -> str:
    nodes = "\n".join(
        f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs=2 RealMemory=1000 State=UNKNOWN"
        for n, p in zip(NODES, node_ports))
    return f"""\
ClusterName=capsgantest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=30
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(timeout: float = 60) -> SlurmCluster:
    """Start munged, slurmctld and two slurmd; return once both nodes are idle."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM test cluster runs its daemons as root (SlurmUser=root)")
    _ensure_hosts(NODES)
    # munged demands that every folder above its socket is world-executable (pytest's tmp is 0700).
    root = Path(tempfile.mkdtemp(prefix="capsgan-slurm-"))
    root.chmod(0o755)
    for d in ("state", "run", "log", "spool", "munge"):
        (root / d).mkdir()
    key, sock = root / "munge" / "munge.key", root / "munge" / "munge.sock"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    munge_pid = root / "run" / "munged.pid"
    subprocess.run(["munged", f"--socket={sock}", f"--key-file={key}", f"--pid-file={munge_pid}",
                    f"--log-file={root / 'log' / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}"],
                   check=True, timeout=20, capture_output=True)

    host = socket.gethostname()
    ctld_port, *node_ports = _free_ports(1 + len(NODES))
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, ctld_port, node_ports, sock))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OUTER_SLURM)}  # no outer allocation leaks in
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root, env, [root / "run" / f"slurmd-{n}.pid" for n in NODES]
                           + [root / "run" / "slurmctld.pid", munge_pid])
    try:
        # -i: ignore saved state; both daemons fork into the background and write their PID files.
        subprocess.run(["slurmctld", "-i", "-f", str(conf)], check=True, timeout=30, env=env, capture_output=True)
        for n in NODES:
            (root / "spool" / n).mkdir()
            subprocess.run(["slurmd", "-N", n, "-f", str(conf)], check=True, timeout=30, env=env,
                           capture_output=True)

        def idle() -> bool:
            out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n) == "idle" for n in NODES)
        cluster.wait_until("both nodes to be idle", idle, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
