"""The hierarchical store across processes: shard servers and the workers' ``RemoteStore``.

How the tiers map onto Fleet's roles (``fleetrun --server_num=S --worker_num=W`` or
``python -m paddle_suite.ads.launcher``, which give every process the ``PADDLE_*`` variables):

* **server** ``s`` (``TRAINING_ROLE=PSERVER``, the ``s``-th endpoint of
  ``PADDLE_PSERVERS_IP_PORT_LIST``) owns the keys with ``store.shard_of(key, S) == s``: their
  **MEM** cache and **SSD** table, a :class:`~paddle_suite.ads.store.HierarchicalStore` at
  ``<Store.path>/shard-s-of-S`` (the same layout as the in-process ``ShardedStore``, so evaluation
  and ``store_lookup`` read a distributed run's store offline). Server 0 also keeps the averaged
  dense parameters (``<Store.path>/dense/pass-i.npz``, numpy arrays only, read with
  ``allow_pickle=False``).
* **worker** ``w`` (``TRAINING_ROLE=TRAINER``, ``PADDLE_TRAINER_ID``) trains every W-th batch of
  each pass; its **HBM** tier is the working set of *its* batches' distinct keys, assembled from
  the servers' shards by a :class:`RemoteStore`.

Transport and threat model. Unary gRPC calls (``grpcio``, generic handler, raw bytes: no protoc
code, no protobuf runtime) carry frames that cannot run code: a fixed header (magic, op code,
worker id, request nonce, time, sizes), a small JSON object of scalar arguments, then numpy
buffers each described by a dtype from an allow-list and a shape, all bounds checked before
``np.frombuffer`` (``max_message_mb`` for the buffers, 64 KiB for the JSON, 1024 arrays), and an
HMAC-SHA256 of the frame with the job's shared key. A call also carries a signed timestamp in its
metadata, checked before the message is read, so an unauthenticated client cannot make the server
buffer a large message. Nothing received is unpickled or evaluated.
The key never crosses the network; a request is accepted once (its nonce is remembered for the
replay window) and only within ``replay_window_s`` of its timestamp (hosts' clocks must agree to
that), and replies are signed and bound to the request's nonce, so a host on the path can neither
forge, replay nor alter a request or a reply. It can read them (rows and dense parameters travel
in clear: run on a network you trust with the data) and can drop them (a job then fails on its
deadlines). The key comes from ``PADDLE_SUITE_STORE_AUTHKEY`` (at least 16 characters; our launcher
sets a random one per job) or ``PADDLE_SUITE_STORE_KEYFILE`` (a file of the current user that
nobody else may read, ``chmod 600``); without one neither servers nor workers start, even on one
host under bare ``fleetrun``: a generated key file would have to be found by every role before
any of them talks, and an explicit secret is simpler to audit than a hidden one. Anyone holding the
key is one of the job's roles.

Serving. Each server binds exactly the host of its endpoint (no wildcard unless the endpoint is
one), without ``SO_REUSEPORT`` (no other process can share the port), with a bounded count of
connections, a handshake timeout, an idle-connection timeout, bounded concurrent calls and a thread
pool (gRPC's core reads frames asynchronously, so a slow or silent client holds no thread). A frame
that fails authentication or parsing gets an error status (``UNAUTHENTICATED`` /
``INVALID_ARGUMENT``) and a rate-limited log line; it never stops the server. A request's worker id
must be in ``[0, W)``; only worker 0 may resolve, prepare and finish. A server stops (status 0,
store closed cleanly) once each of the W worker ids said ``done`` (idempotent per id); ``status``
and the other calls never stop it. Workers send a heartbeat every ``heartbeat_s``; a worker silent
for ``worker_timeout_s`` after its first call is lost, which fails the barriers waiting for it and
the server (a crashed worker stops the job rather than hanging it).

Workers wait for each server's channel with gRPC's exponential reconnect backoff (0.2 s up to 5 s)
and fail after ``connect_timeout`` with the endpoint named. Every call has a deadline
(``call_timeout``; ``wait_timeout`` for calls that wait for other workers); a call the server
refused before running it (``RESOURCE_EXHAUSTED``), or an idempotent call whose connection broke
(``UNAVAILABLE``), is retried with backoff until its deadline; anything else fails with the shard,
endpoint and call named.

Protocol per pass ``i``:

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

Feature admission and shrink (the store's ``admit_threshold`` / ``shrink_every_passes`` settings,
given to every server): each server applies the store's rules to its shard. ``fetch`` also returns
which keys are admitted (``uint8``); a worker's ``ws.count(keys, labels)`` collects its shows and
clicks, ``push`` carries them (``show``, ``click``: float32 per key; pending keys' deltas are sent as
zeros), the server adds the W workers' counts into the merged working set, and its
``prepare_pass`` decides admissions and (on the schedule, or when ``prepare`` carries ``shrink``)
the deletions, logged with the pass, so the two-phase commit covers them.

Crash consistency (``kill -9`` of any or all processes mid-pass, then a restart of the job): each
server reopens its shard keeping a prepared pass undecided; worker 0 reads every server's
``status`` and tells each to roll the prepared pass forward when every shard prepared or finished
it, else to drop it (``ShardedStore``'s rule), after which all shards are at the same last pass
``L``; server 0 drops dense files above ``L`` (the dense file of pass ``L`` was written before any
shard prepared it). Workers wait for that (``wait_ready``), pull the dense state of ``L`` and
continue with pass ``L+1``. So at most the interrupted pass is lost.
"""
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import os
import re
import secrets
import signal
import stat
import struct
import threading
import time
from concurrent import futures

import grpc
import numpy as np

from paddle_suite.ads.store import HierarchicalStore, WorkingSet, _as_keys, shard_of, sorted_unique
from paddle_suite.io import atomic_write

log = logging.getLogger(__name__)

KEY_ENV = "PADDLE_SUITE_STORE_AUTHKEY"
KEYFILE_ENV = "PADDLE_SUITE_STORE_KEYFILE"
MIN_KEY_BYTES = 16
METHOD = "/paddle_suite.StoreShard/Call"
AUTH_METADATA = "paddle-suite-store-auth"
_DENSE_FILE = re.compile(r"pass-(\d+)\.npz$")

