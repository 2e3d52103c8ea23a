"""Curves (with downsampling), logs by byte cursor, artifact downloads with ETag and Range."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

from api.services.curves import downsample
from tests.api.helpers import Api, add_curve, add_log, dataset_id, insert_job


def test_downsample_keeps_endpoints_and_extremes() -> None:
    values = [float(i % 7) for i in range(1000)]
    values[500], values[501] = 100.0, -100.0
    points = [SimpleNamespace(step=i, value=v) for i, v in enumerate(values)]
    kept = downsample(points, 50)
    assert len(kept) <= 50
    assert kept[0].step == 0 and kept[-1].step == 999
    assert {p.value for p in kept} >= {100.0, -100.0}
    assert [p.step for p in kept] == sorted({p.step for p in kept})
    assert downsample(points, 2) == [points[0], points[-1]]
    assert len(downsample(points, 3)) == 3 and downsample(points, 3)[1].value in (100.0, -100.0)
    assert downsample(points[:10], 50) == points[:10]


def test_curves_endpoint_filters_and_downsamples(api: Api) -> None:
    ds = dataset_id(api)
    job = insert_job(api, ds, "running")
    add_curve(api, job, "val_accuracy", "structural", [i / 300 for i in range(300)])
    add_curve(api, job, "train_loss", "structural", [1.0, 0.5, 0.25])
    add_curve(api, job, "val_accuracy", "quantitative", [0.9, 0.95])
    full = api.client.get(f"/v1/jobs/{job}/curves").json()["series"]
    assert [(s["key"], s["phase"]) for s in full] == [
        ("train_loss", "structural"), ("val_accuracy", "structural"), ("val_accuracy", "quantitative")]
    small = api.client.get(f"/v1/jobs/{job}/curves",
                           params={"keys": "val_accuracy", "phase": "structural", "max_points": 20}).json()
    (series,) = small["series"]
    assert series["total_points"] == 300 and len(series["points"]) <= 20
    assert series["points"][0] == {"step": 0, "value": 0.0, "wall_time": 0.0}
    assert series["points"][-1]["step"] == 299
    query = "keys=train_loss&keys=val_accuracy&phase=quantitative"
    both = api.client.get(f"/v1/jobs/{job}/curves?{query}").json()
    assert [s["key"] for s in both["series"]] == ["val_accuracy"]
    assert api.client.get(f"/v1/jobs/{job}/curves", params={"max_points": 1}).status_code == 422


def test_logs_cursor(api: Api) -> None:
    ds = dataset_id(api)
    job = insert_job(api, ds, "running")
    assert api.client.get(f"/v1/jobs/{job}/logs").json() == {"text": "", "next_offset": 0}
    add_log(api, job, ["starting", "épochs 1"])
    first = api.client.get(f"/v1/jobs/{job}/logs").json()
    assert first["text"] == "starting\népochs 1\n" and first["next_offset"] == len(first["text"].encode())
    add_log(api, job, ["done"])
    second = api.client.get(f"/v1/jobs/{job}/logs", params={"offset": first["next_offset"]}).json()
    assert second == {"text": "done\n", "next_offset": first["next_offset"] + 5}
    assert api.client.get(f"/v1/jobs/{job}/logs", params={"offset": 4}).json()["text"].startswith("ting\n")
    end = api.client.get(f"/v1/jobs/{job}/logs", params={"offset": second["next_offset"]}).json()
    assert end == {"text": "", "next_offset": second["next_offset"]}


def test_artifact_download_etag_range(api: Api) -> None:
    content = bytes(range(256)) * 40  # 10240 bytes
    ds = dataset_id(api)
    job = insert_job(api, ds, "succeeded", artifact=content)
    listing = api.client.get(f"/v1/jobs/{job}/artifacts").json()
    assert listing[0]["name"] == "trained" and listing[0]["url"] == f"/v1/jobs/{job}/artifacts/trained"
    url = listing[0]["url"]
    etag = f'"{hashlib.sha256(content).hexdigest()}"'

    full = api.client.get(url)
    assert full.status_code == 200 and full.content == content
    assert full.headers["content-length"] == str(len(content)) and full.headers["etag"] == etag
    assert full.headers["content-type"] == "application/octet-stream"
    assert f'filename="{job}-trained.safetensors"' in full.headers["content-disposition"]
    assert full.headers["accept-ranges"] == "bytes"

    assert api.client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert api.client.get(url, headers={"If-None-Match": f"W/{etag}"}).status_code == 304
    assert api.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    part = api.client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(content)}"
    assert part.headers["content-length"] == "100"
    tail = api.client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == content[-10:]
    rest = api.client.get(url, headers={"Range": "bytes=10000-"})
    assert rest.status_code == 206 and rest.content == content[10000:]
    clipped = api.client.get(url, headers={"Range": "bytes=10200-99999"})
    assert clipped.status_code == 206 and clipped.content == content[10200:]

    bad = api.client.get(url, headers={"Range": "bytes=20000-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(content)}"
    assert api.client.get(url, headers={"Range": "bytes=0-1,5-6"}).status_code == 200  # multi-range: whole
    stale = api.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == content
    missing = api.client.get(f"/v1/jobs/{job}/artifacts/baseline")
    assert missing.status_code == 404 and missing.json()["field"] == "name"
