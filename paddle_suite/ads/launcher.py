"""A parameter-server launcher that reports failure: ``fleetrun`` exits 0 when workers crash and
killing it leaves its children running (docs/platform.md), so this one starts the servers and workers
itself and watches them.

    python -m paddle_suite.ads.launcher --server_num 2 --worker_num 2 tools/train.py -c configs/ctr_dnn_ps.yaml
    python -m paddle_suite.ads.launcher -c configs/ctr_dnn_ps.yaml      # counts from PS.*_num

Each role gets the environment Paddle 2.6.2's launcher sets for PS jobs
(``paddle/distributed/launch/controllers/ps.py``: ``PADDLE_PSERVERS_IP_PORT_LIST``,
``PADDLE_TRAINER_ENDPOINTS``, ``PADDLE_PORT``, ``PADDLE_ROLE``/``TRAINING_ROLE``,
``PADDLE_TRAINER_ID``, ``PADDLE_TRAINERS_NUM``, ``POD_IP``, ``PADDLE_WITH_GLOO``), except that the
gloo rendezvous is a directory (``PADDLE_GLOO_RENDEZVOUS=2``, ``PADDLE_GLOO_FS_PATH``) instead of an
HTTP store served by a child of server 0 (one process fewer that could be orphaned).

All children run in one new process group. The launcher polls them: a worker exiting non-zero, or
a server exiting non-zero while workers still run, fails the job: the whole group is killed
(SIGTERM, then SIGKILL), the failing role's log tail is printed to stderr and the exit status is
non-zero (the worker's own status, or 1). A server exiting 0 is not a failure (the hierarchical
store's shard servers stop once every worker said it is done). When every worker has exited 0 the
servers are stopped and the launcher exits 0. SIGINT / SIGTERM to the launcher kill the group too
(exit 130 / 143). ``PADDLE_SUITE_STORE_AUTHKEY`` (a random 256-bit key per job, passed in the
children's environment only, which other users cannot read) authenticates the hierarchical store's
shard servers and workers; the launcher binds every role to loopback, so it runs one-host jobs.
Logs: ``<log_dir>/serverlog.N`` and ``workerlog.N`` (as fleetrun names them).
"""
import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

TAIL_LINES = 40


def free_ports(count):
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def role_environments(server_num, worker_num, gloo_dir, host="127.0.0.1"):
    """``[(name, env_dict)]`` for every server then every worker."""
    ports = free_ports(server_num + worker_num)
    servers = [f"{host}:{p}" for p in ports[:server_num]]
    workers = [f"{host}:{p}" for p in ports[server_num:]]
    common = {
        "PADDLE_PSERVERS_IP_PORT_LIST": ",".join(servers),
        "PADDLE_TRAINER_ENDPOINTS": ",".join(workers),
        "PADDLE_TRAINERS_NUM": str(worker_num),
        "POD_IP": host,
        "PADDLE_WITH_GLOO": "1",
        "PADDLE_GLOO_RENDEZVOUS": "2",
        "PADDLE_GLOO_FS_PATH": gloo_dir,
        "PADDLE_SUITE_STORE_AUTHKEY": secrets.token_hex(32),  # hierarchical shard servers (store_service)
    }
    roles = []
    for i, endpoint in enumerate(servers):
        env = dict(common, PADDLE_PORT=endpoint.split(":")[1], PADDLE_ROLE="PSERVER", TRAINING_ROLE="PSERVER")
        roles.append((f"serverlog.{i}", env))
    for i, endpoint in enumerate(workers):
        env = dict(common, PADDLE_PORT=endpoint.split(":")[1], PADDLE_ROLE="TRAINER", TRAINING_ROLE="TRAINER",
                   PADDLE_TRAINER_ID=str(i))
        roles.append((f"workerlog.{i}", env))
    return roles


def tail(path, lines=TAIL_LINES):
    try:
        with open(path, errors="replace") as handle:
            text = handle.readlines()
    except FileNotFoundError:
        return "(no log written)"
    # paddle's glog info lines drown the Python error: keep the rest
    useful = [line for line in text if not line.startswith(("I1", "W1", "I0", "W0"))]
    return "".join(useful[-lines:])