# ---------------------------------------------------------------------------------------- frames
MAGIC = b"PSS1"
# magic, op code, (3 pad bytes), worker id (-1: none), nonce, unix time, JSON length, array count
_HEADER = struct.Struct("<4sB3xiQdII")
_ARRAY = struct.Struct("<BBH")  # dtype code, ndim, name length; then the name, then ndim uint64 dims
_DIM = struct.Struct("<Q")
_MAC_BYTES = hashlib.sha256().digest_size
MAX_META_BYTES = 64 * 1024
MAX_ARRAYS = 1024
MAX_NDIM = 8
_FRAME_SLACK = 2 * 2**20  # gRPC's message limit: header, arguments and descriptors on top of the arrays
_NAME = re.compile(r"[A-Za-z0-9_.@/\-]{1,200}")
# little-endian only, so both ends agree whatever their byte order
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<f2"), 4: np.dtype("<i8"), 5: np.dtype("<i4"),
           6: np.dtype("<u8"), 7: np.dtype("u1"), 8: np.dtype("?")}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}

OPS = ("status", "resolve", "wait_ready", "open", "fetch", "push", "prepare", "finish", "pull_dense", "read_rows",
       "stats", "done", "alive")
_OP_CODES = {name: i + 1 for i, name in enumerate(OPS)}
# scalar arguments of each request (all required, nothing else allowed)
_ARGS = {"resolve": {"commit": bool}, "open": {"token": int}, "fetch": {"token": int, "after_pass": int},
         "push": {"pass_id": int}, "prepare": {"pass_id": int}, "finish": {"pass_id": int},
         "pull_dense": {"pass_id": int}}
# optional scalar arguments: prepare's shrink (0 / 1: skip / force the store's shrink; absent: its schedule)
_OPTIONAL_ARGS = {"prepare": {"shrink": int}}
_WORKER_OPS = frozenset({"open", "fetch", "push", "done", "alive"})  # need a worker id
_CHIEF_OPS = frozenset({"resolve", "prepare", "finish"})  # worker 0 only
# calls that block on other workers (wait_timeout) and calls safe to resend after a broken connection
_WAITING_OPS = frozenset({"wait_ready", "open", "fetch", "push", "prepare", "pull_dense"})
_IDEMPOTENT_OPS = frozenset({"status", "resolve", "wait_ready", "open", "push", "pull_dense", "read_rows", "stats",
                             "done", "alive"})


class BadFrame(ValueError):
    """A frame that is not a well-formed message of this protocol."""


class Unauthenticated(ValueError):
    """A frame not signed with the job's key, or replayed."""


class Message:
    def __init__(self, op, worker, nonce, sent, meta, arrays):
        self.op, self.worker, self.nonce, self.sent, self.meta, self.arrays = op, worker, nonce, sent, meta, arrays


def _mac(key, body):
    return hmac.new(key, body, hashlib.sha256).digest()


def call_token(key, now=None):
    """The call's metadata token: time and its HMAC, checked before the server reads the message."""
    stamp = f"{time.time() if now is None else now:.3f}"
    return stamp + ":" + hmac.new(key, b"paddle_suite-store-call:" + stamp.encode(), hashlib.sha256).hexdigest()


def check_call_token(key, token, window):
    """None if ``token`` is a fresh token of ``key``, else what is wrong with it."""
    stamp, _, mac = (token or "").partition(":")
    try:
        age = time.time() - float(stamp)
    except ValueError:
        return f"call without a valid {AUTH_METADATA} token"
    want = hmac.new(key, b"paddle_suite-store-call:" + stamp.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac):
        return "call not signed with this job's key (wrong PADDLE_SUITE_STORE_AUTHKEY / PADDLE_SUITE_STORE_KEYFILE)"
    if abs(age) > window:
        return f"call token {age:+.0f} s off this host's clock (limit {window:.0f} s): replayed, or clocks disagree"
    return None


