"""`bench --profile`'s attribution of perf samples to the parts of a settle (stacks as `perf script` prints
them, leaf first)."""

from __future__ import annotations

from stigmer_handshake.bench import profile


def test_a_sample_belongs_to_the_first_part_up_its_stack_and_otherwise_to_its_leaf() -> None:
    fsync_under_sqlite = ["ffff ext4_sync_file ([kernel.kallsyms])", "7f sqlite3PagerCommitPhaseOne (_core.abi3.so)",
                          "7f sqlx_sqlite::connection::worker (_core.abi3.so)"]  # fmt: skip
    assert profile.part_of(fsync_under_sqlite) == "store: SQLite"
    gzip_in_tonic = ["7f miniz_oxide::deflate::core::compress_inner (_core.abi3.so)",
                     "7f <tonic::codec::encode::EncodeBody> (_core.abi3.so)"]  # fmt: skip
    assert profile.part_of(gzip_in_tonic) == "RPC: compression"
    assert profile.part_of(["7f _int_malloc (libc.so.6)", "7f _PyEval_EvalFrameDefault (libpython3.11.so.1.0)"]) == (
        "allocator"
    )
    assert profile.part_of(["7f _PyEval_EvalFrameDefault (libpython3.11.so.1.0)"]) == "Python interpreter"
    assert profile.part_of(["ffff finish_task_switch.isra.0 ([kernel.kallsyms])"]) == "kernel"
    assert profile.part_of(["7f 0x00007f25fad2ef29 ([unknown])"]) == "other"


def test_the_table_puts_each_path_in_a_column_with_its_total() -> None:
    text = profile.table(
        {"raw": {"RPC: compression": 0.02, "kernel": 0.1, "total": 0.12},
         "sqlite": {"store: SQLite": 0.2, "kernel": 0.1, "total": 0.3}}
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0].split() == ["part", "raw", "sqlite"]
    rows = {line.rsplit(None, 2)[0].strip(): line.split()[-2:] for line in lines[2:]}
    assert rows["store: SQLite"] == ["0.000", "0.200"]
    assert rows["RPC: compression"] == ["0.020", "0.000"]
    assert rows["total"] == ["0.120", "0.300"]
    assert "tokio scheduling" not in rows  # a part no path spent time in is left out