class PSJob:
    """Start, watch and clean up one parameter-server job."""

    def __init__(self, command, server_num, worker_num, log_dir, poll_seconds=0.5, extra_env=None):
        self.command = list(command)
        self.server_num, self.worker_num = int(server_num), int(worker_num)
        self.log_dir = log_dir
        self.poll_seconds = poll_seconds
        self.extra_env = extra_env or {}
        self.procs = []  # (name, Popen, log handle)
        self.pgid = None

    def start(self):
        os.makedirs(self.log_dir, exist_ok=True)
        self.gloo_dir = tempfile.mkdtemp(prefix="ps_gloo_")
        for name, env in role_environments(self.server_num, self.worker_num, self.gloo_dir):
            full_env = dict(os.environ, **self.extra_env, **env)
            handle = open(os.path.join(self.log_dir, name), "w")
            # the first child founds the group; the rest join it, so one killpg reaches all
            proc = subprocess.Popen(
                self.command, env=full_env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                process_group=0 if self.pgid is None else self.pgid,
            )
            if self.pgid is None:
                self.pgid = proc.pid
            self.procs.append((name, proc, handle))

    def kill_group(self, grace=5.0):
        if self.pgid is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + grace
            while time.time() < deadline and any(p.poll() is None for _, p, _ in self.procs):
                time.sleep(0.1)
            if not _group_alive(self.pgid):
                break
        for _, proc, handle in self.procs:
            proc.poll()
            handle.close()

    def wait(self):
        """Return ``(exit_code, message)``; the group is gone when this returns."""
        workers = [(n, p) for n, p, _ in self.procs if n.startswith("worker")]
        servers = [(n, p) for n, p, _ in self.procs if n.startswith("server")]
        while True:
            for name, proc in workers:
                code = proc.poll()
                if code not in (None, 0):
                    return self._fail(name, code)
            if all(p.poll() == 0 for _, p in workers):
                self.kill_group()
                return 0, f"all {len(workers)} workers finished"
            for name, proc in servers:
                code = proc.poll()
                # status 0: a hierarchical shard server stops once every worker said it is done
                if code not in (None, 0):
                    return self._fail(name, code, "exited while workers were still running")
            time.sleep(self.poll_seconds)

    def _fail(self, name, code, what=None):
        self.kill_group()
        what = what or (f"died from signal {-code}" if code < 0 else f"exited with status {code}")
        log_path = os.path.join(self.log_dir, name)
        message = f"{name.replace('log.', ' ')} {what}; last lines of {log_path}:\n{tail(log_path)}"
        return (code if code > 0 else 1), message


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_job(command, server_num, worker_num, log_dir, extra_env=None):
    """Run a PS job to the end; returns the exit code (messages on stdout/stderr)."""
    job = PSJob(command, server_num, worker_num, log_dir, extra_env=extra_env)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        job.start()
        print(f"launched {server_num} server(s) + {worker_num} worker(s), process group {job.pgid}, "
              f"logs in {log_dir}", flush=True)
        code, message = job.wait()
    except KeyboardInterrupt as stop:
        job.kill_group()
        signum = stop.args[0] if stop.args else signal.SIGINT
        print(f"interrupted: killed process group {job.pgid}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(message, file=sys.stderr if code else sys.stdout, flush=True)
    return code


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--server_num", type=int, default=None)
    parser.add_argument("--worker_num", type=int, default=None)
    parser.add_argument("--log_dir", default=None, help="default: <run_dir>/logs or ./ps_logs")
    parser.add_argument("-c", "--config", default=None, help="ctr config: runs tools/train.py -c CONFIG")
    parser.add_argument("-o", "--override", action="append", default=[], help="config override (with -c)")
    parser.add_argument("script", nargs="?", help="training script (python file) run by every role")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    server_num, worker_num, log_dir = args.server_num, args.worker_num, args.log_dir
    if args.config:
        from paddle_suite.config import load_config
        from paddle_suite.engine.run import Run

        config = load_config(args.config, args.override)
        server_num = server_num or config["PS"]["server_num"]
        worker_num = worker_num or config["PS"]["worker_num"]
        log_dir = log_dir or os.path.join(Run(config).dir, "logs")
        train_script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                    "tools", "train.py")
        command = [sys.executable, train_script, "-c", args.config, "--no-progress"]
        command += [x for o in args.override for x in ("-o", o)]
    elif args.script:
        command = [sys.executable, "-u", args.script, *args.script_args]
    else:
        sys.exit("error: give -c CONFIG or a training script (see --help)")
    code = run_job(command, server_num or 1, worker_num or 1, log_dir or "ps_logs")
    sys.exit(code)


if __name__ == "__main__":
    main()