def encode(key, op, meta=None, arrays=None, worker=-1, nonce=None, max_bytes=None):
    """One signed frame. ``arrays``: ``{name: ndarray}`` with dtypes from the allow-list."""
    meta_bytes = json.dumps(meta or {}, separators=(",", ":")).encode()
    if len(meta_bytes) > MAX_META_BYTES:
        raise ValueError(f"{op}: {len(meta_bytes)} bytes of arguments, the limit is {MAX_META_BYTES}")
    arrays = arrays or {}
    if len(arrays) > MAX_ARRAYS:
        raise ValueError(f"{op}: {len(arrays)} arrays, the limit is {MAX_ARRAYS}")
    descriptors, buffers, total = [], [], 0
    for name, value in arrays.items():
        value = np.asarray(value)
        wire = value.dtype.newbyteorder("<")
        if wire not in _DTYPE_CODES or not _NAME.fullmatch(name) or value.ndim > MAX_NDIM:
            raise TypeError(f"{op}: array {name!r} ({value.dtype}, {value.ndim}-d) cannot be sent: names match "
                            f"{_NAME.pattern}, dtypes are {sorted(str(d) for d in _DTYPE_CODES)}, at most "
                            f"{MAX_NDIM} dimensions")
        value = np.asarray(value, dtype=wire, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        encoded_name = name.encode()
        descriptors.append(_ARRAY.pack(_DTYPE_CODES[wire], value.ndim, len(encoded_name)) + encoded_name
                           + b"".join(_DIM.pack(d) for d in value.shape))
        buffers.append(value.reshape(-1).view(np.uint8))
        total += value.nbytes
    if max_bytes is not None and total > max_bytes:
        raise ValueError(f"{op}: {total / 2**20:.1f} MB of arrays in one message, more than the limit of "
                         f"{max_bytes / 2**20:.1f} MB: raise Store.max_message_mb (on every server and worker)")
    nonce = secrets.randbits(64) if nonce is None else nonce
    header = _HEADER.pack(MAGIC, _OP_CODES[op], int(worker), nonce, time.time(), len(meta_bytes), len(arrays))
    body = b"".join([header, meta_bytes, *descriptors, *buffers])
    return body + _mac(key, body)


def decode(key, frame, max_bytes):
    """Check and parse a frame; raises :class:`Unauthenticated` or :class:`BadFrame`, never more."""
    try:
        return _decode(key, bytes(frame), max_bytes)
    except (Unauthenticated, BadFrame):
        raise
    except (struct.error, ValueError, TypeError, RecursionError) as error:  # e.g. JSON nested too deep
        raise BadFrame(f"malformed frame: {type(error).__name__}: {error}") from None


def _decode(key, frame, max_bytes):
    if len(frame) < _HEADER.size + _MAC_BYTES:
        raise BadFrame(f"truncated frame: {len(frame)} bytes, a header and signature need "
                       f"{_HEADER.size + _MAC_BYTES}")
    body, mac = frame[:-_MAC_BYTES], frame[-_MAC_BYTES:]
    if not hmac.compare_digest(_mac(key, body), mac):
        raise Unauthenticated("frame not signed with this job's key (wrong PADDLE_SUITE_STORE_AUTHKEY / "
                              "PADDLE_SUITE_STORE_KEYFILE, or altered in transit)")
    magic, op_code, worker, nonce, sent, meta_len, count = _HEADER.unpack_from(body)
    if magic != MAGIC or not 1 <= op_code <= len(OPS):
        raise BadFrame(f"not a store frame (magic {magic!r}, op code {op_code})")
    if meta_len > MAX_META_BYTES or count > MAX_ARRAYS:
        raise BadFrame(f"{meta_len} bytes of arguments / {count} arrays: limits {MAX_META_BYTES} / {MAX_ARRAYS}")
    offset = _HEADER.size
    if offset + meta_len > len(body):
        raise BadFrame("truncated frame: arguments cut short")
    try:
        meta = json.loads(body[offset:offset + meta_len])
    except (ValueError, RecursionError) as error:
        raise BadFrame(f"arguments are not JSON: {error}") from None
    if not isinstance(meta, dict):
        raise BadFrame("arguments must be a JSON object")
    offset += meta_len
    specs, total = [], 0
    for _ in range(count):
        if offset + _ARRAY.size > len(body):
            raise BadFrame("truncated frame: array descriptors cut short")
        code, ndim, name_len = _ARRAY.unpack_from(body, offset)
        offset += _ARRAY.size
        if code not in _DTYPES or ndim > MAX_NDIM or offset + name_len + _DIM.size * ndim > len(body):
            raise BadFrame(f"bad array descriptor (dtype code {code}, {ndim} dims) or frame cut short")
        name = body[offset:offset + name_len].decode("ascii", errors="replace")
        offset += name_len
        shape = tuple(_DIM.unpack_from(body, offset + _DIM.size * i)[0] for i in range(ndim))
        offset += _DIM.size * ndim
        if not _NAME.fullmatch(name) or any(name == s[0] for s in specs):
            raise BadFrame(f"bad or repeated array name {name!r}")
        nbytes = _DTYPES[code].itemsize * int(np.prod(shape, dtype=object))  # Python ints: no overflow
        total += nbytes
        if total > max_bytes:
            raise BadFrame(f"arrays of more than {max_bytes / 2**20:.1f} MB (Store.max_message_mb)")
        specs.append((name, _DTYPES[code], shape, nbytes))
    if len(body) - offset != total:
        raise BadFrame(f"frame holds {len(body) - offset} bytes of array data, its descriptors say {total} "
                       "(truncated or padded)")
    arrays = {}
    for name, dtype, shape, nbytes in specs:
        count_items = nbytes // dtype.itemsize
        arrays[name] = np.frombuffer(body, dtype=dtype, count=count_items, offset=offset).reshape(shape).copy()
        offset += nbytes
    return Message(OPS[op_code - 1], worker, nonce, sent, meta, arrays)


class ReplayGuard:
    """Accept each nonce once, and only within ``window`` seconds of the frame's timestamp."""

    def __init__(self, window):
        self.window = float(window)
        self.seen = {}
        self.lock = threading.Lock()
        self.next_prune = time.time() + self.window

    def check(self, nonce, sent):
        now = time.time()
        if abs(now - sent) > self.window:
            raise Unauthenticated(f"frame timestamp {now - sent:+.0f} s off this host's clock (limit "
                                  f"{self.window:.0f} s): replayed, or the hosts' clocks disagree")
        with self.lock:
            if nonce in self.seen:
                raise Unauthenticated("replayed frame (nonce already used)")
            self.seen[nonce] = sent
            if now > self.next_prune:
                self.seen = {n: t for n, t in self.seen.items() if now - t <= self.window}
                self.next_prune = now + self.window


def flatten_state(state, prefix="dense"):
    """``{"model": {name: array}, ...}`` -> ``{"dense/model/name": array}``."""
    return {f"{prefix}/{group}/{name}": np.asarray(value) for group, values in state.items()
            for name, value in values.items()}


def unflatten_state(arrays, prefix="dense"):
    state = {}
    for key, value in arrays.items():
        head, group, name = (key.split("/", 2) + ["", ""])[:3]
        if head != prefix or not group or not name:
            raise BadFrame(f"array {key!r} is not {prefix}/<group>/<name>")
        state.setdefault(group, {})[name] = value
    return state


# ---------------------------------------------------------------------------------------- secrets
def authkey_from_env(endpoints):
    """The job's shared key: ``PADDLE_SUITE_STORE_AUTHKEY``, else the contents of
    ``PADDLE_SUITE_STORE_KEYFILE``; no key (or a short one) is an error naming the fix."""
    secret, path = os.environ.get(KEY_ENV), os.environ.get(KEYFILE_ENV)
    if secret:
        key, source = secret.encode(), KEY_ENV
    elif path:
        key, source = read_keyfile(path), f"{KEYFILE_ENV}={path}"
    else:
        where = "these hosts" if any(not is_loopback(e) for e in endpoints) else "this host"
        raise RuntimeError(
            f"the hierarchical store's shard servers {','.join(endpoints)} need a shared secret and none is set. "
            f"Give every server and worker on {where} the same random key: "
            f"export {KEY_ENV}=$(python -c 'import secrets; print(secrets.token_hex(32))') before fleetrun, or "
            f"{KEYFILE_ENV}=/path/to/keyfile (readable by you only: chmod 600). "
            "python -m paddle_suite.ads.launcher sets a random key for one-host jobs.")
    return check_key(key, source)


def check_key(key, source="the key"):
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{source}: the store key must be at least {MIN_KEY_BYTES} bytes "
                         "(python -c 'import secrets; print(secrets.token_hex(32))' makes one)")
    return key


