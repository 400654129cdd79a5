"""MLflow tracking: where runs go, creating the store once, a tracking server, and logging helpers.

``python -m stages.tracking init --dataset NAME --out results/NAME/mlflow.json``
``python -m stages.tracking server start [--port 5000] [--pidfile results/mlflow-server.pid]``
``python -m stages.tracking server stop [--pidfile results/mlflow-server.pid]``

* The tracking URI is ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri`` from
  ``params/pipeline.yaml``, else a sqlite store ``sqlite:///<repo>/results/mlflow.db`` with artifacts
  under ``results/mlartifacts/``. On a cluster, point the variable at an ``mlflow server`` (sqlite on
  a network filesystem is unsafe).
* ``init`` creates the database and the dataset's experiment (``<prefix>-<dataset>``) once, under a
  file lock, before the training jobs fan out: concurrent first use of a fresh sqlite store races
  (alembic migrations and experiment creation). Every training rule depends on its output.
* ``server start`` runs ``mlflow server`` detached (its own session) over a backend store (default: the
  local sqlite store above) with proxied artifacts under ``results/mlartifacts/``, waits until its
  REST API answers at the advertised URI, writes the pid file (plus a ``.json`` beside it with the
  URI) and prints the URI: ``export MLFLOW_TRACKING_URI=$(python -m stages.tracking server start)``.
  ``server stop`` stops it by the pid in the pid file and waits until it is gone. The server is the
  only process that opens the sqlite file, so jobs on other nodes never touch it over NFS.
* With ``mlflow.server.enabled`` in ``params/pipeline.yaml`` the Snakefile does both itself
  (:class:`WorkflowServer`): it starts the server before the first job, exports
  ``MLFLOW_TRACKING_URI`` to every job (SLURM jobs get the submitter's environment) and stops it when
  the workflow ends.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.io.atomic import write_json
from stages.io.logs import setup_logging
from stages.paths import project_root

log = logging.getLogger("landfuse.tracking")


def resolve_tracking_uri(configured: str | None = None, root: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(root or project_root()) / 'results' / 'mlflow.db'}"


def local_artifact_root(root: Path | None = None) -> str:
    return ((root or project_root()) / "results" / "mlartifacts").as_uri()


def experiment_name(prefix: str, dataset: str) -> str:
    return f"{prefix}-{dataset}"


def init_experiment(uri: str, name: str, root: Path | None = None) -> str:
    """Create the store and experiment if needed (idempotent, serialised by a lock); returns its id."""
    import mlflow
    from filelock import FileLock

    root = root or project_root()
    lock_dir = root / "results"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / ".mlflow-init.lock"), timeout=600):
        client = mlflow.MlflowClient(tracking_uri=uri)
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        # a server chooses its own artifact store; a local sqlite store keeps them beside the db
        location = local_artifact_root(root) if uri.startswith("sqlite:") else None
        exp_id = client.create_experiment(name, artifact_location=location)
        log.info("created MLflow experiment %s (%s) in %s", name, exp_id, uri)
        return exp_id


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b": value}``; lists become strings (MLflow params are scalars)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = value
    return out


def log_data_input(source: Path, name: str, digest: str, context: str) -> None:
    """Record a dataset (by path and our sha256 digest) as an MLflow input of the active run."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # a local path matches two equivalent source types; MLflow warns and picks one
        warnings.simplefilter("ignore", UserWarning)
        src = resolve_dataset_source(str(source.resolve()))
    dataset = MetaDataset(source=src, name=name, digest=digest[:36])
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as err:
        # Two training jobs starting together both find the dataset missing and both insert it; the
        # loser hits the store's UNIQUE constraint. The row exists now: logging again links it.
        if "UNIQUE constraint failed" not in str(err):
            raise
        mlflow.log_input(dataset, context=context)


# --- tracking server ------------------------------------------------------------------------------

