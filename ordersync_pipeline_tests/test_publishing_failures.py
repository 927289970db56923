"""Publishing when the file system says no: a full disk, a symlinked published path, the file's permissions.
Real file systems only: a small tmpfs is mounted for the published folder (needs root, as CI runs)."""

import datetime as dt
import os
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from ordersync_pipeline.storage.snapshots import DEFAULT_STORAGE_VERSION, PublishError, publish, storage_config
from ordersync_pipeline.storage.schema import ensure_schema


def working_file(path: Path, rows: int) -> duckdb.DuckDBPyConnection:
    """A working file of random text (DuckDB cannot compress it much), with the tables publishing reads."""
    conn = duckdb.connect(str(path), config=storage_config(DEFAULT_STORAGE_VERSION))
    ensure_schema(conn)
    conn.execute(f"CREATE OR REPLACE TABLE lines AS SELECT range AS id, md5(random()::VARCHAR) || md5(random()::VARCHAR)"
                 f" AS text FROM range({rows})")
    conn.execute("CHECKPOINT")
    return conn


def lines_in(published: str) -> int:
    with duckdb.connect(published, read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM lines").fetchall()[0][0]


@contextmanager
def tmpfs(folder: Path, megabytes: int):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], check=True)
    try:
        yield lambda size: subprocess.run(["mount", "-o", f"remount,size={size}m", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_publishing_into_a_full_disk_fails_clearly_and_the_next_run_succeeds(tmp_path):
    conn = working_file(tmp_path / "w.duckdb", 200_000)
    size_mb = os.path.getsize(tmp_path / "w.duckdb") / 1e6
    with tmpfs(tmp_path / "published", int(size_mb * 1.5) + 1) as resize:
        published = str(tmp_path / "published" / "ordersync.duckdb")
        publish(conn, published, DEFAULT_STORAGE_VERSION, run_id="first", as_of=dt.date(2025, 12, 1))
        before = Path(published).read_bytes()
        conn.execute("INSERT INTO lines SELECT 1000000 + range, 'new' FROM range(10)")
        with pytest.raises(PublishError) as raised:  # a second copy beside the first does not fit
            publish(conn, published, DEFAULT_STORAGE_VERSION, run_id="second", as_of=dt.date(2025, 12, 2))
        message = str(raised.value)
        assert message.startswith(f"Publishing {published} failed: its folder {tmp_path / 'published'} has ")
        needed = os.path.getsize(tmp_path / "w.duckdb") / 1e6  # as checkpointed for the copy
        assert f"the copy needs {needed:.1f} MB" in message and "\n" not in message
        assert "previous published file is unchanged" in message
        assert Path(published).read_bytes() == before  # untouched, byte for byte
        assert sorted(os.listdir(tmp_path / "published")) == ["ordersync.duckdb"]  # no .publishing-*.tmp
        resize(int(size_mb * 3) + 1)  # space freed: the next run publishes with no other step
        publish(conn, published, DEFAULT_STORAGE_VERSION, run_id="third", as_of=dt.date(2025, 12, 2))
        assert lines_in(published) == 200_010
        assert sorted(os.listdir(tmp_path / "published")) == ["ordersync.duckdb"]
    conn.close()


def test_a_failing_rename_leaves_the_previous_file_and_no_copy(tmp_path, monkeypatch):
    conn = working_file(tmp_path / "w.duckdb", 1_000)
    published = str(tmp_path / "pub" / "ordersync.duckdb")
    os.makedirs(tmp_path / "pub")
    publish(conn, published, DEFAULT_STORAGE_VERSION, run_id="first", as_of=dt.date(2025, 12, 1))
    before = Path(published).read_bytes()

    def refuse(source, target):
        raise PermissionError(13, "Permission denied", target)

    monkeypatch.setattr("ordersync_pipeline.storage.snapshots.os.replace", refuse)
    with pytest.raises(PublishError, match=r"failed \(\[Errno 13\] Permission denied.*unchanged and no partial copy"):
        publish(conn, published, DEFAULT_STORAGE_VERSION, run_id="second", as_of=dt.date(2025, 12, 2))
    assert Path(published).read_bytes() == before
    assert os.listdir(tmp_path / "pub") == ["ordersync.duckdb"]
    conn.close()


def test_a_symlinked_published_path_stays_a_link_and_the_file_keeps_its_permissions(tmp_path):
    conn = working_file(tmp_path / "w.duckdb", 1_000)
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "acme.duckdb"
    link = tmp_path / "ordersync.duckdb"
    link.symlink_to(target)
    publish(conn, str(link), DEFAULT_STORAGE_VERSION, run_id="first", as_of=dt.date(2025, 12, 1))
    assert link.is_symlink() and target.is_file()
    os.chmod(target, 0o640)
    conn.execute("INSERT INTO lines SELECT 5000 + range, 'new' FROM range(5)")
    publish(conn, str(link), DEFAULT_STORAGE_VERSION, run_id="second", as_of=dt.date(2025, 12, 2))
    assert link.is_symlink() and os.readlink(link) == str(target)  # replaced through the link
    assert lines_in(str(link)) == 1_005
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path / "shared")) == ["acme.duckdb"]
    conn.close()
