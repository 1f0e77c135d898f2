"""A throw-away two-node SLURM cluster on this one machine, for tests of the sbatch templates.

slurmctld on 127.0.0.1 plus one slurmd per node (node1, node2), each with a loopback address (127.0.0.2, 127.0.0.3)
and a port of its own; each slurmd runs in its own UTS + mount namespace, so the jobs it starts see its hostname and
an /etc/hosts of the cluster's that maps node1 and node2 to their addresses (no address outside 127.0.0.0/8 is used:
an address other than 127.0.0.1 also keeps Ray from swapping it for the machine's routed one).
TaskPlugin=task/affinity binds tasks to CPUs without cgroups: every node declares all of the machine's CPUs and
reserves the other nodes' share with CpuSpecList, so node1's tasks run on the first half of the CPUs and node2's on
the second (on a 2-CPU machine: CPU 0 and CPU 1). munged and the daemons are started here and stopped by their pids;
the daemons also get SIGTERM when the process that started them dies (a killed or timed-out pytest runs no teardown,
and its daemons would keep their ports). Needs Debian's slurmctld, slurmd, slurm-client and munge (`.ci/run` installs
them when it can), root and util-linux's unshare/setpriv."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from tests.conftest import free_port


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG; kept across exec)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)

CONF = """ClusterName=recon3d-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd-%n.pid
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool-%n
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
KillWait=30
MinJobAge=600
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
NODE = ("NodeName={name} NodeAddr={address} NodeHostname={name} Port={port} CPUs={cpus} {spec}"
        "RealMemory={memory} State=UNKNOWN")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "munge", "unshare", "setpriv")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")


def missing() -> List[str]:
    """What this machine lacks for a cluster (empty when one can start)."""
    absent = [b for b in BINARIES if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if os.geteuid() != 0:
        absent.append("(root)")
    return absent


def node_cpus(nodes: int, cpus: int) -> List[List[int]]:
    """The machine's CPU ids each node's jobs may use: contiguous, disjoint shares (all nodes share CPU 0 on a
    machine with fewer CPUs than nodes)."""
    if cpus < nodes:
        return [list(range(cpus)) for _ in range(nodes)]
    share = cpus // nodes
    return [list(range(i * share, (i + 1) * share)) for i in range(nodes)]


class LocalSlurm:
    """Start with `start()`, submit with `sbatch(...)`, stop with `stop()` (cancels the jobs, then kills the daemons
    it started by pid). Node names are node1..nodeN; `hostnames` maps each to the CPUs its jobs are bound to."""

    def __init__(self, state: Path, nodes: int = 2, memory_mb: int = 6000) -> None:
        self.state = state
        self.conf = state / "slurm.conf"
        self.names = [f"node{i + 1}" for i in range(nodes)]
        self.addresses = [f"127.0.0.{i + 2}" for i in range(nodes)]
        self.cpus = node_cpus(nodes, os.cpu_count() or 1)
        self.memory_mb = memory_mb
        self.procs: List[subprocess.Popen] = []
        self.env: Dict[str, str] = {}

    def _munge(self) -> None:
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return  # this machine runs one already: use it, do not stop it
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        log = open(self.state / "log" / "munged.out", "ab")
        self.procs.append(subprocess.Popen(["setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
                                            "/usr/sbin/munged", "--foreground"], stdout=log, stderr=log))
        for _ in range(100):
            if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("munged did not start")

    def _write_conf(self) -> None:
        total = os.cpu_count() or 1
        lines = []
        for name, cpus, address in zip(self.names, self.cpus, self.addresses):
            reserved = sorted(set(range(total)) - set(cpus))
            spec = f"CpuSpecList={','.join(map(str, reserved))} " if reserved else ""
            lines.append(NODE.format(name=name, address=address, port=free_port(),
                                     cpus=total if reserved else len(cpus), spec=spec, memory=self.memory_mb))
        (self.state / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for a, n in
                                                                          zip(self.addresses, self.names)))
        self.conf.write_text(CONF.format(state=self.state, ctld_port=free_port(), nodes="\n".join(lines)))

    def start(self) -> "LocalSlurm":
        for sub in ("state", "log"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self._munge()
        self._write_conf()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SBATCH_"))}
        self.env["SLURM_CONF"] = str(self.conf)
        log = open(self.state / "log" / "daemons.out", "ab")
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)], env=self.env,
                                           stdout=log, stderr=log, preexec_fn=_die_with_parent))
        time.sleep(0.5)
        for name in self.names:  # exec: the Popen pid is slurmd's own
            inner = (f"mount --bind {self.state / 'hosts'} /etc/hosts && hostname {name} && "
                     f"exec slurmd -D -N {name} -f {self.conf}")
            self.procs.append(subprocess.Popen(["unshare", "--uts", "--mount", "bash", "-c", inner], env=self.env,
                                               stdout=log, stderr=log, preexec_fn=_die_with_parent))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
            states = out.stdout.split()
            if len(states) == len(self.names) and all(s in ("idle", "mix", "alloc") for s in states):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the nodes never became idle; see {self.state / 'log'}")

    def sbatch(self, *args: str, cwd: Path, env: Optional[Dict[str, str]] = None) -> int:
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"sbatch failed: {done.stderr}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job: int) -> Dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, NodeList, ...)."""
        out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=self.env, capture_output=True,
                             text=True).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def state_of(self, job: int) -> str:
        return self.job(job).get("JobState", "UNKNOWN")

    def wait(self, *jobs: int, timeout: float = 300) -> Dict[int, str]:
        """Wait until every job has ended; their final states."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = {job: self.state_of(job) for job in jobs}
            if all(s in ENDED for s in states.values()):
                return states
            time.sleep(1)
        raise TimeoutError(f"jobs still running after {timeout} s: {states}")

    def release_requeued(self, job: int, restarts: int = 1, timeout: float = 120) -> None:
        """SLURM holds a requeued job back for a while before it may start again; let it start now."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job)
            if int(info.get("Restarts", 0)) >= restarts and info.get("JobState") == "PENDING":
                self.run("scontrol", "update", f"jobid={job}", "StartTime=now")
                return
            time.sleep(0.5)
        raise TimeoutError(f"job {job} was not requeued within {timeout} s: {self.job(job)}")

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True).stdout

    def idle(self, timeout: float = 120) -> None:
        """Wait until no job is queued or running."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.run("squeue", "-h").strip():
            time.sleep(1)

    def stop(self) -> None:
        if self.env:
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
            time.sleep(1)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
