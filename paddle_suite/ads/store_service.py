"""The hierarchical store across processes: shard servers and the workers' ``RemoteStore``.

How the tiers map onto Fleet's roles (``fleetrun --server_num=S --worker_num=W`` or
``python -m paddle_suite.ads.launcher``, which give every process the ``PADDLE_*`` variables):

* **server** ``s`` (``TRAINING_ROLE=PSERVER``, the ``s``-th endpoint of
  ``PADDLE_PSERVERS_IP_PORT_LIST``) owns the keys with ``store.shard_of(key, S) == s``: their
  **MEM** cache and **SSD** table, a :class:`~paddle_suite.ads.store.HierarchicalStore` at
  ``<Store.path>/shard-s-of-S`` (the same layout as the in-process ``ShardedStore``, so evaluation
  and ``store_lookup`` read a distributed run's store offline). Server 0 also keeps the averaged
  dense parameters (``<Store.path>/dense/pass-i.pkl``).
* **worker** ``w`` (``TRAINING_ROLE=TRAINER``, ``PADDLE_TRAINER_ID``) trains every W-th batch of
  each pass; its **HBM** tier is the working set of *its* batches' distinct keys, assembled from
  the servers' shards by a :class:`RemoteStore`.

Protocol (``multiprocessing.connection`` on loopback or a LAN, HMAC-authenticated with
``PADDLE_SUITE_STORE_AUTHKEY``; one connection per worker and server, request/response; numpy
arrays travel pickled, i.e. as their raw bytes). Per pass ``i``:

1. ``open`` (sent when the worker prefetches pass ``i``'s keys, before pass ``i-1`` trains): the
   server loads the working set SSD -> MEM in its background thread and keeps it *open*, so its
   commit of pass ``i-1`` patches it (the store's prefetch rule). ``fetch`` returns the rows once
   the server has committed pass ``i-1``.
2. The worker trains and ``push``es the *delta* of its rows (trained minus fetched: weights and
   Adagrad sums) to each owning server, and its dense parameters and optimizer state to server 0.
3. Merge and commit: when all W workers pushed pass ``i``, a server loads the union of their keys
   (committed rows of pass ``i-1``, the rows every worker started from) and adds the deltas in
   worker order (a deterministic async-PS / geo-style merge: a key trained by two workers gets
   both updates). Worker 0 coordinates a two-phase commit: ``prepare`` on every server (server 0
   first writes the averaged dense state of pass ``i``, then each server durably logs its merged
   rows and marks them prepared), then ``finish`` on every server. Every worker then ``pull_dense``
   the average from server 0 (after server 0 finished pass ``i``), so all start pass ``i+1`` with
   identical dense parameters.

Crash consistency (``kill -9`` of any or all processes mid-pass, then a restart of the job): each
server reopens its shard keeping a prepared pass undecided; worker 0 reads every server's
``status`` and tells each to roll the prepared pass forward when every shard prepared or finished
it, else to drop it (``ShardedStore``'s rule), after which all shards are at the same last pass
``L``; server 0 drops dense files above ``L`` (the dense file of pass ``L`` was written before any
shard prepared it). Workers wait for that (``wait_ready``), pull the dense state of ``L`` and
continue with pass ``L+1``. So at most the interrupted pass is lost.

A server exits (status 0, store closed cleanly) after all W workers said ``done``; under our
launcher or fleetrun a killed job is cleaned up by the launcher.
"""
import hashlib
import itertools
import logging
import os
import pickle
import re
import signal
import threading
import time
from multiprocessing.connection import Client, Listener

import numpy as np

from paddle_suite.ads.store import HierarchicalStore, WorkingSet, _as_keys, shard_of, sorted_unique

log = logging.getLogger(__name__)
_DENSE_FILE = re.compile(r"pass-(\d+)\.pkl$")
_REQUESTS = frozenset({"status", "resolve", "wait_ready", "open", "fetch", "push", "prepare", "finish", "pull_dense",
                       "read_rows", "stats", "mark_done"})


def authkey_from_env(endpoints):
    """``PADDLE_SUITE_STORE_AUTHKEY`` (our launcher sets a random one), else one derived from the
    endpoint list (fleetrun sets no secret: on loopback this only keeps stray clients out)."""
    secret = os.environ.get("PADDLE_SUITE_STORE_AUTHKEY")
    if secret:
        return secret.encode()
    return hashlib.sha256(("paddle_suite-store:" + ",".join(endpoints)).encode()).digest()


def parse_endpoint(endpoint):
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not HOST:PORT (check PADDLE_PSERVERS_IP_PORT_LIST)")
    return host, int(port)