def read_keyfile(path):
    """The key in ``path``; refuses a file another user owns or may read or write (as ssh does)."""
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{KEYFILE_ENV}={path}: mode {stat.filemode(info.st_mode)}, owner uid "
                                  f"{info.st_uid}; the key file must belong to you and be private: chmod 600 {path}")
        return handle.read().strip()


def parse_endpoint(endpoint):
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not HOST:PORT (check PADDLE_PSERVERS_IP_PORT_LIST)")
    return host.strip("[]"), int(port)


def is_loopback(endpoint):
    host = parse_endpoint(endpoint)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _target(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _average_states(states):
    """Elementwise mean of float arrays over the workers' state dicts (worker order); other arrays
    (step counters) from worker 0. Every worker must send the same names and shapes."""
    first = states[0]
    out = {}
    for group, values in first.items():
        out[group] = {}
        for name, value in values.items():
            parts = []
            for worker, state in enumerate(states):
                other = state.get(group, {}).get(name)
                if other is None or other.shape != value.shape:
                    raise ValueError(f"dense state {group}/{name}: worker {worker} sent "
                                     f"{None if other is None else other.shape}, worker 0 {value.shape}")
                parts.append(other)
            if value.dtype.kind == "f":
                total = np.zeros(value.shape, dtype=np.float64)
                for part in parts:
                    total += part
                out[group][name] = (total / len(states)).astype(value.dtype)
            else:
                out[group][name] = value
    return out


class _LogLimiter:
    """At most ``per_minute`` warnings a minute, so a flood of bad frames cannot flood the log."""

    def __init__(self, per_minute=20):
        self.per_minute, self.window, self.count, self.dropped = per_minute, 0.0, 0, 0
        self.lock = threading.Lock()

    def warning(self, message, *args):
        with self.lock:
            now = time.monotonic()
            if now - self.window > 60.0:
                if self.dropped:
                    log.warning("%d more rejected frames not logged", self.dropped)
                self.window, self.count, self.dropped = now, 0, 0
            self.count += 1
            if self.count > self.per_minute:
                self.dropped += 1
                return
        log.warning(message, *args)


# ---------------------------------------------------------------------------------------- server
class ShardServer:
    """Serves shard ``shard_id`` of ``num_shards`` to ``num_workers`` workers (see module docstring)."""

    def __init__(self, path, shard_id, num_shards, num_workers, dim, state_dim, mem_cap_mb=256.0,
                 keep_dense=2, max_message_mb=256.0, worker_timeout_s=60.0, replay_window_s=300.0,
                 handshake_timeout_s=10.0, max_connections=None, **store_kwargs):
        self.path = os.fspath(path)
        self.shard_id, self.num_shards, self.num_workers = int(shard_id), int(num_shards), int(num_workers)
        self.store = HierarchicalStore(os.path.join(self.path, f"shard-{shard_id}-of-{num_shards}"), dim, state_dim,
                                       mem_cap_mb=mem_cap_mb / num_shards, defer_prepared=True, **store_kwargs)
        self.dense_dir = os.path.join(self.path, "dense")
        self.keep_dense = max(1, int(keep_dense))
        self.max_bytes = int(float(max_message_mb) * 2**20)
        self.worker_timeout_s = float(worker_timeout_s)
        self.replay = ReplayGuard(replay_window_s)
        self.handshake_timeout_s = float(handshake_timeout_s)
        self.max_connections = int(max_connections or 2 * self.num_workers + 32)
        self.threads = 4 * self.num_workers + 8  # per worker: main, prefetch, heartbeat and a spare call
        self.rejects = _LogLimiter()
        self.cond = threading.Condition()
        self.resolved = False
        self.pending = {}  # (worker, token) -> Future of an open working set
        self.pushes = {}  # pass -> {worker: (keys, delta)}
        self.dense_pushes = {}  # pass -> {worker: state}
        self.dense_latest = None  # (pass, averaged state)
        self.prepared = None  # (pass, merged working set)
        self.done = set()
        self.last_seen = {}  # worker -> time.monotonic() of its last authenticated call
        self.listening = threading.Event()  # set once ``serve`` accepts connections
        if self.shard_id == 0:
            os.makedirs(self.dense_dir, exist_ok=True)
            with atomic_write(os.path.join(self.path, "layout.json"), "w") as handle:
                json.dump({"num_shards": self.num_shards}, handle)

    # ------------------------------------------------------------------ helpers
    def _lost_workers(self):
        now = time.monotonic()
        return sorted(w for w, seen in self.last_seen.items()
                      if w not in self.done and now - seen > self.worker_timeout_s)

    def _wait(self, predicate, what):
        """Block until ``predicate()``; a barrier can never be met once a worker is gone, so fail then."""
        with self.cond:
            while not predicate():
                lost = self._lost_workers()
                if lost:
                    raise ConnectionError(f"shard {self.shard_id}: worker(s) {lost} silent for more than "
                                          f"{self.worker_timeout_s:.0f} s while waiting for {what}")
                self.cond.wait(timeout=1.0)

    def _dense_files(self):
        found = {}
        for name in os.listdir(self.dense_dir) if os.path.isdir(self.dense_dir) else []:
            match = _DENSE_FILE.fullmatch(name)
            if match:
                found[int(match.group(1))] = os.path.join(self.dense_dir, name)
        return found

    def _own_keys(self, keys, op):
        keys = _as_keys(keys)
        if keys.size and not (shard_of(keys, self.num_shards) == self.shard_id).all():
            raise ValueError(f"shard {self.shard_id}: {op} with keys of another shard")
        return keys

    # ------------------------------------------------------------------ requests
    def status(self):
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
                                           f"{self.dense_dir} has no pass-{self.store.last_pass:05d}.npz")
                self.resolved = True
                self.cond.notify_all()
            return self.store.last_pass

    def wait_ready(self):
        self._wait(lambda: self.resolved, "worker 0 to resolve the store after (re)start")
        return self.store.last_pass

    def open(self, worker, token, keys):
        keys = self._own_keys(keys, "open")
        self._wait(lambda: self.resolved, "the store to be resolved")
        self.pending[(worker, token)] = self.store.prefetch(keys)
        return True

    def fetch(self, worker, token, after_pass):
        future = self.pending.pop((worker, token), None)
        if future is None:
            raise ValueError(f"shard {self.shard_id}: worker {worker} fetches working set {token}, never opened")
        ws = future.result()
        self._wait(lambda: self.store.last_pass >= after_pass, f"pass {after_pass} to commit")
        with self.store._lock:  # no commit may patch the rows while they are copied
            rows, base = ws.rows.copy(), ws.base_pass
            admitted = None if ws.admitted is None else ws.admitted.astype(np.uint8)
            self.store.discard(ws)
        if base < after_pass:
            raise RuntimeError(f"shard {self.shard_id}: working set reflects pass {base}, expected {after_pass}")
        return rows, admitted

    def push(self, pass_id, worker, keys, delta, dense=None, show=None, click=None):
        """A worker's deltas of pass ``pass_id`` (and, when the store counts, its shows and clicks per
        key: ``WorkingSet.count``)."""
        keys = self._own_keys(keys, "push")
        delta = np.asarray(delta, np.float32)
        if delta.shape != (keys.size, self.store.row_dim):
            raise ValueError(f"shard {self.shard_id}: push of {keys.size} keys with deltas of shape {delta.shape}, "
                             f"expected ({keys.size}, {self.store.row_dim})")
        if (show is None) != (click is None) or (show is not None and not show.shape == click.shape == (keys.size,)):
            raise ValueError(f"shard {self.shard_id}: push of {keys.size} keys needs both or neither of show and "
                             f"click, each of shape ({keys.size},)")
        if dense is not None and self.shard_id != 0:
            raise ValueError(f"shard {self.shard_id}: dense state goes to server 0")
        self._wait(lambda: self.store.last_pass >= pass_id - 1, f"pass {pass_id - 1} to commit")
        with self.cond:
            if pass_id != self.store.last_pass + 1:
                raise ValueError(f"shard {self.shard_id}: push of pass {pass_id}, expected {self.store.last_pass + 1}")
            self.pushes.setdefault(pass_id, {})[worker] = (keys, delta, show, click)
            if dense is not None:
                self.dense_pushes.setdefault(pass_id, {})[worker] = dense
            self.cond.notify_all()
        return True

    def prepare(self, pass_id, shrink=None):
        """Phase 1: wait for every worker's push, merge, write the dense average (server 0), log.
        A counting store gets the sum of the workers' shows and clicks and applies its admission
        and shrink rules to the merged working set (``shrink``: None = its schedule)."""
        self._wait(lambda: len(self.pushes.get(pass_id, {})) == self.num_workers, f"all pushes of pass {pass_id}")
        if self.shard_id == 0:
            self._wait(lambda: len(self.dense_pushes.get(pass_id, {})) == self.num_workers,
                       f"all dense states of pass {pass_id}")
        pushes = self.pushes[pass_id]
        union = sorted_unique(np.concatenate([pushes[w][0] for w in range(self.num_workers)]))
        ws = self.store.load_working_set(union, count=False)
        for worker in range(self.num_workers):  # worker order: the float sums are reproducible
            keys, delta, show, click = pushes[worker]
            at = ws.index(keys)
            ws.rows[at] += delta
            if show is not None and ws.pass_show is not None:  # a worker's keys are distinct: no repeats
                ws.pass_show[at] += show
                ws.pass_click[at] += click
                ws.counted = True
        if self.shard_id == 0:
            dense = self.dense_pushes[pass_id]
            average = _average_states([dense[w] for w in range(self.num_workers)])
            with atomic_write(os.path.join(self.dense_dir, f"pass-{pass_id:05d}.npz"), "wb") as handle:
                np.savez(handle, **{f"{g}/{n}": v for g, values in average.items() for n, v in values.items()})
            self.dense_latest = (pass_id, average)
        self.store.prepare_pass(ws, pass_id, shrink=shrink)
        self.prepared = (pass_id, ws)
        return True

    def finish(self, pass_id):
        """Phase 2: apply the prepared pass; wakes fetches and dense pulls waiting for it."""
        if self.prepared is None or self.prepared[0] != pass_id:
            raise RuntimeError(f"shard {self.shard_id}: finish({pass_id}) but "
                               f"{'no pass' if self.prepared is None else f'pass {self.prepared[0]}'} is prepared")
        self.store.finish_pass(self.prepared[1], pass_id)
        with self.cond:
            self.prepared = None
            self.pushes.pop(pass_id, None)
            self.dense_pushes.pop(pass_id, None)
            self.cond.notify_all()
        if self.shard_id == 0:
            files = self._dense_files()
            for old in sorted(p for p in files if p <= pass_id)[:-self.keep_dense]:
                os.remove(files[old])
        return True

    def pull_dense(self, pass_id):
        self._wait(lambda: self.store.last_pass >= pass_id, f"pass {pass_id} to commit")
        if self.dense_latest is not None and self.dense_latest[0] == pass_id:
            return self.dense_latest[1]
        path = self._dense_files().get(pass_id)
        if path is None:
            raise FileNotFoundError(f"{self.dense_dir} has no dense state of pass {pass_id}")
        return load_dense(path)

    def read_rows(self, keys):
        return self.store.read_rows(keys)

    def stats(self):
        return self.store.stats()

    def mark_done(self, worker):
        with self.cond:
            self.done.add(worker)
            self.cond.notify_all()
        return True

    # ------------------------------------------------------------------ the wire
    def _check(self, request):
        """The request's worker id and arguments, or :class:`BadFrame`."""
        op, worker, meta = request.op, request.worker, request.meta
        if op in _WORKER_OPS | _CHIEF_OPS and not 0 <= worker < self.num_workers:
            raise BadFrame(f"{op} from worker {worker}: this job has workers 0..{self.num_workers - 1}")
        if op in _CHIEF_OPS and worker != 0:
            raise BadFrame(f"{op} is worker 0's call, not worker {worker}'s")
        wanted, optional = _ARGS.get(op, {}), _OPTIONAL_ARGS.get(op, {})
        if not set(wanted) <= set(meta) <= set(wanted) | set(optional):
            raise BadFrame(f"{op} takes arguments {sorted(wanted)}"
                           f"{f' (optional: {sorted(optional)})' if optional else ''}, got {sorted(meta)}")
        for name, kind in {**wanted, **optional}.items():
            if name not in meta:
                continue
            value = meta[name]
            if type(value) is not kind or (kind is int and not -2**62 < value < 2**62):
                raise BadFrame(f"{op}: argument {name}={value!r} must be {kind.__name__}")
        if op == "prepare" and meta.get("shrink") not in (None, 0, 1):
            raise BadFrame(f"prepare: shrink={meta['shrink']} must be 0 or 1 (absent: the store's schedule)")
        arrays = request.arrays
        allowed = {"open": {"keys"}, "read_rows": {"keys"}, "push": {"keys", "delta"}}.get(op, set())
        extra = set(arrays) - allowed
        if op == "push":
            extra = {name for name in extra if not name.startswith("dense/") and name not in ("show", "click")}
            for name in {"show", "click"} & set(arrays):
                if arrays[name].dtype != np.float32 or arrays[name].ndim != 1:
                    raise BadFrame(f"push: {name} must be 1-d float32, got {arrays[name].dtype} {arrays[name].shape}")
        if extra or not allowed <= set(arrays):
            raise BadFrame(f"{op} takes arrays {sorted(allowed)}, got {sorted(arrays)}")
        if "keys" in allowed and (arrays["keys"].dtype != np.uint64 or arrays["keys"].ndim != 1):
            raise BadFrame(f"{op}: keys must be 1-d uint64, got {arrays['keys'].dtype} {arrays['keys'].shape}")
        if op == "push" and (arrays["delta"].dtype != np.float32 or arrays["delta"].ndim != 2):
            raise BadFrame(f"push: delta must be 2-d float32, got {arrays['delta'].dtype} {arrays['delta'].shape}")

    def _dispatch(self, request):
        """Run a checked request; returns the reply's ``(meta, arrays)``."""
        op, worker, meta, arrays = request.op, request.worker, request.meta, request.arrays
        if op == "status":
            return self.status(), {}
        if op == "resolve":
            return {"last_pass": self.resolve(meta["commit"])}, {}
        if op == "wait_ready":
            return {"last_pass": self.wait_ready()}, {}
        if op == "open":
            self.open(worker, meta["token"], arrays["keys"])
        elif op == "fetch":
            rows, admitted = self.fetch(worker, meta["token"], meta["after_pass"])
            return {}, {"rows": rows, **({} if admitted is None else {"admitted": admitted})}
        elif op == "push":
            dense = {k: v for k, v in arrays.items() if k.startswith("dense/")}
            self.push(meta["pass_id"], worker, arrays["keys"], arrays["delta"],
                      unflatten_state(dense) if dense else None, arrays.get("show"), arrays.get("click"))
        elif op == "prepare":
            self.prepare(meta["pass_id"], None if meta.get("shrink") is None else bool(meta["shrink"]))
        elif op == "finish":
            self.finish(meta["pass_id"])
        elif op == "pull_dense":
            return {}, flatten_state(self.pull_dense(meta["pass_id"]))
        elif op == "read_rows":
            return {}, {"rows": self.read_rows(arrays["keys"])}
        elif op == "stats":
            return json.loads(json.dumps(self.stats(), default=lambda v: v.item())), {}
        elif op == "done":
            self.mark_done(worker)
        return {}, {}

    def _reject(self, context, code, error):
        self.rejects.warning("shard %d: rejected a frame from %s: %s", self.shard_id, context.peer(), error)
        context.abort(code, str(error))

    def _serve_call(self, frame, context):
        try:
            request = decode(self.key, frame, self.max_bytes)
            self.replay.check(request.nonce, request.sent)
            self._check(request)
        except Unauthenticated as error:
            self._reject(context, grpc.StatusCode.UNAUTHENTICATED, error)
        except BadFrame as error:
            self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        if request.op in _WORKER_OPS | _CHIEF_OPS:  # ids checked in range: a stray id is never awaited
            with self.cond:
                self.last_seen[request.worker] = time.monotonic()
        try:
            meta, arrays = self._dispatch(request)
            return encode(self.key, request.op, meta, arrays, nonce=request.nonce, max_bytes=self.max_bytes)
        except BadFrame as error:
            failure = (grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except Exception as error:  # the worker re-raises it with this shard named
            log.exception("shard %d: %s from worker %d failed", self.shard_id, request.op, request.worker)
            failure = (grpc.StatusCode.FAILED_PRECONDITION, f"{type(error).__name__}: {error}")
        context.abort(*failure)

    def _intercept(self, continuation, details):
        """Authenticate a call from its metadata, before its message is read: an unauthenticated
        client cannot make the server buffer a large message (the reject handler streams its
        request and never reads it)."""
        token = dict(details.invocation_metadata or ()).get(AUTH_METADATA)
        problem = check_call_token(self.key, token, self.replay.window)
        if problem is None:
            return continuation(details)
        return grpc.stream_unary_rpc_method_handler(
            lambda _requests, context: self._reject(context, grpc.StatusCode.UNAUTHENTICATED, problem))

    def _grpc_server(self, host, port):
        options = [
            ("grpc.so_reuseport", 0),  # no other process may bind our port beside us
            ("grpc.max_receive_message_length", self.max_bytes + _FRAME_SLACK),
            ("grpc.max_send_message_length", self.max_bytes + _FRAME_SLACK),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", 600_000),
            # workers ping every 60 s while a call waits (RemoteStore): allow that, not more
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
        ]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.threads,
                                                        thread_name_prefix=f"shard{self.shard_id}"),
                             options=options, maximum_concurrent_rpcs=2 * self.threads,
                             interceptors=(_Interceptor(self),))
        handler = grpc.unary_unary_rpc_method_handler(self._serve_call)  # raw bytes in and out
        service, method = METHOD.strip("/").split("/")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
        try:
            bound = server.add_insecure_port(_target(host, port))
        except RuntimeError:
            bound = 0
        if bound != port:
            raise OSError(f"shard server {self.shard_id}: cannot listen on {_target(host, port)} (port in use, or "
                          "the host is not an address of this machine)")
        return server

    def serve(self, address, authkey):
        """Serve on ``(host, port)`` until all workers said ``done`` (then close the store), or fail
        when one is lost."""
        host, port = address
        self.key = check_key(authkey)
        if host in ("", "0.0.0.0", "::"):
            log.warning("shard server %d listens on every interface (%r)", self.shard_id, host)
        server = self._grpc_server(host, port)
        server.start()
        self.listening.set()
        print(f"shard server {self.shard_id}/{self.num_shards} on {_target(host, port)}, "
              f"last pass {self.store.last_pass}", flush=True)
        try:
            with self.cond:
                while len(self.done) < self.num_workers:
                    lost = self._lost_workers()
                    if lost:
                        raise ConnectionError(f"shard {self.shard_id}: worker(s) {lost} silent for more than "
                                              f"{self.worker_timeout_s:.0f} s before finishing")
                    self.cond.wait(timeout=1.0)
        finally:
            server.stop(grace=2.0).wait()  # the last replies (``done``) still go out
            self.close()
        print(f"shard server {self.shard_id}: all {self.num_workers} workers done, store closed", flush=True)

    def close(self):
        with self.cond:
            if self.prepared is None:
                self.store.close()


