"""Checkpoints mirrored to object storage: pulled by the next attempt on any machine, pushed as they
change (in the background and once more at the end), never half-written files."""

from __future__ import annotations

import time
from pathlib import Path

from glai_common.s3_storage import S3Storage
from glai_common.storage import LocalStorage
from worker.checkpoint_sync import CheckpointWorkspace


def _stored(store: S3Storage, job: str) -> dict[str, bytes]:
    prefix = f"jobs/{job}/checkpoints/"
    return {info.key.removeprefix(prefix): b"".join(store.read_range(info.key, 0, info.size))
            for info in store.list_prefix(f"jobs/{job}/checkpoints")}


def test_checkpoints_move_between_machines(s3_storage: S3Storage, tmp_path: Path) -> None:
    first = CheckpointWorkspace(s3_storage, "job1", tmp_path / "machine-a", interval_s=3600)  # no thread push
    directory = first.open()
    assert directory == tmp_path / "machine-a" / "jobs" / "job1" / "checkpoints"
    assert list(directory.iterdir()) == []
    (directory / "structural.safetensors").write_bytes(b"epoch 3")
    (directory / "pruning").mkdir()
    (directory / "pruning" / "level-0.safetensors").write_bytes(b"level 0")
    (directory / "quantitative.safetensors.tmp").write_bytes(b"being written")  # never pushed
    assert first.push() == 2
    assert first.push() == 0  # nothing changed since
    (directory / "structural.safetensors.tmp").write_bytes(b"epoch 5")
    (directory / "structural.safetensors.tmp").replace(directory / "structural.safetensors")
    first.close()  # the final push: epoch 5 goes up before the attempt's state is written
    assert not directory.exists()
    assert _stored(s3_storage, "job1") == {"structural.safetensors": b"epoch 5",
                                           "pruning/level-0.safetensors": b"level 0"}

    second = CheckpointWorkspace(s3_storage, "job1", tmp_path / "machine-b", interval_s=3600)
    pulled = second.open()
    assert (pulled / "structural.safetensors").read_bytes() == b"epoch 5"
    assert (pulled / "pruning" / "level-0.safetensors").read_bytes() == b"level 0"
    assert second.push() == 0  # what was pulled is not uploaded again
    second.close(push=False)
    assert not pulled.exists()


def test_the_background_thread_pushes_changes(s3_storage: S3Storage, tmp_path: Path) -> None:
    workspace = CheckpointWorkspace(s3_storage, "job2", tmp_path / "w", interval_s=0.1)
    directory = workspace.open()
    try:
        (directory / "baseline.safetensors").write_bytes(b"weights")
        deadline = time.monotonic() + 20
        while _stored(s3_storage, "job2") != {"baseline.safetensors": b"weights"}:
            assert time.monotonic() < deadline, "the checkpoint was not pushed in the background"
            time.sleep(0.1)
    finally:
        workspace.close(push=False)


def test_a_stale_local_directory_is_replaced_by_the_stored_state(s3_storage: S3Storage,
                                                                 tmp_path: Path) -> None:
    stale = tmp_path / "w" / "jobs" / "job3" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "structural.safetensors").write_bytes(b"from an attempt that died here")
    workspace = CheckpointWorkspace(s3_storage, "job3", tmp_path / "w", interval_s=3600)
    assert list(workspace.open().iterdir()) == []  # the store holds nothing for it: start afresh
    workspace.close()
    assert _stored(s3_storage, "job3") == {}


def test_local_storage_checkpoints_in_place(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "stored")
    workspace = CheckpointWorkspace(storage, "job4", tmp_path / "work")
    directory = workspace.open()
    assert directory == storage.local_path("jobs/job4/checkpoints") and directory.is_dir()
    (directory / "structural.safetensors").write_bytes(b"x")
    assert workspace.push() == 0
    workspace.close()
    assert (directory / "structural.safetensors").read_bytes() == b"x"  # kept: it is the stored copy