def _average_states(states):
    """Elementwise mean of float arrays over the workers' state dicts (worker order); other values
    (step counters, schedules) from worker 0."""
    first = states[0]
    out = {}
    for name, value in first.items():
        if isinstance(value, dict):
            out[name] = _average_states([s[name] for s in states])
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            total = np.zeros(value.shape, dtype=np.float64)
            for state in states:
                total += state[name]
            out[name] = (total / len(states)).astype(value.dtype)
        else:
            out[name] = value
    return out


class ShardServer:
    """Serves shard ``shard_id`` of ``num_shards`` to ``num_workers`` workers (see module docstring)."""

    def __init__(self, path, shard_id, num_shards, num_workers, dim, state_dim, mem_cap_mb=256.0,
                 keep_dense=2, **store_kwargs):
        self.path = os.fspath(path)
        self.shard_id, self.num_shards, self.num_workers = int(shard_id), int(num_shards), int(num_workers)
        self.store = HierarchicalStore(os.path.join(self.path, f"shard-{shard_id}-of-{num_shards}"), dim, state_dim,
                                       mem_cap_mb=mem_cap_mb / num_shards, defer_prepared=True, **store_kwargs)
        self.dense_dir = os.path.join(self.path, "dense")
        self.keep_dense = max(1, int(keep_dense))
        self.cond = threading.Condition()
        self.resolved = False
        self.pending = {}  # (worker, token) -> Future of an open working set
        self.pushes = {}  # pass -> {worker: (keys, delta)}
        self.dense_pushes = {}  # pass -> {worker: state}
        self.dense_latest = None  # (pass, averaged state)
        self.prepared = None  # (pass, merged working set)
        self.done = set()
        self.lost = set()  # workers whose connection closed before they said done
        if self.shard_id == 0:
            from paddle_suite.io import atomic_write
            import json

            os.makedirs(self.dense_dir, exist_ok=True)
            with atomic_write(os.path.join(self.path, "layout.json"), "w") as handle:
                json.dump({"num_shards": self.num_shards}, handle)

    # ------------------------------------------------------------------ helpers
    def _wait(self, predicate, what):
        """Block until ``predicate()``; a barrier can never be met once a worker is gone, so fail then."""
        with self.cond:
            while not predicate():
                if self.lost:
                    raise ConnectionError(f"shard {self.shard_id}: worker(s) {sorted(self.lost)} disconnected "
                                          f"while waiting for {what}")
                self.cond.wait(timeout=1.0)

    def _dense_files(self):
        found = {}
        for name in os.listdir(self.dense_dir) if os.path.isdir(self.dense_dir) else []:
            match = _DENSE_FILE.search(name)
            if match:
                found[int(match.group(1))] = os.path.join(self.dense_dir, name)
        return found

    # ------------------------------------------------------------------ requests
    def status(self, worker=None):
        return {"shard_id": self.shard_id, "num_shards": self.num_shards, "num_workers": self.num_workers,
                "last_pass": self.store.last_pass, "prepared_pass": self.store.prepared_pass}

    def resolve(self, commit):
        with self.cond:
            if not self.resolved:
                self.store.resolve_prepared(commit=bool(commit))
                if self.shard_id == 0:
                    for pass_id, path in self._dense_files().items():
                        if pass_id > self.store.last_pass:
                            log.warning("dropping %s: its pass never committed on every shard", path)
                            os.remove(path)
                    if self.store.last_pass >= 0 and self.store.last_pass not in self._dense_files():
                        raise RuntimeError(f"{self.path}: pass {self.store.last_pass} committed but "
                                           f"{self.dense_dir} has no pass-{self.store.last_pass:05d}.pkl")
                self.resolved = True
                self.cond.notify_all()
            return self.store.last_pass

    def wait_ready(self):
        self._wait(lambda: self.resolved, "worker 0 to resolve the store after (re)start")
        return self.store.last_pass

    def open(self, worker, token, keys):
        self._wait(lambda: self.resolved, "the store to be resolved")
        self.pending[(worker, token)] = self.store.prefetch(keys)
        return True

    def fetch(self, worker, token, after_pass):
        future = self.pending.pop((worker, token))
        ws = future.result()
        self._wait(lambda: self.store.last_pass >= after_pass, f"pass {after_pass} to commit")
        with self.store._lock:  # no commit may patch the rows while they are copied
            rows, base = ws.rows.copy(), ws.base_pass
            self.store.discard(ws)
        if base < after_pass:
            raise RuntimeError(f"shard {self.shard_id}: working set reflects pass {base}, expected {after_pass}")
        return rows

    def push(self, pass_id, worker, keys, delta, dense=None):
        self._wait(lambda: self.store.last_pass >= pass_id - 1, f"pass {pass_id - 1} to commit")
        with self.cond:
            if pass_id != self.store.last_pass + 1:
                raise ValueError(f"shard {self.shard_id}: push of pass {pass_id}, expected {self.store.last_pass + 1}")
            self.pushes.setdefault(pass_id, {})[worker] = (_as_keys(keys), np.asarray(delta, np.float32))
            if dense is not None:
                self.dense_pushes.setdefault(pass_id, {})[worker] = dense
            self.cond.notify_all()
        return True

    def prepare(self, pass_id):
        """Phase 1: wait for every worker's push, merge, write the dense average (server 0), log."""
        self._wait(lambda: len(self.pushes.get(pass_id, {})) == self.num_workers, f"all pushes of pass {pass_id}")
        if self.shard_id == 0:
            self._wait(lambda: len(self.dense_pushes.get(pass_id, {})) == self.num_workers,
                       f"all dense states of pass {pass_id}")
        pushes = self.pushes[pass_id]
        union = sorted_unique(np.concatenate([pushes[w][0] for w in range(self.num_workers)]))
        ws = self.store.load_working_set(union, count=False)
        for worker in range(self.num_workers):  # worker order: the float sums are reproducible
            keys, delta = pushes[worker]
            ws.rows[ws.index(keys)] += delta
        if self.shard_id == 0:
            from paddle_suite.io import atomic_write

            dense = self.dense_pushes[pass_id]
            average = _average_states([dense[w] for w in range(self.num_workers)])
            with atomic_write(os.path.join(self.dense_dir, f"pass-{pass_id:05d}.pkl"), "wb") as handle:
                pickle.dump({"pass": pass_id, "state": average}, handle, protocol=pickle.HIGHEST_PROTOCOL)
            self.dense_latest = (pass_id, average)
        self.store.prepare_pass(ws, pass_id)
        self.prepared = (pass_id, ws)
        return True

    def finish(self, pass_id):
        """Phase 2: apply the prepared pass; wakes fetches and dense pulls waiting for it."""
        prepared_pass, ws = self.prepared
        if prepared_pass != pass_id:
            raise RuntimeError(f"shard {self.shard_id}: finish({pass_id}) but pass {prepared_pass} is prepared")
        self.store.finish_pass(ws, pass_id)
        with self.cond:
            self.prepared = None
            self.pushes.pop(pass_id, None)
            self.dense_pushes.pop(pass_id, None)
            self.cond.notify_all()
        if self.shard_id == 0:
            for old in sorted(p for p in self._dense_files() if p <= pass_id)[:-self.keep_dense]:
                os.remove(self._dense_files()[old])
        return True

    def pull_dense(self, pass_id):
        self._wait(lambda: self.store.last_pass >= pass_id, f"pass {pass_id} to commit")
        if self.dense_latest is not None and self.dense_latest[0] == pass_id:
            return self.dense_latest[1]
        path = self._dense_files().get(pass_id)
        if path is None:
            raise FileNotFoundError(f"{self.dense_dir} has no dense state of pass {pass_id}")
        with open(path, "rb") as handle:
            return pickle.load(handle)["state"]

    def read_rows(self, keys):
        return self.store.read_rows(keys)

    def stats(self):
        return self.store.stats()

    def mark_done(self, worker):
        with self.cond:
            self.done.add(worker)
            self.cond.notify_all()
        return True

    # ------------------------------------------------------------------ serving
    def handle(self, conn):
        worker = None
        try:
            while True:
                try:
                    op, kwargs = conn.recv()
                except (EOFError, ConnectionResetError):
                    return
                worker = kwargs.get("worker", worker)
                try:
                    if op not in _REQUESTS:
                        raise ValueError(f"unknown request {op!r}")
                    reply = ("ok", getattr(self, op)(**kwargs))
                except Exception as error:  # the worker re-raises it with this shard named
                    log.exception("shard %d: %s failed", self.shard_id, op)
                    reply = ("error", f"{type(error).__name__}: {error}")
                conn.send(reply)
        finally:
            conn.close()
            with self.cond:
                if worker is not None and worker not in self.done:
                    self.lost.add(worker)
                    self.cond.notify_all()

    def _accept(self, listener):
        while True:
            try:
                conn = listener.accept()
            except OSError:  # listener closed at the end
                return
            except Exception:  # a client that failed authentication: keep serving the others
                log.exception("shard %d: rejected a connection", self.shard_id)
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def serve(self, address, authkey):
        """Serve until all workers said ``done`` (then close the store), or fail when one is lost."""
        listener = Listener(address, authkey=authkey)
        print(f"shard server {self.shard_id}/{self.num_shards} on {address[0]}:{address[1]}, "
              f"last pass {self.store.last_pass}", flush=True)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        try:
            with self.cond:
                while len(self.done) < self.num_workers:
                    if self.lost:
                        raise ConnectionError(f"shard {self.shard_id}: worker(s) {sorted(self.lost)} disconnected "
                                              "before finishing")
                    self.cond.wait(timeout=1.0)
        finally:
            listener.close()
            self.close()
        print(f"shard server {self.shard_id}: all {self.num_workers} workers done, store closed", flush=True)

    def close(self):
        with self.cond:
            if self.prepared is None:
                self.store.close()