class _Interceptor(grpc.ServerInterceptor):
    def __init__(self, server):
        self.server = server

    def intercept_service(self, continuation, handler_call_details):
        return self.server._intercept(continuation, handler_call_details)


def load_dense(path):
    """A dense state file (``{"group/name": array}`` in ``.npz``, no pickles)."""
    with np.load(path, allow_pickle=False) as archive:
        state = {}
        for key in archive.files:
            group, _, name = key.partition("/")
            state.setdefault(group, {})[name] = archive[key]
    return state


# ---------------------------------------------------------------------------------------- worker
# store statistics a worker's ``RemoteStore.stats`` sums over the shards (admission and shrink)
_SUMMED_STATS = ("ssd_rows", "counter_rows", "admitted_rows", "evicted_rows", "dropped_counters", "pass_admitted",
                 "pass_pending", "pass_evicted", "pass_dropped")
class RemoteWorkingSet(WorkingSet):
    """A worker's HBM working set assembled from the shards; remembers the fetched rows."""

    def __init__(self, keys, rows, dim, shard_ids, admitted=None):
        super().__init__(keys, rows, dim, base_pass=None)
        self.shard_ids = shard_ids
        self.loaded = rows.copy()
        if admitted is not None:  # the servers count: ``count`` collects this worker's shows and clicks
            self._start_counting(admitted, None)


