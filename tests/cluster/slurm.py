"""A throw-away single-node SLURM cluster (slurmctld + slurmd as root, munge, no cgroups) for tests of the sbatch
templates. Needs Debian's slurmctld, slurmd, slurm-client and munge; `.ci/run` installs them when it can."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from tests.conftest import free_port

CONF = """ClusterName=recon3d-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
KillWait=5
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "munged", "munge")


def missing() -> List[str]:
    """The binaries this machine lacks (empty when a cluster can start), or a reason it cannot be root."""
    absent = [b for b in BINARIES if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if os.geteuid() != 0:
        absent.append("(root)")
    return absent


class LocalSlurm:
    """Start with `start()`, submit with `sbatch(...)`, stop with `stop()` (kills the daemons it started by pid)."""

    def __init__(self, state: Path, cpus: int = 2, memory_mb: int = 4000) -> None:
        self.state = state
        self.conf = state / "slurm.conf"
        self.cpus, self.memory_mb = cpus, memory_mb
        self.procs: List[subprocess.Popen] = []
        self.env: Dict[str, str] = {}

    def _munge(self) -> None:
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        for _ in range(50):
            if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("munged did not start")

    def start(self) -> "LocalSlurm":
        self._munge()
        for sub in ("state", "spool", "log"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONF.format(state=self.state, cpus=self.cpus, memory=self.memory_mb,
                                         ctld_port=free_port(), d_port=free_port()))
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for name in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del self.env[name]
        log = open(self.state / "log" / "daemons.out", "ab")
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)], env=self.env,
                                           stdout=log, stderr=log))
        time.sleep(0.5)
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], env=self.env,
                                           stdout=log, stderr=log))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True).stdout
            if out.strip() in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the node never became idle; see {self.state / 'log'}")

    def sbatch(self, *args: str, cwd: Path, env: Optional[Dict[str, str]] = None) -> int:
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"sbatch failed: {done.stderr}")
        return int(done.stdout.strip().split(";")[0])

    def state_of(self, job: int) -> str:
        out = subprocess.run(["scontrol", "show", "job", str(job)], env=self.env, capture_output=True,
                             text=True).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait(self, *jobs: int, timeout: float = 300) -> Dict[int, str]:
        """Wait until every job has ended; their final states."""
        deadline = time.time() + timeout
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
        while time.time() < deadline:
            states = {job: self.state_of(job) for job in jobs}
            if all(s in ended for s in states.values()):
                return states
            time.sleep(1)
        raise TimeoutError(f"jobs still running after {timeout} s: {states}")

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True).stdout

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
