"""SLURM end to end: the small-twin pipeline through the SLURM profile on a real one-node SLURM cluster.

The module's cluster fixture installs Debian's slurmctld, slurmd, slurm-client and munge if they are
missing, writes /etc/slurm/slurm.conf for one node and starts the daemons (tests/slurm/up.sh); it stops
them by PID and restores the previous slurm.conf afterwards (tests/slurm/down.sh). It needs root.

The pipeline runs in a project copy through the user profile, `--profile workflow/profiles/slurm`,
overlaid with the test cluster's `--profile tests/slurm/profile` (partition `debug`, no account, no
GPU, the rules' own thread counts, two jobs at once), with the MLflow server switch on. Two
experiments, with their training jobs prioritised, so that both training jobs run at the same time
and log to the one server. The GAN gets two steps: no compared output depends on it.

Checked: every non-local rule ran as a SLURM job (the Snakemake log's job ids, and SLURM's own record
of each job); the deterministic stages (twin, download, co-registration, patch store) are
byte-identical to the local run of tests/conftest.py; test accuracies are within OA_TOLERANCE of it;
both training jobs ran at the same time (SLURM's start/end times, and each run's first and last
metric in MLflow), logged through the one server, and are FINISHED in its store with every epoch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import pytest
import yaml

from stages.io.hashing import sha256_file
from tests.conftest import ROOT, SMALL, copy_project, shrink_to_test_size, tool_env

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

SLURM_DIR = ROOT / "tests" / "slurm"
STATE = Path(os.environ.get("LANDFUSE_SLURM_STATE", "/var/lib/landfuse-slurm-test"))
# A subset of the local run's experiments (E2E_EXPERIMENTS), so their metrics can be compared.
EXPERIMENTS = [{"model": "two_branch_cnn"}, {"model": "two_branch_cnn", "modalities": ["auxiliary"]}]
RUNS = ["two_branch_cnn", "two_branch_cnn-lidar"]
LOCAL_RULES = {"mlflow_init", "index_runs", "report"}
CLUSTER_JOBS = Counter(
    {"twin": 1, "download": 1, "coregister": 1, "patches": 1, "augment": 1, "train": 2, "evaluate": 2}
)
# Same code, data, seeds and thread counts as the local run: the scores come out identical on one
# machine; the tolerance only leaves room for a different BLAS code path on another node.
OA_TOLERANCE = 0.02
LIMIT_S = 900  # the whole SLURM run (about 4 minutes on an idle 2-core machine)
STUCK_S = 240  # one job pending, or running, this long means the run is stuck (see _watch)


def _slurm_env() -> dict[str, str]:
    """tool_env without SLURM_* variables (as if submitting from a login shell, not from inside a job)."""
    return {k: v for k, v in tool_env().items() if not k.startswith("SLURM_")}


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A one-node SLURM cluster on this machine for the module (tests/slurm/up.sh and down.sh)."""
    if os.geteuid() != 0:
        pytest.fail(
            "the SLURM test needs root: it installs and starts slurmctld, slurmd and munged "
            "(tests/slurm/up.sh). Run pytest as root, or deselect it with -m 'not slurm'.",
            pytrace=False,
        )
    keep = tmp_path_factory.mktemp("slurm-cluster")
    try:
        up = subprocess.run(
            ["bash", str(SLURM_DIR / "up.sh")], capture_output=True, text=True, timeout=900, env=_slurm_env()
        )
        (keep / "up.log").write_text(up.stdout + up.stderr)
        if up.returncode != 0:
            pytest.fail(
                f"tests/slurm/up.sh failed ({up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
            )
        yield
    finally:
        if (STATE / "log").is_dir():  # the daemons' logs outlive the cluster (pytest's tmp folder)
            shutil.copytree(STATE / "log", keep / "log", dirs_exist_ok=True)
        down = subprocess.run(
            ["bash", str(SLURM_DIR / "down.sh")],
            capture_output=True,
            text=True,
            timeout=180,
            env=_slurm_env(),
        )
        (keep / "down.log").write_text(down.stdout + down.stderr)
        assert down.returncode == 0, f"tests/slurm/down.sh failed:\n{down.stdout}\n{down.stderr}"