class _PendingSet:
    """Future-like: ``result()`` fetches the prefetched rows (after the previous pass committed)."""

    def __init__(self, store, keys, token):
        self.store, self.keys, self.token = store, keys, token

    def result(self):
        return self.store._fetch(self.keys, self.token)


class RemoteStore:
    """A worker's view of the shard servers, with the store API hierarchical_train uses."""

    def __init__(self, endpoints, worker_id, num_workers, dim, authkey=None, connect_timeout=120.0,
                 max_message_mb=256.0, call_timeout=120.0, wait_timeout=3600.0, heartbeat_s=5.0):
        self.endpoints = list(endpoints)
        self.num_shards = len(self.endpoints)
        self.worker_id, self.num_workers, self.dim = int(worker_id), int(num_workers), int(dim)
        self.key = check_key(authkey) if authkey is not None else authkey_from_env(self.endpoints)
        self.max_bytes = int(float(max_message_mb) * 2**20)
        self.call_timeout, self.wait_timeout = float(call_timeout), float(wait_timeout)
        options = [
            ("grpc.max_receive_message_length", self.max_bytes + _FRAME_SLACK),
            ("grpc.max_send_message_length", self.max_bytes + _FRAME_SLACK),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),  # a dead peer mid-wait
            ("grpc.enable_retries", 0),  # our own retries know which calls are safe to resend
        ]
        self.channels = [grpc.insecure_channel(_target(*parse_endpoint(e)), options=options) for e in self.endpoints]
        self.stubs = [channel.unary_unary(METHOD) for channel in self.channels]
        self._tokens = itertools.count()
        self._closed = threading.Event()
        try:
            self._wait_for_servers(float(connect_timeout))
            self._heartbeat = threading.Thread(target=self._beat, args=(float(heartbeat_s),), daemon=True,
                                               name=f"store-heartbeat-{self.worker_id}")
            self._heartbeat.start()
            self.last_pass = self._start()
        except BaseException:
            self._shutdown()
            raise

    def _wait_for_servers(self, timeout):
        deadline = time.monotonic() + timeout
        for shard, channel in enumerate(self.channels):
            try:  # gRPC reconnects with exponential backoff meanwhile (the servers may be starting)
                grpc.channel_ready_future(channel).result(timeout=max(0.0, deadline - time.monotonic()))
            except grpc.FutureTimeoutError:
                raise ConnectionError(f"worker {self.worker_id}: no shard server {shard} answered at "
                                      f"{self.endpoints[shard]} within {timeout:.0f} s (is it running and "
                                      "reachable? see its serverlog)") from None

    def _beat(self, every):
        while not self._closed.wait(every):
            for shard in range(self.num_shards):
                try:
                    self._call(shard, "alive")
                except Exception as error:  # a real failure surfaces in the training calls
                    log.debug("heartbeat to shard %d failed: %s", shard, error)

    def _call(self, shard, op, **kwargs):
        """One request to ``shard``; keyword arguments as the server's methods take them."""
        worker = kwargs.pop("worker", self.worker_id if op in _WORKER_OPS | _CHIEF_OPS else -1)
        arrays = {}
        for name in ("keys", "delta", "show", "click"):
            if name in kwargs:
                value = kwargs.pop(name)
                if value is not None:
                    arrays[name] = value
        if "keys" in arrays:
            arrays["keys"] = _as_keys(arrays["keys"])
        dense = kwargs.pop("dense", None)
        if dense is not None:
            arrays.update(flatten_state(dense))
        timeout = self.wait_timeout if op in _WAITING_OPS else self.call_timeout
        where = f"shard server {shard} at {self.endpoints[shard]}"
        deadline, backoff = time.monotonic() + timeout, 0.2
        while True:
            frame = encode(self.key, op, kwargs, arrays, worker=worker, max_bytes=self.max_bytes)
            nonce = _HEADER.unpack_from(frame)[3]
            try:
                reply = self.stubs[shard](frame, timeout=max(0.01, deadline - time.monotonic()),
                                          metadata=((AUTH_METADATA, call_token(self.key)),))
                break
            except grpc.RpcError as error:
                code = error.code()
                retry = code == grpc.StatusCode.RESOURCE_EXHAUSTED or (
                    code == grpc.StatusCode.UNAVAILABLE and op in _IDEMPOTENT_OPS)
                if retry and time.monotonic() + backoff < deadline:
                    time.sleep(backoff)
                    backoff = min(2 * backoff, 5.0)
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"{where}: {op} got no answer within {timeout:.0f} s") from None
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise ConnectionError(f"{where} went away during {op}: {error.details()}") from None
                raise RuntimeError(f"{where}: {op} failed ({code.name}): {error.details()}") from None
        try:
            message = decode(self.key, reply, self.max_bytes)
        except (BadFrame, Unauthenticated) as error:
            raise RuntimeError(f"{where}: bad reply to {op}: {error}") from None
        if message.nonce != nonce or message.op != op:
            raise RuntimeError(f"{where}: reply to {op} does not match the request (replayed or misrouted)")
        if op == "status" or op == "stats":
            return message.meta
        if op in ("resolve", "wait_ready"):
            return message.meta["last_pass"]
        if op == "fetch":
            return message.arrays["rows"], message.arrays.get("admitted")
        if op == "read_rows":
            return message.arrays["rows"]
        if op == "pull_dense":
            return unflatten_state(message.arrays)
        return True

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
        statuses = self._each("status")
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
        self._each("open", per_shard=lambda s: {"keys": unique[shard_ids == s]}, token=token)
        return _PendingSet(self, unique, token)

    def load_working_set(self, keys):
        return self.prefetch(keys).result()

    def _fetch(self, unique, token):
        shard_ids = shard_of(unique, self.num_shards)
        parts = self._each("fetch", token=token, after_pass=self.last_pass)
        rows = np.empty((unique.size, parts[0][0].shape[1]), dtype=np.float32)
        counting = all(admitted is not None for _, admitted in parts)
        admitted = np.ones(unique.size, dtype=bool) if counting else None
        for shard, (part, part_admitted) in enumerate(parts):
            rows[shard_ids == shard] = part
            if counting:
                admitted[shard_ids == shard] = part_admitted.astype(bool)
        ws = RemoteWorkingSet(unique, rows, self.dim, shard_ids, admitted)
        ws.base_pass = self.last_pass
        return ws

    def commit_pass(self, ws, pass_id, dense=None, shrink=None):
        """Push this worker's deltas (and dense state to server 0; and the pass's shows and clicks
        when the servers count); worker 0 runs the two-phase commit (``shrink``: None = the servers'
        schedule, True / False forces / skips one); returns the dense state averaged over the
        workers (None without ``dense``). Rows of pending keys (not admitted) are not pushed: their
        deltas are zero, whatever the trainer did to them."""
        if pass_id != self.last_pass + 1:
            raise ValueError(f"pass_id {pass_id} must follow the last committed pass {self.last_pass}")
        trainable = slice(None) if ws.admitted is None else ws.admitted
        if not np.isfinite(ws.rows[trainable]).all():
            raise FloatingPointError(f"worker {self.worker_id}: non-finite rows in pass {pass_id}; refusing to push")
        delta = ws.rows - ws.loaded
        if ws.admitted is not None:
            delta[~ws.admitted] = 0.0
        counts = ws.counted

        def arrays(s):
            mine = ws.shard_ids == s
            return {"keys": ws.keys[mine], "delta": delta[mine], "dense": dense if s == 0 else None,
                    "show": ws.pass_show[mine] if counts else None, "click": ws.pass_click[mine] if counts else None}

        self._each("push", per_shard=arrays, pass_id=pass_id)
        if self.worker_id == 0:
            for shard in range(self.num_shards):  # server 0 first: it writes the dense average
                self._call(shard, "prepare", pass_id=pass_id, **({} if shrink is None else {"shrink": int(bool(shrink))}))
            self._each("finish", pass_id=pass_id)
        average = self._call(0, "pull_dense", pass_id=pass_id) if dense is not None else None
        self.last_pass = pass_id
        return average

    def pull_dense(self, pass_id):
        return self._call(0, "pull_dense", pass_id=pass_id)

    def flush(self):
        """Nothing to wait for: a pass is committed on every shard when ``commit_pass`` returns."""

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
        summed = {k: sum(p.get(k, 0) for p in per_shard) for k in _SUMMED_STATS}
        return {"hit_rate": {k: v / total for k, v in counts.items()}, "key_counts": counts,
                "mem_bytes": sum(p["mem_bytes"] for p in per_shard), "last_pass": self.last_pass,
                **summed, "shards": per_shard}

    def _shutdown(self):
        self._closed.set()
        for channel in self.channels:
            channel.close()

    def close(self, done=True):
        """Tell the servers this worker is finished (they exit after all workers are) and disconnect."""
        try:
            if done:
                self._each("done")
        finally:
            self._shutdown()

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
    authkey = authkey_from_env(endpoints)  # before any work: no key, no server

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    server = ShardServer(path, endpoints.index(mine), len(endpoints), num_workers, dim, state_dim, **store_kwargs)
    server.serve(parse_endpoint(mine), authkey)