class RemoteWorkingSet(WorkingSet):
    """A worker's HBM working set assembled from the shards; remembers the fetched rows."""

    def __init__(self, keys, rows, dim, shard_ids):
        super().__init__(keys, rows, dim, base_pass=None)
        self.shard_ids = shard_ids
        self.loaded = rows.copy()


class _PendingSet:
    """Future-like: ``result()`` fetches the prefetched rows (after the previous pass committed)."""

    def __init__(self, store, keys, token):
        self.store, self.keys, self.token = store, keys, token

    def result(self):
        return self.store._fetch(self.keys, self.token)


class RemoteStore:
    """A worker's view of the shard servers, with the store API hierarchical_train uses."""

    def __init__(self, endpoints, worker_id, num_workers, dim, authkey=None, connect_timeout=120.0):
        self.endpoints = list(endpoints)
        self.num_shards = len(self.endpoints)
        self.worker_id, self.num_workers, self.dim = int(worker_id), int(num_workers), int(dim)
        authkey = authkey or authkey_from_env(self.endpoints)
        self.conns = [self._connect(e, authkey, connect_timeout) for e in self.endpoints]
        self.locks = [threading.Lock() for _ in self.conns]
        self._tokens = itertools.count()
        self.last_pass = self._start()

    @staticmethod
    def _connect(endpoint, authkey, timeout):
        deadline = time.time() + timeout
        while True:  # the servers may still be starting
            try:
                return Client(parse_endpoint(endpoint), authkey=authkey)
            except (ConnectionRefusedError, FileNotFoundError):
                if time.time() > deadline:
                    raise ConnectionError(f"no shard server answered at {endpoint} within {timeout:.0f} s")
                time.sleep(0.2)

    def _call(self, shard, op, **kwargs):
        with self.locks[shard]:
            self.conns[shard].send((op, kwargs))
            try:
                status, value = self.conns[shard].recv()
            except EOFError:
                raise ConnectionError(f"shard server {shard} at {self.endpoints[shard]} went away during {op}")
        if status != "ok":
            raise RuntimeError(f"shard server {shard} at {self.endpoints[shard]}: {op} failed: {value}")
        return value

    def _each(self, op, per_shard=None, **kwargs):
        """Call ``op`` on every shard concurrently (the shards' disk work overlaps)."""
        results = [None] * self.num_shards
        errors = []

        def run(shard):
            try:
                results[shard] = self._call(shard, op, **kwargs, **(per_shard(shard) if per_shard else {}))
            except Exception as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(s,)) for s in range(self.num_shards)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results

    def _start(self):
        """Worker 0 resolves an interrupted two-phase commit (see the module docstring)."""
        statuses = self._each("status", worker=self.worker_id)
        for shard, status in enumerate(statuses):
            if (status["shard_id"], status["num_shards"], status["num_workers"]) != (shard, self.num_shards,
                                                                                      self.num_workers):
                raise RuntimeError(f"server at {self.endpoints[shard]} serves shard {status['shard_id']} of "
                                   f"{status['num_shards']} for {status['num_workers']} workers; this worker expects "
                                   f"shard {shard} of {self.num_shards} for {self.num_workers}")
        if self.worker_id == 0:
            prepared = [s["prepared_pass"] for s in statuses if s["prepared_pass"] is not None]
            top = max([s["last_pass"] for s in statuses] + prepared)
            forward = all(s["last_pass"] == top or s["prepared_pass"] == top for s in statuses)
            passes = self._each("resolve", per_shard=lambda i: {
                "commit": forward and statuses[i]["prepared_pass"] == top})
        else:
            passes = self._each("wait_ready")
        if len(set(passes)) != 1:
            raise RuntimeError(f"shards are at different passes {passes} after recovery: the store is damaged")
        return passes[0]

    # -- working sets
    def prefetch(self, keys):
        unique = sorted_unique(_as_keys(keys))
        token = next(self._tokens)
        shard_ids = shard_of(unique, self.num_shards)
        self._each("open", per_shard=lambda s: {"keys": unique[shard_ids == s]}, worker=self.worker_id, token=token)
        return _PendingSet(self, unique, token)

    def load_working_set(self, keys):
        return self.prefetch(keys).result()

    def _fetch(self, unique, token):
        shard_ids = shard_of(unique, self.num_shards)
        parts = self._each("fetch", worker=self.worker_id, token=token, after_pass=self.last_pass)
        rows = np.empty((unique.size, parts[0].shape[1]), dtype=np.float32)
        for shard, part in enumerate(parts):
            rows[shard_ids == shard] = part
        ws = RemoteWorkingSet(unique, rows, self.dim, shard_ids)
        ws.base_pass = self.last_pass
        return ws

    def commit_pass(self, ws, pass_id, dense=None):
        """Push this worker's deltas (and dense state to server 0); worker 0 runs the two-phase
        commit; returns the dense state averaged over the workers (None without ``dense``)."""
        if pass_id != self.last_pass + 1:
            raise ValueError(f"pass_id {pass_id} must follow the last committed pass {self.last_pass}")
        if not np.isfinite(ws.rows).all():
            raise FloatingPointError(f"worker {self.worker_id}: non-finite rows in pass {pass_id}; refusing to push")
        delta = ws.rows - ws.loaded
        self._each("push", per_shard=lambda s: {
            "keys": ws.keys[ws.shard_ids == s], "delta": delta[ws.shard_ids == s],
            "dense": dense if s == 0 else None}, pass_id=pass_id, worker=self.worker_id)
        if self.worker_id == 0:
            for shard in range(self.num_shards):  # server 0 first: it writes the dense average
                self._call(shard, "prepare", pass_id=pass_id)
            self._each("finish", pass_id=pass_id)
        average = self._call(0, "pull_dense", pass_id=pass_id) if dense is not None else None
        self.last_pass = pass_id
        return average

    def pull_dense(self, pass_id):
        return self._call(0, "pull_dense", pass_id=pass_id)

    def discard(self, ws):
        pass  # fetched rows hold no server state

    def read_rows(self, keys):
        keys = _as_keys(keys)
        shard_ids = shard_of(keys, self.num_shards)
        parts = self._each("read_rows", per_shard=lambda s: {"keys": keys[shard_ids == s]})
        rows = np.empty((keys.size, parts[0].shape[1]), dtype=np.float32)
        for shard, part in enumerate(parts):
            rows[shard_ids == shard] = part
        return rows

    def stats(self):
        per_shard = self._each("stats")
        counts = {k: sum(p["key_counts"][k] for p in per_shard) for k in per_shard[0]["key_counts"]}
        total = max(sum(counts.values()), 1)
        return {"hit_rate": {k: v / total for k, v in counts.items()}, "key_counts": counts,
                "mem_bytes": sum(p["mem_bytes"] for p in per_shard), "last_pass": self.last_pass,
                "shards": per_shard}

    def close(self, done=True):
        """Tell the servers this worker is finished (they exit after all workers are) and disconnect."""
        for shard, conn in enumerate(self.conns):
            try:
                if done:
                    self._call(shard, "mark_done", worker=self.worker_id)
            finally:
                conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(done=exc[0] is None)


def serve_from_env(path, num_workers, dim, state_dim, **store_kwargs):
    """Run this process's shard server: the shard is our endpoint's index in
    ``PADDLE_PSERVERS_IP_PORT_LIST`` (``POD_IP:PADDLE_PORT``). SIGTERM closes the store cleanly."""
    endpoints = os.environ["PADDLE_PSERVERS_IP_PORT_LIST"].split(",")
    mine = f"{os.environ.get('POD_IP', '127.0.0.1')}:{os.environ['PADDLE_PORT']}"
    if mine not in endpoints:
        raise RuntimeError(f"this server's endpoint {mine} (POD_IP:PADDLE_PORT) is not in "
                           f"PADDLE_PSERVERS_IP_PORT_LIST={endpoints}")

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    server = ShardServer(path, endpoints.index(mine), len(endpoints), num_workers, dim, state_dim, **store_kwargs)
    server.serve(parse_endpoint(mine), authkey_from_env(endpoints))
