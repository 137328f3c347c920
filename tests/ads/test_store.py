"""Hierarchical store: tiers, eviction/write-back key by key, prefetch ordering, crash consistency."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from paddle_suite.ads.store import HierarchicalStore, ShardedStore, WorkingSet, init_rows, shard_of, unique_inverse

# The deterministic training stand-in, shared (as source) with the crashing child processes.
# Each update depends on the row's current value, so a lost or stale update changes every later value.
PASSES_SRC = textwrap.dedent('''
    import numpy as np

    UNIVERSE = np.arange(1, 3001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # spread-out keys

    def pass_keys(pass_id, size=400):
        if pass_id % 5 == 4:  # a tiny pass: the next pass then finds its hot keys in MEM, not HBM
            return UNIVERSE[:5]
        rng = np.random.default_rng(1000 + pass_id)
        ranks = np.minimum(rng.zipf(1.3, size), UNIVERSE.size) - 1  # hot head, long tail: exercises LFU
        return np.concatenate([UNIVERSE[ranks], rng.choice(UNIVERSE, size // 4)])

    def train(rows, keys, pass_id, dim):
        """In-place update of a working set's rows: embedding and 'optimizer state' both change."""
        bump = ((keys % np.uint64(97)).astype(np.float32) / 97.0 + pass_id)[:, None]
        rows[:, :dim] = rows[:, :dim] * np.float32(0.9) + np.float32(0.01) * bump
        rows[:, dim:] += np.float32(1.0)