@dataclass(frozen=True)
class SlurmRun:
    root: Path
    log: str
    rules: dict[int, tuple[str, bool]]  # Snakemake job id -> (rule, ran as a local rule)
    submitted: dict[int, str]  # Snakemake job id -> SLURM job id
    slurm_jobs: dict[str, dict[str, str]]  # SLURM job id -> squeue's record (state, comment, start/end)
    uri: str
    seconds: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _squeue(env: dict[str, str]) -> list[dict[str, str]]:
    """SLURM's record of every job it still holds (MinJobAge keeps finished ones for 10 minutes)."""
    fields = ["id", "name", "state", "reason", "cpus", "memory", "elapsed", "comment"]
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r|%C|%m|%M|%k"],
        capture_output=True, text=True, env=env, timeout=30,
    ).stdout  # fmt: skip
    return [dict(zip(fields, line.split("|"), strict=False)) for line in out.splitlines()]


def _watch(proc: subprocess.Popen, env: dict[str, str]) -> str | None:
    """Wait for the workflow; return why it is stuck, or None once it has ended by itself.

    Stuck: past LIMIT_S, a job PENDING for STUCK_S (the cluster is empty but for our jobs, so a pending
    job will not start), or one job RUNNING for STUCK_S (every job takes well under a minute here).
    """
    deadline = time.monotonic() + LIMIT_S
    first_seen: dict[tuple[str, str], float] = {}
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            return f"the SLURM workflow did not finish within {LIMIT_S} s"
        for job in _squeue(env):
            if job["state"] in ("PENDING", "RUNNING"):
                since = first_seen.setdefault((job["id"], job["state"]), now)
                if now - since > STUCK_S:
                    return (
                        f"SLURM job {job['id']} ({job['comment']}) {job['state']} for over {STUCK_S} s "
                        f"(reason: {job['reason']})"
                    )
        time.sleep(5)
    return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"<{err}>"


