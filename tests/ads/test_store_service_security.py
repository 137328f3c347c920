"""Attacks on the hierarchical store service on loopback (store_service's threat model): garbage
before authentication, silent connections, a forged pickle, a wrong key, oversize and truncated
frames, replays, stray and impersonated calls. After each, a legitimate 2-server / 2-worker pass
must still commit the right rows and dense average, and the servers must stop cleanly once (and
only once) both workers said done."""
import ast
import os
import pickle
import socket
import threading
import time
from contextlib import contextmanager
from multiprocessing.connection import Client

import grpc
import numpy as np
import pytest

from paddle_suite.ads import store_service as ss
from paddle_suite.ads.launcher import free_ports
from paddle_suite.ads.store import init_rows, shard_of

KEY = b"attack-test-key-0123456789abcdef"
DIM = STATE = 2
SEED = 3
KEYS = np.arange(1, 41, dtype=np.uint64) * np.uint64(1000003)
MINE = [KEYS[:30], KEYS[10:]]  # KEYS[10:30] trained by both workers
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "paddle_suite")


@contextmanager
def servers(tmp_path, workers=2, **options):
    """Two shard servers serving in threads of this process; yields their endpoints."""
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(2)]
    shards = [ss.ShardServer(tmp_path / "store", s, 2, workers, DIM, STATE, mem_cap_mb=1.0, init_std=0.1, seed=SEED,
                             **options) for s in range(2)]
    errors = []

    def serve(server, endpoint):
        try:
            server.serve(ss.parse_endpoint(endpoint), KEY)
        except Exception as error:  # reported by the test
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(s, e), daemon=True) for s, e in zip(shards, endpoints)]
    for thread in threads:
        thread.start()
    for server in shards:
        assert server.listening.wait(timeout=30) or errors, "a shard server did not start"
    assert not errors, errors
    try:
        yield endpoints, shards, threads, errors
    finally:
        for server in shards:  # a failed test must not leave servers running
            for worker in range(workers):
                server.mark_done(worker)
        for thread in threads:
            thread.join(timeout=30)


def legitimate_pass(endpoints, shards, threads, errors):
    """Both workers train pass 0 and say done: rows = initial + both deltas, dense = mean; the
    servers then stop by themselves without error."""
    rng = np.random.default_rng(1)
    deltas = [rng.normal(size=(m.size, DIM + STATE)).astype(np.float32) for m in MINE]
    results, failures = [None, None], []
    committed = threading.Barrier(2, timeout=60)  # worker 1's commit returns before worker 0 finishes the shards

    def work(w):
        try:
            store = ss.RemoteStore(endpoints, w, 2, DIM, authkey=KEY, connect_timeout=20, call_timeout=20,
                                   wait_timeout=30)
            ws = store.load_working_set(MINE[w])
            ws.rows += deltas[w]
            average = store.commit_pass(ws, 0, dense={"model": {"w": np.full(3, float(w), np.float32)},
                                                      "optimizer": {"step": np.array([7 + w], np.int64)}})
            committed.wait()
            results[w] = (store.read_rows(KEYS), average)
            store.close()
        except Exception as error:
            failures.append(error)

    workers = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in workers), "a legitimate worker hung"
    assert not failures, failures
    expected = init_rows(KEYS, DIM, STATE, 0.1, SEED)
    for w in range(2):
        np.add.at(expected, np.searchsorted(KEYS, MINE[w]), deltas[w])
    for rows, average in results:
        np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(average["model"]["w"], np.full(3, 0.5, np.float32))
        assert average["optimizer"]["step"].tolist() == [7]  # non-float state: worker 0's
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a server did not stop after both workers were done"
    assert not errors, errors
    assert all(s.done == {0, 1} for s in shards)