''')
exec(PASSES_SRC)  # defines UNIVERSE, pass_keys, train

DIM, STATE = 3, 1


def reference_after(num_passes, seed=0):
    """Rows of every UNIVERSE key after ``num_passes`` passes, computed without any store."""
    table = init_rows(UNIVERSE, DIM, STATE, 0.01, seed)
    order = np.argsort(UNIVERSE)
    for p in range(num_passes):
        keys = np.unique(pass_keys(p))
        at = order[np.searchsorted(UNIVERSE[order], keys)]
        rows = table[at]
        train(rows, keys, p, DIM)
        table[at] = rows
    return table


def test_init_is_deterministic_and_normal():
    keys = np.arange(20000, dtype=np.uint64) * np.uint64(7919)
    a = init_rows(keys, 8, 2, 0.05, seed=3, state_init=0.1)
    b = init_rows(keys[::-1], 8, 2, 0.05, seed=3, state_init=0.1)[::-1]
    assert np.array_equal(a, b)
    assert not np.allclose(a[:, :8], init_rows(keys, 8, 2, 0.05, seed=4)[:, :8])
    assert abs(a[:, :8].mean()) < 0.002 and abs(a[:, :8].std() - 0.05) < 0.002
    assert np.all(a[:, 8:] == np.float32(0.1))
    assert abs(np.corrcoef(a[:, 0], a[:, 1])[0, 1]) < 0.03


def test_unique_inverse_matches_numpy():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2 ** 64, 3000, dtype=np.uint64)[rng.integers(0, 3000, 9000)]
    distinct, inverse = unique_inverse(values)
    expected, expected_inverse = np.unique(values, return_inverse=True)
    assert np.array_equal(distinct, expected) and np.array_equal(inverse, expected_inverse.ravel())
    assert unique_inverse(np.zeros(0, np.uint64))[1].size == 0
    distinct32, inverse32 = unique_inverse(values, dtype=np.int32)  # a pass's ranking: half the bytes
    assert inverse32.dtype == np.int32 and np.array_equal(distinct32, expected)
    assert np.array_equal(inverse32, expected_inverse.ravel())


def test_working_set_index_matches_searchsorted():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2 ** 64, 5000, dtype=np.uint64))
    ws = WorkingSet(keys, np.zeros((keys.size, 2), np.float32), 1, -1)
    own = np.concatenate([keys[rng.integers(0, keys.size, 7000)], keys])  # every key: a pass's own set
    assert np.array_equal(ws.index(own), np.searchsorted(keys, own))
    subset = keys[rng.integers(0, keys.size, (300, 26))]  # some keys absent from the queries
    assert np.array_equal(ws.index(subset), np.searchsorted(keys, subset))
    assert ws.index(np.zeros((0, 26), np.uint64)).shape == (0, 26)
    with pytest.raises(KeyError, match="2 key"):
        ws.index(np.concatenate([subset[0], [np.uint64(1), np.uint64(3)]]))


def test_eviction_and_writeback_lose_no_update(tmp_path, monkeypatch):
    import paddle_suite.ads.store as store_module

    monkeypatch.setattr(store_module, "_TXN_ROWS", 50)  # exercise multi-transaction writes
    monkeypatch.setattr(store_module, "_LOG_CHUNK_BYTES", 2000)
    # capacity 60 rows for a 3000-key universe; tiny log cap forces checkpoints too
    cap_mb = 60 * store_row_bytes(DIM + STATE) / 2 ** 20
    store = HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=cap_mb, log_cap_mb=0.05)
    assert store.mem.capacity == 60
    table = reference_after(0)
    order = np.argsort(UNIVERSE)
    ws = store.load_working_set(pass_keys(0))
    for p in range(25):
        at = order[np.searchsorted(UNIVERSE[order], ws.keys)]
        np.testing.assert_array_equal(ws.rows, table[at])  # every tier served the latest value
        train(ws.rows, ws.keys, p, DIM)
        table[at] = ws.rows
        # the trainer's order: the next pass's set is loaded before this pass commits. Its load
        # raises its rows' scores after this commit's victims were written ahead (planned before
        # it), so the commit evicts some other dirty rows and writes them back itself
        upcoming = store.load_working_set(pass_keys(p + 1))
        store.commit_pass(ws, p)
        assert store.last_pass == p
        assert store.mem.size <= store.mem.capacity
        np.testing.assert_array_equal(store.read_rows(UNIVERSE), table)  # key by key, all keys
        ws = upcoming
    store.discard(ws)
    stats = store.stats()
    assert stats["evictions"] > 0 and stats["checkpoints"] > 0
    assert stats["writebacks"] > 0 and stats["written_ahead"] > 0  # both ways a dirty victim reaches the SSD table
    assert stats["mem_bytes"] <= 60 * store.mem_bytes_per_row
    assert stats["hit_rate"]["mem"] > 0 and stats["hit_rate"]["ssd"] > 0 and stats["hit_rate"]["hbm"] > 0
    assert abs(sum(stats["hit_rate"].values()) - 1) < 1e-9
    store.close()
    np.testing.assert_array_equal(table, reference_after(25))
    with HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1) as reopened:
        assert reopened.last_pass == 24
        np.testing.assert_array_equal(reopened.read_rows(UNIVERSE), table)


def test_loads_read_rows_whose_ssd_write_is_still_in_flight(tmp_path):
    """A commit returns before its evicted (dirty MEM victims) and overflowing rows reach the SSD
    table: the next load must still see them (held back here until the load is checked). Loads
    come in the trainer's order (the next pass's set before this pass commits), which leaves
    the commits dirty victims that were not written ahead (see the test above)."""
    import threading

    store = HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=60 * store_row_bytes(DIM + STATE) / 2 ** 20)
    release = threading.Semaphore(0)  # one token per commit's writes
    write = store._write_back

    def held_write(*parts):
        assert release.acquire(timeout=60)
        write(*parts)

    store._write_back = held_write
    table = reference_after(0)
    order = np.argsort(UNIVERSE)
    pending_rows = pending_victims = 0
    ws = store.load_working_set(pass_keys(0))
    for p in range(12):
        at = order[np.searchsorted(UNIVERSE[order], ws.keys)]
        np.testing.assert_array_equal(ws.rows, table[at])  # read while the previous commit's writes were held
        train(ws.rows, ws.keys, p, DIM)
        upcoming = store.load_working_set(pass_keys(p + 1))  # after the last commit's MEM update
        pending_rows += sum(part[0].size for part in store._in_flight or ())
        victims = store._in_flight[0][0] if store._in_flight is not None else UNIVERSE[:0]
        pending_victims += victims.size
        if victims.size:  # an evaluation's load of exactly the rows MEM gave up, still on their way
            probe = store.load_working_set(victims, count=False)
            np.testing.assert_array_equal(probe.rows, table[order[np.searchsorted(UNIVERSE[order], probe.keys)]])
            store.discard(probe)
        table[at] = ws.rows
        if p:
            release.release()  # lets the previous commit's writes land; the commit below waits for them
        store.commit_pass(ws, p)
        ws = upcoming
    store.discard(ws)
    assert pending_rows > 1000  # the loads above really read rows the SSD table did not have yet
    assert pending_victims > 0  # among them rows that MEM had already given up
    release.release()
    np.testing.assert_array_equal(store.read_rows(UNIVERSE), table)
    store.close()
    with HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1) as reopened:
        np.testing.assert_array_equal(reopened.read_rows(UNIVERSE), table)


def test_lfu_keeps_hot_rows(tmp_path):
    store = HierarchicalStore(tmp_path / "s", 2, 0, mem_cap_mb=100 * store_row_bytes(2) / 2 ** 20)
    hot = np.arange(50, dtype=np.uint64)
    for p in range(10):
        cold = np.arange(1000 + 100 * p, 1000 + 100 * p + 80, dtype=np.uint64)
        ws = store.load_working_set(np.concatenate([hot, cold]))
        store.commit_pass(ws, p)
    _, hit = store.mem.lookup(hot)
    assert hit.all()  # used every pass: never evicted by one-off keys
    store.close()


def store_row_bytes(row_dim):
    from paddle_suite.ads.store import _MemCache

    return _MemCache.bytes_per_row(row_dim)


def test_prefetch_sees_previous_pass_and_commit_rules(tmp_path):
    store = HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1)
    ws0 = store.load_working_set(pass_keys(0))
    future = store.prefetch(pass_keys(1))
    ws1_early = future.result()  # read before pass 0 commits: overlap is stale until the commit
    train(ws0.rows, ws0.keys, 0, DIM)
    late = store.prefetch(pass_keys(1))  # may run before or after the commit below
    store.commit_pass(ws0, 0)
    ws1_late = late.result()
    expected = reference_after(1)
    order = np.argsort(UNIVERSE)
    for ws in (ws1_early, ws1_late):
        assert ws.base_pass == 0
        at = order[np.searchsorted(UNIVERSE[order], ws.keys)]
        np.testing.assert_array_equal(ws.rows, expected[at])
    assert np.intersect1d(ws0.keys, ws1_early.keys).size > 0
    with pytest.raises(ValueError, match="already committed"):
        store.commit_pass(ws0, 1)
    with pytest.raises(ValueError, match="greater than the last committed pass"):
        store.commit_pass(ws1_late, 0)
    store.discard(ws1_early)
    store.commit_pass(ws1_late, 1)
    with pytest.raises(KeyError, match="not in this working set"):
        ws1_late.index(np.array([12345], dtype=np.uint64))
    keys = pass_keys(1)
    assert np.array_equal(ws1_late.keys[ws1_late.index(keys)], keys)
    some = keys[[5, 1, 5, 3]]  # unsorted, repeated
    np.testing.assert_array_equal(store.read_rows(some), ws1_late.rows[ws1_late.index(some)])
    store.close()


def test_reopen_checks_settings(tmp_path):
    HierarchicalStore(tmp_path / "s", 4, 1).close()
    with pytest.raises(ValueError, match="different settings"):
        HierarchicalStore(tmp_path / "s", 8, 1)


def test_shard_of_is_balanced_and_stable():
    keys = np.arange(100000, dtype=np.uint64)  # structured keys: the hash must still balance them
    shards = shard_of(keys, 4)
    counts = np.bincount(shards, minlength=4)
    assert counts.min() > 0.24 * keys.size and counts.max() < 0.26 * keys.size
    assert np.array_equal(shards, shard_of(keys.view(np.int64), 4))


def test_sharded_store_matches_reference(tmp_path):
    with ShardedStore(tmp_path / "sh", 2, DIM, STATE, mem_cap_mb=2 * 40 * 45 / 2 ** 20) as store:
        for p in range(6):
            ws = store.load_working_set(pass_keys(p))
            train(ws.rows, ws.keys, p, DIM)
            store.commit_pass(ws, p)
        np.testing.assert_array_equal(store.read_rows(UNIVERSE), reference_after(6))
        assert store.stats()["evictions"] > 0
    with ShardedStore(tmp_path / "sh", 2, DIM, STATE) as store:
        assert store.last_pass == 5
        np.testing.assert_array_equal(store.read_rows(UNIVERSE), reference_after(6))


CHILD = PASSES_SRC + textwrap.dedent('''
    import sys
    import paddle_suite.ads.store as store_module
    from paddle_suite.ads.store import HierarchicalStore, ShardedStore
    store_module._TXN_ROWS, store_module._LOG_CHUNK_BYTES = 50, 2000  # many small transactions per commit
    path, mode, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode in ("single", "writing"):
        store = HierarchicalStore(path, {dim}, {state}, mem_cap_mb=60 * 45 / 2 ** 20, log_cap_mb=0.05)
    else:
        store = ShardedStore(path, 2, {dim}, {state}, mem_cap_mb=80 * 45 / 2 ** 20, log_cap_mb=0.05)
    p = store.last_pass + 1
    while True:
        ws = store.load_working_set(pass_keys(p))
        train(ws.rows, ws.keys, p, {dim})
        if p == stop_after and mode == "writing":  # killed while the commit's rows are half written back
            def half_then_hang(*parts):  # half of the dirty victims and half of the overflow rows
                for keys, rows, take in parts:
                    store._put_rows(keys, rows, take[: take.size // 2])
                print("MIDPASS", p, [part[2].size for part in parts], flush=True)
                sys.stdin.read()
            store._write_back = half_then_hang
        elif p == stop_after:  # killed here, mid-pass (or inside a half-done two-phase commit)
            if mode != "single":
                ws.sync_parts()
            if mode == "prepare_one":
                store.shards[0].prepare_pass(ws.parts[0], p)
            elif mode == "finish_one":
                for shard, part in zip(store.shards, ws.parts):
                    shard.prepare_pass(part, p)
                store.shards[0].finish_pass(ws.parts[0], p)
            print("MIDPASS", p, flush=True)
            sys.stdin.read()  # wait for SIGKILL
        store.commit_pass(ws, p)
        # one write call, so a kill cannot cut the line (print makes one write per piece when
        # stdout is unbuffered, as under PYTHONUNBUFFERED=1)
        sys.stdout.write(f"COMMITTED {{p}}\\n")
        sys.stdout.flush()
        p += 1
''').format(dim=DIM, state=STATE)


def run_child(path, mode, stop_after, kill_after_s=None):
    """Start the child; SIGKILL it at MIDPASS, or ``kill_after_s`` after its first commit.

    Returns the last pass the child reported as committed (-1 if none)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode, str(stop_after)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed = -1
    try:
        for line in proc.stdout:
            if line.startswith("COMMITTED"):
                committed = int(line.split()[1])
                if kill_after_s is not None:
                    time.sleep(kill_after_s)  # lands anywhere in load / train / commit / checkpoint
                    break
            if line.startswith("MIDPASS"):
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    # read the rest through the same stream: communicate() would skip what it has buffered already
    rest, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    for done in re.findall(r"^COMMITTED (\d+)\n", rest, flags=re.MULTILINE):
        committed = int(done)
    assert "Traceback" not in err, err
    return committed


def test_crash_mid_pass_restores_last_committed_pass(tmp_path):
    path = tmp_path / "s"
    assert run_child(path, "single", stop_after=7) == 6
    with HierarchicalStore(path, DIM, STATE, mem_cap_mb=1) as store:
        assert store.last_pass == 6
        np.testing.assert_array_equal(store.read_rows(UNIVERSE), reference_after(7))
    # resume after the crash, then crash again at a random moment (inside load, train or commit)
    committed = run_child(path, "single", stop_after=10 ** 6, kill_after_s=0.7)
    assert committed >= 7
    with HierarchicalStore(path, DIM, STATE, mem_cap_mb=1) as store:
        assert store.last_pass >= committed
        assert store.last_pass <= committed + 1  # the kill may land after a commit, before its print
        np.testing.assert_array_equal(store.read_rows(UNIVERSE), reference_after(store.last_pass + 1))


def test_crash_while_a_commit_is_written_back(tmp_path):
    """Killed after pass 5's commit point, half of its MEM-overflow rows and of the dirty rows it
    evicted from MEM in the SSD table: the reopened store has pass 5, every row exact (the redo log
    completes the write-back)."""
    path = tmp_path / "s"
    assert run_child(path, "writing", stop_after=5) in (4, 5)  # the kill may beat the COMMITTED print
    with HierarchicalStore(path, DIM, STATE, mem_cap_mb=1) as store:
        assert store.last_pass == 5
        np.testing.assert_array_equal(store.read_rows(UNIVERSE), reference_after(6))


@pytest.mark.parametrize("mode, expect_last", [("prepare_one", 3), ("finish_one", 4), ("sharded", 3)])
def test_sharded_crash_inside_two_phase_commit(tmp_path, mode, expect_last):
    path = tmp_path / "sh"
    assert run_child(path, mode, stop_after=4) == 3
    with ShardedStore(path, 2, DIM, STATE) as store:
        assert store.last_pass == expect_last
        assert all(s.last_pass == expect_last for s in store.shards)
        np.testing.assert_array_equal(store.read_rows(UNIVERSE), reference_after(expect_last + 1))


def test_log_cap_drops_the_oldest_passes_only_and_recovery_replays_the_rest(tmp_path):
    """Over ``log_cap_mb`` a commit drops only its oldest passes' redo records, writing just the
    dirty MEM rows whose latest value was in them: hot rows that every pass commits again stay in
    MEM and in the newer records, not in the SSD table. A crash then (the directory as it is on
    disk, no close) recovers every row exactly from the SSD table plus the remaining records."""
    import shutil

    universe = np.sort(UNIVERSE)
    hot = universe[:40]
    passes = [np.concatenate([hot, universe[100 + 200 * p: 300 + 200 * p]]) for p in range(8)]
    pass_bytes = 240 * (8 + 4 * (DIM + STATE))
    store = HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1, log_cap_mb=2.5 * pass_bytes / 2 ** 20)
    table = init_rows(universe, DIM, STATE, 0.01, 0)
    for p, keys in enumerate(passes):
        ws = store.load_working_set(keys)
        at = np.searchsorted(universe, ws.keys)
        np.testing.assert_array_equal(ws.rows, table[at])
        train(ws.rows, ws.keys, p, DIM)
        table[at] = ws.rows
        store.commit_pass(ws, p)
        with store._lock:
            store._settle()
        logged = sorted({q for q, _ in store._log_index()})
        assert logged == list(range(max(0, p - 1), p + 1))  # two passes fit under the cap, never three
        assert store._log_bytes <= store.log_cap_bytes
    stats = store.stats()
    assert stats["checkpoints"] == 6 and stats["mem_dirty_rows"] == 40 + 2 * 200
    assert stats["checkpoint_rows"] == 6 * 200  # each dropped pass's cold rows, never the hot ones
    found = np.zeros(universe.size, dtype=bool)
    for at, _ in store._lookup(store.rows_db, universe):
        found[at] = True
    assert not found[:40].any()  # hot rows: only in MEM and the last two passes' records
    assert found[100:100 + 200 * 6].all() and not found[100 + 200 * 6:].any()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(tmp_path / "s" / "data.mdb", crashed / "data.mdb")  # what a kill -9 leaves on disk
    store.close()
    with HierarchicalStore(crashed, DIM, STATE, mem_cap_mb=1) as reopened:
        assert reopened.last_pass == 7
        np.testing.assert_array_equal(reopened.read_rows(universe), table)


def test_deferred_commit_is_seen_by_every_read_and_durable_after_the_next_call(tmp_path):
    """``commit_pass(wait=False)``: the open working set is patched at once; the redo records and
    the commit point are written on the writer thread (held back here). A copy of the directory
    taken then (a crash) is at the previous pass; every read waits for the commit and sees it."""
    import shutil
    import threading

    store = HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=60 * store_row_bytes(DIM + STATE) / 2 ** 20)
    order = np.argsort(UNIVERSE)
    for p in range(3):
        ws = store.load_working_set(pass_keys(p))
        train(ws.rows, ws.keys, p, DIM)
        store.commit_pass(ws, p, wait=False)
    store.flush()
    assert store.last_pass == 2
    np.testing.assert_array_equal(store.read_rows(UNIVERSE), reference_after(3))

    release, durable_commit = threading.Event(), store._durable_commit
    store._durable_commit = lambda *args: (release.wait(60), durable_commit(*args))
    ws = store.load_working_set(pass_keys(3))
    upcoming = store.prefetch(pass_keys(4)).result()  # open: patched by the commit below
    train(ws.rows, ws.keys, 3, DIM)
    store.commit_pass(ws, 3, wait=False)
    expected = reference_after(4)
    np.testing.assert_array_equal(upcoming.rows, expected[order[np.searchsorted(UNIVERSE[order], upcoming.keys)]])
    assert store.last_pass == 2 and upcoming.base_pass == 3
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(tmp_path / "s" / "data.mdb", crashed / "data.mdb")
    reader = threading.Thread(target=lambda: setattr(reader, "rows", store.read_rows(UNIVERSE)))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive()  # the read waits for the deferred commit
    release.set()
    reader.join(60)
    np.testing.assert_array_equal(reader.rows, expected)
    assert store.last_pass == 3
    assert store.stats()["written_ahead"] > 0  # victims of the open set's commit written before it
    train(upcoming.rows, upcoming.keys, 4, DIM)
    store.commit_pass(upcoming, 4, wait=False)
    store.close()
    with HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1) as reopened:
        assert reopened.last_pass == 4
        np.testing.assert_array_equal(reopened.read_rows(UNIVERSE), reference_after(5))
    with HierarchicalStore(crashed, DIM, STATE, mem_cap_mb=1) as reopened:
        assert reopened.last_pass == 2
        np.testing.assert_array_equal(reopened.read_rows(UNIVERSE), reference_after(3))


def test_a_failed_deferred_commit_stops_the_store_and_leaves_the_previous_pass(tmp_path):
    store = HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1)
    ws = store.load_working_set(pass_keys(0))
    train(ws.rows, ws.keys, 0, DIM)
    store.commit_pass(ws, 0, wait=False)
    ws = store.load_working_set(pass_keys(1))
    train(ws.rows, ws.keys, 1, DIM)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    store._append_log = disk_full
    store.commit_pass(ws, 1, wait=False)  # returns: the failure is the writer thread's
    with pytest.raises(RuntimeError, match="background step"):
        store.read_rows(UNIVERSE[:5])
    with pytest.raises(RuntimeError, match="background step"):
        store.load_working_set(pass_keys(2))
    store.env.close()  # a crashed process: no close() checkpoint
    store.env = None
    with HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1) as reopened:
        assert reopened.last_pass == 0
        np.testing.assert_array_equal(reopened.read_rows(UNIVERSE), reference_after(1))


@pytest.mark.parametrize("rows_in_mem, wait", [(60, False), (60, True), (5, False)])
def test_a_committed_working_set_is_released_once_its_commit_is_done(tmp_path, rows_in_mem, wait):
    """The memory bound of the pass pipeline (bench/ctr_results.py, rss_overhead_mb) counts two
    working sets: the one training and the committed one until its commit (redo records, MEM
    update, SSD writes) is done. So once ``flush`` returns the store holds no reference to the
    committed set or its rows, whether they fit in MEM or mostly overflow to the SSD table
    (``rows_in_mem`` 5: its rows are written from ``ws.rows`` without a copy)."""
    import weakref

    store = HierarchicalStore(tmp_path / "s", DIM, STATE,
                              mem_cap_mb=rows_in_mem * store_row_bytes(DIM + STATE) / 2 ** 20)
    ws = store.load_working_set(pass_keys(0))
    upcoming = store.prefetch(pass_keys(1)).result()  # open, as the trainer's prefetch
    train(ws.rows, ws.keys, 0, DIM)
    committed, committed_rows = weakref.ref(ws), weakref.ref(ws.rows)
    store.commit_pass(ws, 0, wait=wait)
    del ws
    store.flush()
    assert committed() is None and committed_rows() is None
    train(upcoming.rows, upcoming.keys, 1, DIM)
    store.commit_pass(upcoming, 1, wait=wait)
    store.close()
    with HierarchicalStore(tmp_path / "s", DIM, STATE, mem_cap_mb=1) as reopened:
        np.testing.assert_array_equal(reopened.read_rows(UNIVERSE), reference_after(2))


def test_mem_index_merge_matches_a_sorted_index():
    """A commit's sorted keys are merged into MEM's sorted index (replacing evicted slots' keys)
    instead of re-sorting it: the merged index must equal the sorted one."""
    from paddle_suite.ads.store import _MemCache

    rng = np.random.default_rng(3)
    mem = _MemCache(capacity=500, row_dim=2, decay=0.5)
    for now in range(1, 6):
        keys = np.unique(rng.integers(1, 2 ** 63, 180, dtype=np.uint64))
        slots, hit = mem.lookup(keys)
        new = np.flatnonzero(~hit)
        free, victims = mem.plan_room(new.size, slots[hit], now)
        target = np.concatenate([free, victims])
        mem.place(target, keys, np.ones((keys.size, 2), np.float32), new[:target.size], now, dirty_pass=now)
        order = np.argsort(mem.keys[:mem.size])
        np.testing.assert_array_equal(mem.index_keys, mem.keys[:mem.size][order])
        np.testing.assert_array_equal(mem.index_slot, order)
        slots, hit = mem.lookup(keys[new[:target.size]])
        assert hit.all() and (mem.keys[slots] == keys[new[:target.size]]).all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_background_threads_run_below_the_training_thread(tmp_path):
    def thread_nice():
        import threading

        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, 0)
    store = HierarchicalStore(tmp_path / "a", dim=4, background_nice=3)
    sharded = ShardedStore(tmp_path / "b", 2, dim=4, background_nice=5)
    try:
        assert store._executor.submit(thread_nice).result() == min(19, base + 3)
        assert store._writer.submit(thread_nice).result() == min(19, base + 3)
        assert sharded._executor.submit(thread_nice).result() == min(19, base + 5)
        assert sharded.shards[1]._writer.submit(thread_nice).result() == min(19, base + 5)
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the caller's thread is left alone
    finally:
        store.close()
        sharded.close()
    with pytest.raises(ValueError, match="background_nice must be in"):
        HierarchicalStore(tmp_path / "c", dim=4, background_nice=25)