DEFAULT_PIDFILE = Path("results") / "mlflow-server.pid"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class Server:
    pid: int
    uri: str


def local_backend_uri(root: Path | None = None) -> str:
    """The local sqlite store (what jobs use when no server is configured)."""
    return f"sqlite:///{(root or project_root()) / 'results' / 'mlflow.db'}"


def advertised_uri(host: str, port: int) -> str:
    """The URI jobs use: this machine's host name when the server listens on every interface."""
    name = socket.gethostname() if host in _WILDCARD_HOSTS else host
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 address
    return f"http://{name}:{port}"


def _allowed_hosts(uri: str) -> str:
    """Host headers the server accepts (MLflow 3 rejects names other than localhost and private IPs)."""
    name = uri.split("//", 1)[1].rsplit(":", 1)[0]
    names = dict.fromkeys([name, socket.getfqdn(name), "localhost", "127.0.0.1"])
    return ",".join(f"{n},{n}:*" for n in names)


def _server_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is an MLflow server (pids get recycled)."""
    import psutil

    try:
        pid = int(pidfile.read_text().strip())
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        alive = proc.status() != psutil.STATUS_ZOMBIE
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    if not alive or "mlflow" not in " ".join(cmdline) or "server" not in cmdline:
        return None
    return pid


def _answers(uri: str, timeout: float = 5.0) -> bool:
    """True once the REST API answers a real request (``/health`` skips the host-header check)."""
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # our own child (the Snakefile hooks): collect it, no zombie


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_server(
    pidfile: Path = DEFAULT_PIDFILE,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str = "0.0.0.0",
    port: int = 5000,
    workers: int = 2,
    log_file: Path | None = None,
    timeout: float = 180.0,
) -> Server:
    """Start ``mlflow server`` detached, wait until it answers, write ``pidfile``; return pid and URI."""
    pidfile = Path(pidfile)
    running = _server_pid(pidfile)
    if running is not None:
        raise RuntimeError(
            f"an MLflow server is already running (pid {running}, {pidfile}); stop it with "
            f"`python -m stages.tracking server stop --pidfile {pidfile}`"
        )
    uri = advertised_uri(host, port)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise RuntimeError(f"cannot serve MLflow on {host}:{port}: {err} (choose another port)") from err
    backend = backend_store_uri or local_backend_uri()
    if backend.startswith("sqlite:///"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    artifacts = artifacts_destination or local_artifact_root()
    log_file = Path(log_file or pidfile.with_suffix(".log"))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", artifacts,
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
        "--allowed-hosts", _allowed_hosts(uri),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # no job runner (GenAI scorer jobs): it adds a process per queue, ~2 GB for nothing we use
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log_file, "ab") as out:
        # its own session: Ctrl-C in the terminal does not reach it, and stop() signals the whole group
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not _answers(uri):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                _stop_group(proc.pid, 10.0)
            tail = log_file.read_text(errors="replace").splitlines()[-20:]
            why = "exited" if proc.returncode is not None else f"did not answer within {timeout:.0f} s"
            raise RuntimeError(f"mlflow server {why} ({uri}); {log_file}:\n" + "\n".join(tail))
        time.sleep(0.5)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{proc.pid}\n")
    info = {"pid": proc.pid, "uri": uri, "backend_store_uri": backend, "artifacts_destination": artifacts}
    write_json(pidfile.with_suffix(".json"), info | {"log": str(log_file)})
    log.info("mlflow server (pid %d) serves %s at %s", proc.pid, backend, uri)
    return Server(proc.pid, uri)


def _stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM the server's process group (server and workers), SIGKILL what is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pgid)
        if not _group_alive(pgid):
            return
        time.sleep(0.2)
    log.warning("mlflow server group %d ignored SIGTERM for %.0f s: killing it", pgid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _reap(pgid)


def stop_server(pidfile: Path = DEFAULT_PIDFILE, timeout: float = 30.0) -> bool:
    """Stop the server of ``pidfile`` and wait until it is gone; False if none was running."""
    pidfile = Path(pidfile)
    pid = _server_pid(pidfile)
    if pid is not None:
        _stop_group(pid, timeout)  # started with its own session: its pid is the group id
        log.info("stopped mlflow server (pid %d)", pid)
    else:
        log.info("no mlflow server running for %s", pidfile)
    for path in (pidfile, pidfile.with_suffix(".json")):
        path.unlink(missing_ok=True)
    return pid is not None


class WorkflowServer:
    """The Snakefile's MLflow server (``mlflow.server`` in params): ``start`` in ``onstart``, ``stop`` in
    ``onsuccess``/``onerror``. Disabled, or with ``MLFLOW_TRACKING_URI`` already set (your own server),
    both do nothing and jobs log where the tracking URI points (by default the local sqlite store)."""

    def __init__(self, settings: Mapping[str, Any], pidfile: Path = DEFAULT_PIDFILE) -> None:
        self.settings = dict(settings)
        self.pidfile = Path(pidfile)
        self.server: Server | None = None

    def start(self) -> Server | None:
        if not self.settings.get("enabled"):
            return None
        setup_logging()
        preset = os.environ.get("MLFLOW_TRACKING_URI")
        if preset:
            log.info("MLFLOW_TRACKING_URI=%s is set: not starting a server", preset)
            return None
        self.server = start_server(
            self.pidfile,
            host=self.settings.get("host", "0.0.0.0"),
            port=int(self.settings.get("port", 5000)),
            workers=int(self.settings.get("workers", 2)),
        )
        os.environ["MLFLOW_TRACKING_URI"] = self.server.uri  # inherited by every job from here on
        return self.server

    def stop(self) -> None:
        if self.server is None:
            return
        stop_server(self.pidfile)
        if os.environ.get("MLFLOW_TRACKING_URI") == self.server.uri:
            del os.environ["MLFLOW_TRACKING_URI"]
        self.server = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create the MLflow store and a dataset's experiment.")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("--dataset", required=True)
    init.add_argument("--prefix", default="landfuse")
    init.add_argument("--tracking-uri", default=None, help="overrides params; MLFLOW_TRACKING_URI wins")
    init.add_argument("--out", required=True, type=Path, help="flag file the training rules depend on")
    server = sub.add_parser("server", help="start or stop an MLflow tracking server (cluster runs)")
    action = server.add_subparsers(dest="action", required=True)
    start = action.add_parser("start", help="start it detached; prints the URI for MLFLOW_TRACKING_URI")
    start.add_argument(
        "--backend-store-uri", default=None, help="default: sqlite:///<repo>/results/mlflow.db"
    )
    start.add_argument("--artifacts-destination", default=None, help="default: <repo>/results/mlartifacts")
    start.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    start.add_argument("--port", type=int, default=5000)
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--log", type=Path, default=None, help="server output; default: <pidfile>.log")
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait until it answers")
    stop = action.add_parser("stop", help="stop the server of a pid file and wait until it is gone")
    for p in (start, stop):
        p.add_argument("--pidfile", type=Path, default=DEFAULT_PIDFILE)
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "server":
        if args.action == "start":
            started = start_server(
                args.pidfile,
                backend_store_uri=args.backend_store_uri,
                artifacts_destination=args.artifacts_destination,
                host=args.host,
                port=args.port,
                workers=args.workers,
                log_file=args.log,
                timeout=args.timeout,
            )
            print(started.uri)
        else:
            stop_server(args.pidfile)
        return
    uri = resolve_tracking_uri(args.tracking_uri)
    name = experiment_name(args.prefix, args.dataset)
    exp_id = init_experiment(uri, name)
    # no URI or id in the flag file: they depend on the machine, the flag only orders the jobs
    write_json(args.out, {"experiment": name})
    log.info("experiment %s ready (id %s)", name, exp_id)


if __name__ == "__main__":
    main()