def _diagnose(root: Path, env: dict[str, str]) -> str:
    """What SLURM, the node and the jobs' own logs say: the evidence a hung or failed run leaves."""

    def run(*cmd: str) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
            return (done.stdout + done.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"<{err}>"

    parts = [
        "--- squeue -t all ---\n" + "\n".join("|".join(job.values()) for job in _squeue(env)),
        "--- scontrol show node ---\n" + run("scontrol", "show", "node"),
        "--- nproc / free -m / df -h ---\n"
        + "\n".join([run("nproc"), run("free", "-m"), run("df", "-h", str(root))]),
    ]

    def newest(folder: Path) -> list[Path]:  # the jobs that ran last, or are running
        return sorted(folder.rglob("*.log"), key=lambda p: p.stat().st_mtime)[-4:]

    for path in [*newest(root / ".snakemake" / "slurm_logs"), *newest(root / "results" / SMALL / "logs")]:
        parts.append(f"--- {path.relative_to(root)} (tail) ---\n{_tail(path)}")
    for daemon in ("slurmctld", "slurmd"):
        parts.append(f"--- {daemon}.log (tail) ---\n{_tail(STATE / 'log' / f'{daemon}.log')}")
    return "\n".join(parts)


def _parse_log(log: str) -> tuple[dict[int, tuple[str, bool]], dict[int, str]]:
    rules = {}
    for m in re.finditer(r"^(local)?rule (\w+):\n((?:    .*\n)+)", log, re.M):
        jobid = re.search(r"^    jobid: (\d+)$", m.group(3), re.M)
        if jobid:
            rules[int(jobid.group(1))] = (m.group(2), m.group(1) == "local")
    submitted = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    }
    return rules, submitted


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> SlurmRun:
    root = copy_project(tmp_path_factory.mktemp("slurm-project"))
    shrink_to_test_size(root, EXPERIMENTS, gan_steps=2)
    pipeline_path = root / "params" / "pipeline.yaml"
    pipeline = yaml.safe_load(pipeline_path.read_text())
    port = _free_port()
    pipeline["mlflow"]["server"] = {"enabled": True, "host": "0.0.0.0", "port": port, "workers": 2}
    pipeline_path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    trains = [f"results/{SMALL}/runs/{run}/seed0/model.pt" for run in RUNS]
    cmd = [
        "snakemake",
        "--profile", "workflow/profiles/slurm",
        "--profile", "tests/slurm/profile",
        "--prioritize", *trains,  # both training jobs first: they overlap under `jobs: 2`
        "--", f"results/{SMALL}/all",
    ]  # fmt: skip
    env = _slurm_env()
    start = time.monotonic()
    out = root / "snakemake-slurm.log"
    try:
        with out.open("w") as sink:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
            stuck = _watch(proc, env)
            if stuck:
                diagnosis = _diagnose(root, env)  # before the kill: the stuck job's state as SLURM sees it
                proc.kill()
            proc.wait(timeout=60)
    finally:
        # a killed workflow cannot stop its MLflow server; a no-op when the onsuccess hook did
        subprocess.run(
            [sys.executable, "-m", "stages.tracking", "server", "stop"],
            cwd=root, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
    seconds = time.monotonic() - start
    log = out.read_text()
    if stuck or proc.returncode != 0:
        # the diagnosis first: CI shows the head of a long assertion message
        why = stuck or f"snakemake on SLURM failed ({proc.returncode})"
        pytest.fail(
            f"{why} after {seconds:.0f} s\n{diagnosis if stuck else _diagnose(root, env)}\n"
            f"--- snakemake log (tail) ---\n{log[-6000:]}",
            pytrace=False,
        )
    rules, submitted = _parse_log(log)
    squeue = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%k|%S|%e"],
        capture_output=True, text=True, check=True, env=env, timeout=30,
    )  # fmt: skip
    slurm_jobs = {}
    for line in squeue.stdout.splitlines():
        job, state, comment, started, ended = line.split("|")
        slurm_jobs[job] = {"state": state, "comment": comment, "start": started, "end": ended}
    return SlurmRun(root, log, rules, submitted, slurm_jobs, f"http://{socket.gethostname()}:{port}", seconds)


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _deterministic(manifest: dict[str, dict]) -> dict[str, dict]:
    return {
        k: v for k, v in manifest.items() if k.startswith(("coreg/", "patches.zarr/")) or k == "patches.json"
    }


def _manifest(root: Path) -> dict[str, dict]:
    return json.loads((root / "results" / SMALL / "all" / "manifest.json").read_text())["files"]


def test_every_cluster_rule_ran_as_a_slurm_job(slurm_run: SlurmRun) -> None:
    rules, submitted = slurm_run.rules, slurm_run.submitted
    assert {rule for rule, _ in rules.values()} == set(CLUSTER_JOBS) | LOCAL_RULES, rules
    for jobid, (rule, local) in rules.items():
        if rule in LOCAL_RULES:
            assert local and jobid not in submitted, f"{rule} (job {jobid}) should run on the submitting host"
        else:
            assert not local and jobid in submitted, f"{rule} (job {jobid}) did not run as a SLURM job"
    assert Counter(rules[j][0] for j in submitted) == CLUSTER_JOBS
    # SLURM's own record: each submitted job finished, and the plugin's comment names its rule
    for jobid, slurm_id in submitted.items():
        record = slurm_run.slurm_jobs.get(slurm_id)
        assert record is not None, f"SLURM has no job {slurm_id}"
        assert record["state"] == "COMPLETED", (slurm_id, record)
        assert record["comment"].startswith(f"rule_{rules[jobid][0]}"), (slurm_id, record)
        logs = list(
            (slurm_run.root / ".snakemake" / "slurm_logs").glob(f"rule_{rules[jobid][0]}/*/{slurm_id}.log")
        )
        assert logs, f"no SLURM log for job {slurm_id}"


