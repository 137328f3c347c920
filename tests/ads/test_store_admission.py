"""Feature admission and shrink in the hierarchical store, checked key by key against a plain-Python
model of the rules in the store's docstring (Fleet's CtrCommonAccessor semantics, per pass)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from paddle_suite.ads.store import COUNT_DTYPE, HierarchicalStore, ShardedStore, init_rows

# The example stream and the training stand-in, shared (as source) with the crashing child processes.
STREAM_SRC = textwrap.dedent('''
    import numpy as np

    UNIVERSE = np.arange(1, 601, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # spread-out keys
    SLOTS = 3

    def pass_examples(pass_id, size=120):
        """(keys [size, SLOTS], labels [size]): a Zipf head seen every pass, a tail seen rarely, and
        a block of keys that only passes < 3 use (they become unseen and get shrunk)."""
        rng = np.random.default_rng(500 + pass_id)
        ranks = np.minimum(rng.zipf(1.4, (size, SLOTS)), 400) - 1
        if pass_id < 3:
            ranks[: size // 4, 0] = 400 + rng.integers(0, 200, size // 4)
        ranks[::7, 1] = ranks[::7, 2]  # a key twice in one example: one show
        return UNIVERSE[ranks], (rng.random(size) < 0.3).astype(np.float32)

    def train(rows, keys, pass_id, dim):
        """In-place update of every row of a working set (pending keys' too, as a trainer would)."""
        bump = ((keys % np.uint64(97)).astype(np.float32) / 97.0 + pass_id)[:, None]
        rows[:, :dim] = rows[:, :dim] * np.float32(0.9) + np.float32(0.01) * bump
        rows[:, dim:] += np.float32(1.0)

    def run_passes(store, first, last, dim):
        """Passes first..last-1 with the prefetch pattern (pass i+1 loaded before pass i commits)."""
        ws = store.load_working_set(pass_examples(first)[0]) if first < last else None
        for p in range(first, last):
            keys, labels = pass_examples(p)
            ws.count(keys, labels)
            train(ws.rows, ws.keys, p, dim)
            upcoming = store.load_working_set(pass_examples(p + 1)[0]) if p + 1 < last else None
            store.commit_pass(ws, p)
            ws = upcoming
''')
exec(STREAM_SRC)  # defines UNIVERSE, SLOTS, pass_examples, train, run_passes

DIM, STATE = 3, 1
SETTINGS = dict(admit_threshold=3.0, nonclk_coeff=1.0, click_coeff=2.0, show_click_decay_rate=0.5,
                delete_threshold=0.5, delete_after_unseen_passes=2, shrink_every_passes=3, pending_state=7.0)


class Reference:
    """The admission / shrink rules written out key by key with Python dicts."""

    def __init__(self, admit_threshold=0.0, nonclk_coeff=1.0, click_coeff=1.0, show_click_decay_rate=1.0,
                 delete_threshold=0.0, delete_after_unseen_passes=None, shrink_every_passes=0, pending_state=0.0):
        self.threshold, self.nonclk, self.clk, self.decay = admit_threshold, nonclk_coeff, click_coeff, show_click_decay_rate
        self.delete_threshold, self.unseen, self.every = delete_threshold, delete_after_unseen_passes, shrink_every_passes
        self.default = np.array([0.0] * DIM + [pending_state] * STATE, dtype=np.float32)
        self.rows, self.counts = {}, {}  # key -> row; key -> [show, click, seen]

    def score(self, show, click):
        return self.nonclk * (show - click) + self.clk * click

    def decayed(self, key, at):
        show, click, seen = self.counts.get(key, (0.0, 0.0, None))
        factor = 0.0 if seen is None else self.decay ** (at - seen)
        return show * factor, click * factor

    def lookup(self, key):
        if key in self.rows:
            return self.rows[key]
        if self.threshold <= 0:
            return init_rows(np.array([key], np.uint64), DIM, STATE, 0.01, 0)[0]
        return self.default

    def run_pass(self, p):
        keys, labels = pass_examples(p)
        distinct = np.unique(keys)
        rows = np.stack([self.lookup(int(k)) for k in distinct])
        admitted = {int(k): int(k) in self.rows or self.threshold <= 0 for k in distinct}
        train(rows, distinct, p, DIM)
        for k, row in zip(distinct, rows):
            k = int(k)
            examples = [i for i in range(len(keys)) if k in keys[i]]
            show, click = self.decayed(k, p)
            self.counts[k] = [show + len(examples), click + float(sum(labels[i] for i in examples)), p]
            if admitted[k]:
                self.rows[k] = row
            elif self.score(*self.counts[k][:2]) >= self.threshold:
                self.rows[k] = init_rows(np.array([k], np.uint64), DIM, STATE, 0.01, 0)[0]
        if self.every and (p + 1) % self.every == 0:
            for k in list(self.counts):
                doomed = self.score(*self.decayed(k, p)) < self.delete_threshold
                if self.unseen is not None:
                    doomed |= p - self.counts[k][2] > self.unseen
                if doomed:
                    del self.counts[k]
                    self.rows.pop(k, None)


def reference_after(passes, **settings):
    ref = Reference(**settings)
    for p in range(passes):
        ref.run_pass(p)
    return ref


def stored_keys(store):
    """Keys with a row in MEM or in the SSD table (after the background work settled)."""
    shards = store.shards if isinstance(store, ShardedStore) else [store]
    keys = set()
    for shard in shards:
        with shard._lock:
            shard._settle()
        keys |= {int(k) for k in shard.mem.keys[: shard.mem.size]}
        with shard.env.begin(db=shard.rows_db) as txn:
            keys |= {int.from_bytes(k, "big") for k in txn.cursor().iternext(values=False)}
    return keys


def check_matches(store, ref):
    """Rows, counters and the stored key set of ``store`` are the reference's, key by key."""
    assert stored_keys(store) == set(ref.rows)
    rows = store.read_rows(UNIVERSE)
    for key, row in zip(UNIVERSE, rows):
        np.testing.assert_array_equal(row, ref.lookup(int(key)), err_msg=f"key {int(key)}")
    shards = store.shards if isinstance(store, ShardedStore) else [store]
    counted = {}
    for shard in shards:
        for keys, counts in shard._scan_counts():
            counted.update({int(k): c for k, c in zip(keys, counts)})
    assert set(counted) == set(ref.counts)
    for key, (show, click, seen) in ref.counts.items():
        record = counted[key]
        assert (record["seen"], bool(record["admitted"])) == (seen, key in ref.rows), key
        np.testing.assert_allclose([record["show"], record["click"]], [show, click], rtol=1e-6, err_msg=str(key))


def open_store(path, shards, **settings):
    if shards > 1:
        return ShardedStore(path, shards, DIM, STATE, mem_cap_mb=0.002, **settings)
    return HierarchicalStore(path, DIM, STATE, mem_cap_mb=0.0015, **settings)  # 29 rows: MEM and SSD both used


@pytest.mark.parametrize("shards", [1, 2])
def test_admission_decay_and_shrink_match_the_rules_key_by_key(tmp_path, shards):
    passes = 7  # shrinks after passes 2 and 5
    ref = reference_after(passes, **SETTINGS)
    with open_store(tmp_path / "s", shards, **SETTINGS) as store:
        run_passes(store, 0, passes, DIM)
        check_matches(store, ref)
        stats = store.stats()
    # the rules did something on this stream: keys waited, were admitted, and were removed
    ever_seen = {int(k) for p in range(passes) for k in np.unique(pass_examples(p)[0])}
    assert 0 < len(ref.rows) < len(ever_seen) - 100
    assert stats["admitted_rows"] > 40 and stats["shrinks"] == 2 * shards and stats["pass_pending"] > 0
    assert stats["evicted_rows"] > 0 and stats["dropped_counters"] > 0 and stats["ssd_rows"] > 0
    tail = {int(k) for k in UNIVERSE[400:]}  # seen only in passes 0-2: gone at the shrink after pass 5
    assert not tail & (set(ref.rows) | set(ref.counts))
    with open_store(tmp_path / "s", shards, **SETTINGS) as store:  # reopened: the same state
        check_matches(store, ref)


def test_admission_threshold_and_pending_rows(tmp_path):
    """A key gets a row only after enough shows; until then its lookups give the default row, its
    rows are not stored whatever the trainer did to them, but its counters are."""
    key = UNIVERSE[0]
    other = UNIVERSE[1]
    with HierarchicalStore(tmp_path / "s", DIM, STATE, admit_threshold=5, show_click_decay_rate=1.0,
                           pending_state=float("inf")) as store:
        for p, shows in enumerate([2, 2, 1]):
            ws = store.load_working_set([key, other])
            assert not ws.admitted.any()
            np.testing.assert_array_equal(ws.rows[0], [0, 0, 0, np.inf])
            ws.count(np.array([[key, key]] * shows + [[other, other]]), np.zeros(shows + 1))
            ws.rows[:] = 1.0  # trained in the pass: discarded, the keys are pending
            store.commit_pass(ws, p)
            assert store.stats()["pass_pending"] == (2 if p < 2 else 1)
        # 2 + 2 + 1 = 5 shows: admitted at the commit of pass 2, from its initial row
        assert store.stats()["pass_admitted"] == 1
        initial = init_rows(np.array([key]), DIM, STATE, 0.01, 0)[0]
        np.testing.assert_array_equal(store.read_rows([key])[0], initial)
        np.testing.assert_array_equal(store.read_rows([other])[0], [0, 0, 0, np.inf])
        assert stored_keys(store) == {int(key)}
        ws = store.load_working_set([key, other])
        assert ws.admitted[ws.index([key, other])].tolist() == [True, False]
        ws.count(np.array([[key, other]]), np.ones(1))
        ws.rows[:] = np.nan  # a non-finite admitted row is refused; pending rows are never checked
        with pytest.raises(FloatingPointError, match=str(int(key))):
            store.commit_pass(ws, 3)


def test_counters_decay_per_pass(tmp_path):
    key, filler = UNIVERSE[0], UNIVERSE[1]
    with HierarchicalStore(tmp_path / "s", DIM, STATE, admit_threshold=100, show_click_decay_rate=0.5) as store:
        for p, (shows, clicks) in enumerate([(4, 2), (0, 0), (0, 0), (1, 1)]):
            ws = store.load_working_set([filler] + [key] * bool(shows))
            ws.count(np.array([[filler]] + [[key]] * shows), np.array([0] + [1] * clicks + [0] * (shows - clicks)))
            store.commit_pass(ws, p)
        record = store._get_counts(np.array([key], np.uint64))[0]
        # pass 0: 4 shows / 2 clicks; unseen for 2 passes; pass 3: x 0.5^3, + 1 show / 1 click
        assert (record["show"], record["click"], record["seen"]) == (4 * 0.125 + 1, 2 * 0.125 + 1, 3)
        filler_record = store._get_counts(np.array([filler], np.uint64))[0]
        assert filler_record["show"] == 1 + 0.5 + 0.25 + 0.125


def test_defaults_are_bit_identical_to_the_store_without_admission(tmp_path):
    """Defaults: no counters kept, every key admitted, nothing shrunk; ``count`` is a no-op. And a
    store that only counts (threshold 0, a shrink that removes nothing) stores the same rows."""
    with HierarchicalStore(tmp_path / "plain", DIM, STATE, mem_cap_mb=0.01) as plain:
        run_passes(plain, 0, 6, DIM)
        assert plain.stats()["counter_rows"] == 0 and not plain.counting
        expected = plain.read_rows(UNIVERSE)
        expected_stats = plain.stats()
    ref = reference_after(6)
    np.testing.assert_array_equal(expected, np.stack([ref.lookup(int(k)) for k in UNIVERSE]))
    with HierarchicalStore(tmp_path / "counting", DIM, STATE, mem_cap_mb=0.01, delete_after_unseen_passes=100,
                           shrink_every_passes=2) as counting:
        run_passes(counting, 0, 6, DIM)
        np.testing.assert_array_equal(counting.read_rows(UNIVERSE), expected)
        stats = counting.stats()
    assert stats["shrinks"] == 3 and stats["evicted_rows"] == 0 and stats["counter_rows"] > 0
    for name in ("ssd_rows", "mem_rows", "evictions", "writebacks", "key_counts"):
        assert stats[name] == expected_stats[name], name


@pytest.mark.parametrize("where", ["logging", "deleting"])
def test_crash_inside_a_shrink_recovers_a_consistent_state(tmp_path, where):
    """Killed while the shrink's deletions are logged (before the commit point: the pass is lost) or
    while they are applied to MEM and the SSD tables (after it: recovery finishes them). The reopened
    store matches the reference at the last committed pass, and training on ends where an
    uninterrupted run ends."""
    path = tmp_path / "s"
    child = STREAM_SRC + textwrap.dedent(f'''
        import os, sys
        from paddle_suite.ads import store as store_module
        from paddle_suite.ads.store import HierarchicalStore

        where = {where!r}
        if where == "logging":
            original = HierarchicalStore._append_log
            def crash(self, pass_id, keys, rows, kind=0):
                if kind == store_module._DELETES_RECORD and keys.size:
                    os._exit(9)
                return original(self, pass_id, keys, rows, kind)
            HierarchicalStore._append_log = crash
        else:
            original = HierarchicalStore._delete_keys
            def crash(self, keys):
                original(self, keys[: keys.size // 2])  # half the deletions landed
                os._exit(9)
            HierarchicalStore._delete_keys = crash
            store_module._TXN_ROWS = 16  # many small delete transactions
        store = HierarchicalStore(sys.argv[1], {DIM}, {STATE}, mem_cap_mb=0.0015, **{SETTINGS!r})
        run_passes(store, 0, 7, {DIM})
    ''')
    proc = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 9, proc.stderr[-2000:]
    expect_last = 1 if where == "logging" else 2  # the first shrink is in the commit of pass 2
    with open_store(path, 1, **SETTINGS) as store:
        assert store.last_pass == expect_last
        check_matches(store, reference_after(expect_last + 1, **SETTINGS))
        run_passes(store, expect_last + 1, 7, DIM)
        check_matches(store, reference_after(7, **SETTINGS))


def test_bad_counts_and_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shrink needs delete_threshold > 0 or delete_after_unseen_passes"):
        HierarchicalStore(tmp_path / "a", DIM, STATE, shrink_every_passes=2)
    with pytest.raises(ValueError, match="show_click_decay_rate must be in"):
        HierarchicalStore(tmp_path / "b", DIM, STATE, admit_threshold=1, show_click_decay_rate=0)
    with HierarchicalStore(tmp_path / "c", DIM, STATE, admit_threshold=2) as store:
        keys = UNIVERSE[:4]
        ws = store.load_working_set(keys)
        with pytest.raises(ValueError, match=r"labels must be click indicators in \[0, 1\]"):
            ws.count(keys[:, None], np.array([0, 1, 2, 0]))
        with pytest.raises(IndexError, match=r"positions must be in \[0, 4\)"):
            ws.count_positions(np.array([[0], [4]]), np.zeros(2))
        with pytest.raises(ValueError, match=r"call ws.count\(keys, labels\)"):
            store.commit_pass(ws, 0)
        ws.count_positions(np.arange(4)[:, None], np.zeros(4))
        store.commit_pass(ws, 0)
        assert store.stats()["pass_pending"] == 4
    with HierarchicalStore(tmp_path / "d", DIM, STATE) as store:
        ws = store.load_working_set(UNIVERSE[:4])
        with pytest.raises(ValueError, match="keeps no counters to shrink by"):
            store.commit_pass(ws, 0, shrink=True)


def test_shrink_on_demand(tmp_path):
    """``commit_pass(..., shrink=True)`` shrinks off the schedule; ``shrink=False`` skips a due one."""
    settings = dict(admit_threshold=1, show_click_decay_rate=1.0, delete_after_unseen_passes=0,
                    shrink_every_passes=2)
    with HierarchicalStore(tmp_path / "s", DIM, STATE, **settings) as store:
        for p, keys in enumerate([UNIVERSE[:3], UNIVERSE[3:5], UNIVERSE[5:6]]):
            ws = store.load_working_set(keys)
            ws.count(keys[:, None], np.zeros(keys.size))
            store.commit_pass(ws, p, shrink={1: False, 2: True}.get(p))  # pass 1 is due, pass 2 is not
            assert stored_keys(store) == {int(k) for k in UNIVERSE[: 3 + 2 * p] if p < 2 or k == UNIVERSE[5]}
        assert store.stats()["shrinks"] == 1 and store.stats()["evicted_rows"] == 5
    assert COUNT_DTYPE.itemsize == 17


def test_shard_servers_apply_the_same_rules(tmp_path):
    """S=2 shard server processes, one worker over gRPC: counts travel with the pushes, the servers
    admit and shrink on their shards, and the result is the one-process rules' (rows up to the
    float rounding of the delta merge)."""
    from paddle_suite.ads.launcher import free_ports
    from paddle_suite.ads.store_service import RemoteStore

    key = "test-secret-0123456789"
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(2)]
    env = dict(os.environ, PADDLE_SUITE_STORE_AUTHKEY=key, PYTHONPATH=os.pathsep.join(sys.path))
    servers = [subprocess.Popen(
        [sys.executable, "-c", "from paddle_suite.ads.store_service import ShardServer, parse_endpoint; "
         f"ShardServer({str(tmp_path / 'store')!r}, {shard}, 2, 1, {DIM}, {STATE}, mem_cap_mb=0.002, "
         f"**{SETTINGS!r}).serve(parse_endpoint({endpoint!r}), {key.encode()!r})"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for shard, endpoint in enumerate(endpoints)]
    passes = 7
    try:
        store = RemoteStore(endpoints, 0, 1, DIM, authkey=key.encode())
        pending = store.prefetch(pass_examples(0)[0])
        for p in range(passes):
            ws = pending.result()
            keys, labels = pass_examples(p)
            ws.count(keys, labels)
            train(ws.rows, ws.keys, p, DIM)
            if p + 1 < passes:
                pending = store.prefetch(pass_examples(p + 1)[0])  # opened before the commit: patched by it
            store.commit_pass(ws, p, dense={"model": {"w": np.zeros(2, np.float32)}, "optimizer": {}})
        stats = store.stats()
        store.close()
        for proc in servers:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out[-3000:]
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert stats["admitted_rows"] > 40 and stats["evicted_rows"] > 0
    ref = reference_after(passes, **SETTINGS)
    with ShardedStore(tmp_path / "store", 2, DIM, STATE, mem_cap_mb=0.002, **SETTINGS) as offline:
        assert offline.last_pass == passes - 1
        assert stored_keys(offline) == set(ref.rows)
        rows = offline.read_rows(UNIVERSE)
        want = np.stack([ref.lookup(int(k)) for k in UNIVERSE])
        np.testing.assert_allclose(rows, want, rtol=0, atol=1e-5)
        counted = {int(k): c for shard in offline.shards for keys, counts in shard._scan_counts()
                   for k, c in zip(keys, counts)}
        assert set(counted) == set(ref.counts)
        for k, (show, click, seen) in ref.counts.items():
            assert (counted[k]["show"], counted[k]["click"], counted[k]["seen"]) == pytest.approx((show, click, seen))
