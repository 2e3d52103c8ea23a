"""The worker's staging cache against a real S3 endpoint: verified downloads, reuse while fresh, LRU
eviction under the size bound, pins, publishing, and several processes sharing one cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glai_common.s3_storage import S3Storage
from glai_common.storage import LocalStorage
from tests.s3_server import S3Endpoint
from worker.staging import MANIFEST, LocalStaging, StagingCache, StagingError, staging_for

REPO_ROOT = Path(__file__).resolve().parents[2]
KB = 1024


def _store_prefix(store: S3Storage, tmp: Path, prefix: str, files: dict[str, bytes]) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = tmp / name.replace("/", "_")
        path.write_bytes(data)
        store.put_file(f"{prefix}/{name}", path)


def _inode(path: Path) -> int:
    return path.stat().st_ino


def test_staged_files_are_verified_copies_reused_while_fresh(s3_storage: S3Storage, tmp_path: Path) -> None:
    files = {"X.npy": os.urandom(40 * KB), "y.npy": os.urandom(8 * KB), "meta.json": b"{}"}
    _store_prefix(s3_storage, tmp_path / "src", "datasets/d1", files)
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=10 * 1024 * KB)
    with cache.staged("datasets/d1") as directory:
        assert {p.name: p.read_bytes() for p in directory.iterdir() if p.name != MANIFEST} == files
        manifest = json.loads((directory / MANIFEST).read_text())
        first = _inode(directory / "X.npy")
    assert manifest["prefix"] == "datasets/d1"
    assert {name: entry["sha256"] for name, entry in manifest["files"].items()} == {
        name: s3_storage.stat(f"datasets/d1/{name}").sha256 for name in files}  # type: ignore[union-attr]
    with cache.staged("datasets/d1") as again:
        assert again == directory and _inode(again / "X.npy") == first  # not downloaded a second time
    assert list((tmp_path / "cache" / "incoming").iterdir()) == []


def test_an_object_rewritten_in_the_store_is_staged_again(s3_storage: S3Storage, tmp_path: Path) -> None:
    _store_prefix(s3_storage, tmp_path / "a", "features/d/minilm", {"X.npy": b"old"})
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=1024 * KB)
    with cache.staged("features/d/minilm") as directory:
        assert (directory / "X.npy").read_bytes() == b"old"
    _store_prefix(s3_storage, tmp_path / "b", "features/d/minilm", {"X.npy": b"new bytes"})
    with cache.staged("features/d/minilm") as directory:
        assert (directory / "X.npy").read_bytes() == b"new bytes"


def test_a_local_copy_touched_on_this_machine_is_staged_again(s3_storage: S3Storage, tmp_path: Path) -> None:
    _store_prefix(s3_storage, tmp_path / "a", "datasets/d", {"X.npy": b"stored bytes"})
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=1024 * KB)
    with cache.staged("datasets/d") as directory:
        (directory / "X.npy").write_bytes(b"tampered!!!!")  # same size, new mtime
    with cache.staged("datasets/d") as directory:
        assert (directory / "X.npy").read_bytes() == b"stored bytes"


def test_a_corrupt_object_is_refused_and_nothing_is_cached(s3_storage: S3Storage, tmp_path: Path) -> None:
    _store_prefix(s3_storage, tmp_path / "a", "datasets/bad", {"X.npy": b"good bytes", "y.npy": b"labels"})
    recorded = s3_storage.stat("datasets/bad/X.npy")
    assert recorded is not None
    s3_storage.client.put_object(Bucket=s3_storage.bucket, Key=s3_storage._name("datasets/bad/X.npy"),
                                 Body=b"flipped bits", Metadata={"sha256": str(recorded.sha256)})
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=1024 * KB)
    with pytest.raises(StagingError, match="sha256"), cache.staged("datasets/bad"):
        pass
    assert cache.entries_by_use() == []
    assert list((tmp_path / "cache" / "incoming").iterdir()) == []


def test_least_recently_used_entries_are_evicted_to_stay_under_the_bound(s3_storage: S3Storage,
                                                                        tmp_path: Path) -> None:
    for name in "abc":
        _store_prefix(s3_storage, tmp_path / name, f"datasets/{name}", {"X.npy": os.urandom(100 * KB)})
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=250 * KB)  # room for two
    for name in ("a", "b", "a"):  # a is used last: b is the least recently used
        with cache.staged(f"datasets/{name}"):
            pass
    with cache.staged("datasets/c"):
        pass
    staged = {json.loads((e.directory / MANIFEST).read_text())["prefix"] for e in cache.entries_by_use()}
    assert staged == {"datasets/a", "datasets/c"}
    assert cache.used_bytes() == 200 * KB <= cache.max_bytes
    assert [json.loads((e.directory / MANIFEST).read_text())["prefix"] for e in cache.entries_by_use()] == [
        "datasets/a", "datasets/c"]  # least recently used first


def test_a_pinned_entry_is_never_evicted(s3_storage: S3Storage, tmp_path: Path) -> None:
    for name in "abc":
        _store_prefix(s3_storage, tmp_path / name, f"datasets/{name}", {"X.npy": os.urandom(100 * KB)})
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=250 * KB)
    with cache.staged("datasets/a") as pinned:  # oldest, but in use
        with cache.staged("datasets/b"):
            pass
        with cache.staged("datasets/c"):
            pass
        assert (pinned / "X.npy").is_file()
    staged = {json.loads((e.directory / MANIFEST).read_text())["prefix"] for e in cache.entries_by_use()}
    assert staged == {"datasets/a", "datasets/c"}  # b went instead


def test_an_entry_larger_than_the_bound_is_refused(s3_storage: S3Storage, tmp_path: Path) -> None:
    _store_prefix(s3_storage, tmp_path / "a", "datasets/huge", {"X.npy": os.urandom(300 * KB)})
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=200 * KB)
    with pytest.raises(StagingError, match="GLAI_STAGING_MAX_BYTES"), cache.staged("datasets/huge"):
        pass
    with pytest.raises(StagingError, match="nothing is stored"), cache.staged("datasets/none"):
        pass


def test_published_files_are_stored_and_kept_as_the_cached_entry(s3_storage: S3Storage,
                                                                  tmp_path: Path) -> None:
    cache = StagingCache(s3_storage, tmp_path / "cache", max_bytes=1024 * KB)
    written: dict[str, int] = {}

    def write(directory: Path) -> None:
        for name, data in {"X.npy": b"features", "y.npy": b"labels", "meta.json": b"{}"}.items():
            (directory / name).write_bytes(data)
            written[name] = _inode(directory / name)

    cache.publish("features/d/minilm", write, last="meta.json")
    assert [o.key for o in s3_storage.list_prefix("features/d/minilm")] == [
        "features/d/minilm/X.npy", "features/d/minilm/meta.json", "features/d/minilm/y.npy"]
    assert s3_storage.stat("features/d/minilm/X.npy").sha256  # type: ignore[union-attr]
    with cache.staged("features/d/minilm") as directory:
        assert {name: _inode(directory / name) for name in written} == written  # moved in, not downloaded


def test_several_processes_share_one_cache(s3: S3Endpoint, s3_storage: S3Storage, tmp_path: Path) -> None:
    """Four processes stage the same prefix at once: each sees the whole verified entry, one entry is
    left, nothing is left half-downloaded."""
    _store_prefix(s3_storage, tmp_path / "a", "datasets/shared", {"X.npy": os.urandom(3 * 1024 * KB),
                                                                  "y.npy": os.urandom(KB)})
    script = (
        "import sys, hashlib; from pathlib import Path\n"
        "from glai_common.settings import Settings; from glai_common.storage import make_storage\n"
        "from worker.staging import StagingCache\n"
        f"store = make_storage(Settings(**{s3.settings(s3_storage.bucket)!r}))\n"
        f"cache = StagingCache(store, Path({str(tmp_path / 'cache')!r}), 64 * 1024 * 1024)\n"
        "with cache.staged('datasets/shared') as d:\n"
        "    print(hashlib.sha256((d / 'X.npy').read_bytes()).hexdigest())\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    expected = s3_storage.stat("datasets/shared/X.npy").sha256  # type: ignore[union-attr]
    assert [out.strip() for out, _ in results] == [expected] * 4
    cache = StagingCache(s3_storage, tmp_path / "cache", 64 * 1024 * KB)
    assert len(cache.entries_by_use()) == 1
    assert list((tmp_path / "cache" / "incoming").iterdir()) == []


def test_local_storage_stages_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "stored")
    staging = staging_for(storage, tmp_path / "cache", 1)
    assert isinstance(staging, LocalStaging)
    staging.publish("features/d/minilm",
                    lambda d: (d.mkdir(parents=True), (d / "meta.json").write_text("{}")))
    with staging.staged("features/d/minilm") as directory:
        assert directory == storage.local_path("features/d/minilm") and (directory / "meta.json").is_file()
    assert not (tmp_path / "cache").exists()