def raw_call(endpoint, frame, key=KEY, timeout=10.0):
    """Send bytes to the store method as any gRPC client could, with the call token of ``key``
    (None: without); returns (status code, details)."""
    metadata = ((ss.AUTH_METADATA, ss.call_token(key)),) if key else None
    with grpc.insecure_channel(endpoint) as channel:
        try:
            channel.unary_unary(ss.METHOD)(frame, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def closed_within(sock, seconds):
    """Whether the peer closes ``sock`` within ``seconds`` (whatever it sends first)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


# ------------------------------------------------------------------------------ attacks
def test_garbage_before_authentication(tmp_path):
    with servers(tmp_path) as running:
        for endpoint in running[0]:
            for junk in (os.urandom(4096), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512), b"\x00" * 64):
                with socket.create_connection(ss.parse_endpoint(endpoint), timeout=5) as sock:
                    sock.sendall(junk)
        legitimate_pass(*running)


def test_silent_connections_block_nobody_and_are_dropped(tmp_path):
    with servers(tmp_path, handshake_timeout_s=1.0) as running:
        silent = [socket.create_connection(ss.parse_endpoint(e), timeout=10) for e in running[0] for _ in range(3)]
        try:
            legitimate_pass(*running)  # while they hang on
            for sock in silent:  # the handshake timeout closes them
                assert closed_within(sock, 10.0)
        finally:
            for sock in silent:
                sock.close()


def test_a_connection_flood_is_bounded(tmp_path):
    """Past max_connections the server closes new connections at once; the silent ones it kept
    go after the handshake timeout, and the workers' reconnect backoff then gets them in."""
    with servers(tmp_path, max_connections=4, handshake_timeout_s=3.0) as running:
        flood = [socket.create_connection(ss.parse_endpoint(running[0][0]), timeout=10) for _ in range(12)]
        try:
            refused = sum(closed_within(sock, 0.1) for sock in flood)  # well before the 3 s handshake timeout
            assert refused >= 8, f"only {refused} of 12 connections over the bound of 4 were closed"
            legitimate_pass(*running)
        finally:
            for sock in flood:
                sock.close()


def test_forged_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    payload = pickle.dumps(("status", {"worker": 0, "x": Exploit()}))
    with servers(tmp_path, handshake_timeout_s=1.0) as running:
        endpoint = running[0][0]
        # the old transport's client with the old fleetrun-derived key: the handshake fails
        derived = __import__("hashlib").sha256(("paddle_suite-store:" + ",".join(running[0])).encode()).digest()
        with pytest.raises(Exception):
            conn = Client(ss.parse_endpoint(endpoint), authkey=derived)
            conn.send(Exploit())
        assert raw_call(endpoint, payload, key=None)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert raw_call(endpoint, payload)[0] == grpc.StatusCode.UNAUTHENTICATED  # frame not signed
        # even signed with the job's key, a pickle is just bytes that do not parse
        signed = payload + ss._mac(KEY, payload)
        assert raw_call(endpoint, signed)[0] == grpc.StatusCode.INVALID_ARGUMENT
        # a pickle as a uint8 array of a valid frame: refused (status takes no arrays), never loaded
        frame = ss.encode(KEY, "status", {}, {"p": np.frombuffer(payload, np.uint8)})
        assert raw_call(endpoint, frame)[0] == grpc.StatusCode.INVALID_ARGUMENT
        legitimate_pass(*running)
    assert not marker.exists()


def test_no_pickle_or_raw_sockets_in_the_network_code():
    for name in ("store_service.py", "launcher.py"):
        tree = ast.parse(open(os.path.join(PACKAGE, "ads", name)).read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "marshal", "shelve", "multiprocessing.connection"}, (name, imported)
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
        assert not [c.func.attr for c in calls if c.func.attr in ("recv", "recv_bytes", "accept")], name
        for call in calls:
            if call.func.attr == "load":  # np.load of dense files: never with pickles
                assert any(k.arg == "allow_pickle" and k.value.value is False for k in call.keywords), name


def test_wrong_key_is_refused_with_a_clear_error(tmp_path):
    with servers(tmp_path) as running:
        with pytest.raises(RuntimeError, match="UNAUTHENTICATED.*key"):
            ss.RemoteStore(running[0], 0, 2, DIM, authkey=b"not-the-key-0123456789", connect_timeout=10)
        wrong = b"not-the-key-0123456789"
        frame = ss.encode(wrong, "done", worker=0)
        for endpoint in running[0]:  # an impersonated "done" cannot stop the job
            for key in (wrong, KEY, None):  # call token of the wrong key, of the right one, none
                code, details = raw_call(endpoint, frame, key=key)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (key, code, details)
        assert all(s.done == set() for s in running[1])
        legitimate_pass(*running)


def test_oversize_frames_are_refused(tmp_path):
    with servers(tmp_path, max_message_mb=1.0) as running:
        endpoint = running[0][0]
        # without a call token it is refused before it is read; with one, past the transport's limit
        assert raw_call(endpoint, os.urandom(4 * 2**20), key=None)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert raw_call(endpoint, os.urandom(4 * 2**20))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a signed frame whose descriptor claims 2^40 keys: refused before any allocation
        frame = bytearray(ss.encode(KEY, "read_rows", {}, {"keys": np.zeros(1, np.uint64)})[:-ss._MAC_BYTES])
        at = frame.rindex(ss._DIM.pack(1))
        frame[at:at + 8] = ss._DIM.pack(2**40)
        body = bytes(frame)
        code, details = raw_call(endpoint, body + ss._mac(KEY, body))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_message_mb" in details
        # the worker refuses to send more than the limit, naming the setting
        with pytest.raises(ValueError, match="Store.max_message_mb"):
            ss.encode(KEY, "read_rows", {}, {"keys": np.zeros(2**18, np.uint64)}, max_bytes=2**20)
        legitimate_pass(*running)


def test_truncated_frames_are_refused(tmp_path):
    frame = ss.encode(KEY, "read_rows", {}, {"keys": KEYS})
    with servers(tmp_path) as running:
        endpoint = running[0][0]
        assert raw_call(endpoint, frame[:40])[0] == grpc.StatusCode.INVALID_ARGUMENT  # shorter than a header
        assert raw_call(endpoint, frame[:-9])[0] == grpc.StatusCode.UNAUTHENTICATED  # cut: signature fails
        for cut in (9, 200, len(frame) - ss._HEADER.size - ss._MAC_BYTES - 1):  # cut, then signed again
            body = frame[:-ss._MAC_BYTES - cut]
            code, details = raw_call(endpoint, body + ss._mac(KEY, body))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (cut, code, details)
        legitimate_pass(*running)


def test_replayed_frames_are_refused(tmp_path):
    with servers(tmp_path) as running:
        endpoint = running[0][0]
        frame = ss.encode(KEY, "status")
        assert raw_call(endpoint, frame)[0] == grpc.StatusCode.OK
        code, details = raw_call(endpoint, frame)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "replayed" in details
        old = ss.encode(KEY, "status")
        body = bytearray(old[:-ss._MAC_BYTES])  # a frame from 10 minutes ago
        fields = list(ss._HEADER.unpack_from(body))
        fields[4] -= 600.0
        body[:ss._HEADER.size] = ss._HEADER.pack(*fields)
        code, details = raw_call(endpoint, bytes(body) + ss._mac(KEY, bytes(body)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "clock" in details
        with grpc.insecure_channel(endpoint) as channel:  # an old call token
            with pytest.raises(grpc.RpcError, match="clock"):
                channel.unary_unary(ss.METHOD)(ss.encode(KEY, "status"), timeout=10, metadata=(
                    (ss.AUTH_METADATA, ss.call_token(KEY, now=time.time() - 600)),))
        legitimate_pass(*running)


def test_stray_authenticated_calls_never_stop_the_servers(tmp_path):
    with servers(tmp_path, worker_timeout_s=2.0) as running:
        for endpoint in running[0]:
            # status with worker ids (even out of range), then gone: nobody waits for them
            for worker in (0, 7, -1):
                assert raw_call(endpoint, ss.encode(KEY, "status", worker=worker))[0] == grpc.StatusCode.OK
            # worker calls from ids outside the job, and chief calls from a non-chief, are refused
            for frame in (ss.encode(KEY, "done", worker=7), ss.encode(KEY, "alive", worker=2),
                          ss.encode(KEY, "finish", {"pass_id": 0}, worker=1),
                          ss.encode(KEY, "push", {"pass_id": 0}, {"keys": np.zeros(1, np.uint64)}, worker=0)):
                assert raw_call(endpoint, frame)[0] == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(2.5)  # longer than worker_timeout_s: a lost worker would have failed the servers
        assert all(t.is_alive() for t in running[2]) and not running[3]
        assert all(s.done == set() for s in running[1])
        legitimate_pass(*running)


def test_a_silent_worker_fails_the_servers_instead_of_hanging_them(tmp_path):
    with servers(tmp_path, worker_timeout_s=1.0) as (endpoints, shards, threads, errors):
        for endpoint in endpoints:
            assert raw_call(endpoint, ss.encode(KEY, "alive", worker=1))[0] == grpc.StatusCode.OK
        for thread in threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in threads)
        assert len(errors) == 2 and all("worker(s) [1] silent" in str(e) for e in errors), errors


def test_bad_arguments_get_an_error_reply_not_a_crash(tmp_path):
    with servers(tmp_path) as running:
        endpoint = running[0][0]
        for frame in (ss.encode(KEY, "fetch", {"token": "x", "after_pass": 0}, worker=0),
                      ss.encode(KEY, "prepare", {"pass_id": 0, "extra": 1}, worker=0),
                      ss.encode(KEY, "read_rows", {}, {"keys": np.zeros((2, 2), np.uint64)}),
                      ss.encode(KEY, "open", {"token": 1}, {"keys": np.zeros(3, np.float32)}, worker=0)):
            assert raw_call(endpoint, frame)[0] == grpc.StatusCode.INVALID_ARGUMENT
        # well-formed but wrong for the state of the job: an error reply naming the shard
        foreign = KEYS[shard_of(KEYS, 2) == 1][:2]
        code, details = raw_call(endpoint, ss.encode(KEY, "open", {"token": 1}, {"keys": foreign}, worker=0))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "another shard" in details
        code, details = raw_call(endpoint, ss.encode(KEY, "finish", {"pass_id": 3}, worker=0))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no pass is prepared" in details
        legitimate_pass(*running)


# ------------------------------------------------------------------------------ workers and keys
def test_workers_fail_clearly_when_no_server_answers(tmp_path):
    port = free_ports(1)[0]
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port} within 1 s"):
        ss.RemoteStore([f"127.0.0.1:{port}"], 0, 1, DIM, authkey=KEY, connect_timeout=1.0)
    # a listener that accepts and never speaks (a stalled handshake): the same clear failure
    with socket.create_server(("127.0.0.1", 0)) as stalled:
        endpoint = f"127.0.0.1:{stalled.getsockname()[1]}"
        with pytest.raises(ConnectionError, match="within 1 s"):
            ss.RemoteStore([endpoint], 0, 1, DIM, authkey=KEY, connect_timeout=1.0)
    assert time.monotonic() - started < 15


def test_no_key_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv(ss.KEY_ENV, raising=False)
    monkeypatch.delenv(ss.KEYFILE_ENV, raising=False)
    with pytest.raises(RuntimeError, match="PADDLE_SUITE_STORE_AUTHKEY=.*token_hex"):
        ss.authkey_from_env(["127.0.0.1:6000"])
    with pytest.raises(RuntimeError, match="these hosts"):
        ss.authkey_from_env(["10.0.0.1:6000", "10.0.0.2:6000"])
    with pytest.raises(RuntimeError, match="need a shared secret"):
        ss.RemoteStore(["127.0.0.1:6000"], 0, 1, DIM)
    monkeypatch.setenv(ss.KEY_ENV, "short")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ss.authkey_from_env(["127.0.0.1:6000"])
    monkeypatch.setenv(ss.KEY_ENV, "a" * 32)
    assert ss.authkey_from_env(["127.0.0.1:6000"]) == b"a" * 32


def test_key_file_must_be_private(tmp_path, monkeypatch):
    monkeypatch.delenv(ss.KEY_ENV, raising=False)
    keyfile = tmp_path / "store.key"
    keyfile.write_text("f" * 64 + "\n")
    monkeypatch.setenv(ss.KEYFILE_ENV, str(keyfile))
    keyfile.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        ss.authkey_from_env(["127.0.0.1:6000"])
    keyfile.chmod(0o600)
    assert ss.authkey_from_env(["127.0.0.1:6000"]) == b"f" * 64


def test_dense_files_are_npz_without_pickles(tmp_path):
    with servers(tmp_path) as running:
        legitimate_pass(*running)
    dense_dir = tmp_path / "store" / "dense"
    assert sorted(os.listdir(dense_dir)) == ["pass-00000.npz"]
    with np.load(dense_dir / "pass-00000.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["model/w", "optimizer/step"]
    assert ss.load_dense(dense_dir / "pass-00000.npz")["model"]["w"].tolist() == [0.5] * 3