def test_deterministic_stages_match_a_local_run(slurm_run: SlurmRun, local_pipeline: Path) -> None:
    for folder in (f"data/twins/{SMALL}", f"data/raw/{SMALL}"):  # the twin and the download receipt
        assert _tree_hashes(slurm_run.root / folder) == _tree_hashes(local_pipeline / folder), folder
    on_slurm, local = _deterministic(_manifest(slurm_run.root)), _deterministic(_manifest(local_pipeline))
    assert any(k.startswith("patches.zarr/") for k in local) and "coreg/hsi.tif" in local
    assert on_slurm == local


def test_training_metrics_match_a_local_run(slurm_run: SlurmRun, local_pipeline: Path) -> None:
    on_slurm = json.loads((slurm_run.root / "results" / SMALL / "metrics.json").read_text())
    local = json.loads((local_pipeline / "results" / SMALL / "metrics.json").read_text())
    assert sorted(on_slurm) == sorted(RUNS)
    for run in RUNS:
        for key in ("oa_mean", "aa_mean", "kappa_mean"):
            assert on_slurm[run][key] == pytest.approx(local[run][key], abs=OA_TOLERANCE), (run, key)


def test_concurrent_training_jobs_logged_to_one_mlflow_server(slurm_run: SlurmRun) -> None:
    results = slurm_run.root / "results"
    # the workflow stopped its server (onsuccess) and every job logged through it
    assert not (results / "mlflow-server.pid").exists()
    assert (results / "mlflow-server.log").is_file()
    for run in RUNS:
        pointer = json.loads((results / SMALL / "runs" / run / "seed0" / "mlflow_run.json").read_text())
        assert pointer["tracking_uri"] == slurm_run.uri, pointer
    # the server's store, read directly now that it is down
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"landfuse-{SMALL}")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["experiment"] for r in runs) == sorted(RUNS)  # one run per job, none lost
    metrics = json.loads((results / SMALL / "metrics.json").read_text())
    for r in runs:
        name = r.data.tags["experiment"]
        assert r.info.status == "FINISHED", (name, r.info.status)
        history = json.loads((results / SMALL / "runs" / name / "seed0" / "train.json").read_text())[
            "history"
        ]
        assert len(client.get_metric_history(r.info.run_id, "val_oa")) == len(history)  # every epoch logged
        # evaluate resumed the run through the server
        assert r.data.metrics["test_oa"] == pytest.approx(metrics[name]["oa_mean"])
        artifacts = results / "mlartifacts" / experiment.experiment_id / r.info.run_id / "artifacts"
        assert (artifacts / "checkpoint" / "model.pt").is_file() and (artifacts / "evaluation").is_dir()
    # The two training jobs overlapped. MLflow: from a run's start to its last epoch's val_oa (the run's
    # end_time is later: evaluate resumes and ends it), in ms. SLURM: the train jobs' start and end.
    spans = {}
    for r in runs:
        last_epoch = max(m.timestamp for m in client.get_metric_history(r.info.run_id, "val_oa"))
        spans[r.data.tags["experiment"]] = (r.info.start_time, last_epoch)
    assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values()), spans
    jobs = [
        slurm_run.slurm_jobs[slurm_run.submitted[j]]
        for j, (rule, _) in slurm_run.rules.items()
        if rule == "train"
    ]
    started = [datetime.fromisoformat(job["start"]) for job in jobs]
    ended = [datetime.fromisoformat(job["end"]) for job in jobs]
    assert max(started) < min(ended), jobs
