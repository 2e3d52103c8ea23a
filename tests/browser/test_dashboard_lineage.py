"""The dashboard's lineage card in headless Chromium: a parent lists its child, a child links its parent
and shows each part's accuracy, a merge its sources, a sweep its heads with the kept ones starred."""

from __future__ import annotations

from sqlalchemy.orm import Session

from glai_common.db import make_engine
from glai_common.models import Job
from tests.browser.test_dashboard import browser, page, screenshots, server  # noqa: F401 - fixtures


def _jobs(seeded) -> dict[str, str]:  # type: ignore[no-untyped-def]
    engine = make_engine(seeded.database_url)
    with Session(engine) as session:
        parent = session.get(Job, seeded.job_id)
        assert parent is not None
        part = {"dataset_id": parent.dataset_id, "seed": 0, "validation_fraction": 0.2, "skip_rows": 0}
        child = Job(owner=seeded.owner, dataset_id=parent.dataset_id, state="succeeded", progress=1.0,
                    time_limit_s=60, parent_job_id=parent.id,
                    spec={"config": {}, "lineage": {"parent_job_id": parent.id, "structure_job_id": parent.id,
                                                    "rows": "union", "data": "new_rows", "parts": [part,
                                                                                                   part]}},
                    summary={"glai_accuracy": 0.95, "incremental": {
                        "mode": "statistics", "why": "the parent kept sufficient statistics",
                        "parts": [{"dataset_id": parent.dataset_id, "rows": 900, "val_rows": 180,
                                   "val_accuracy": 0.951}]},
                        "lineage": {"rows_added": 450, "train_rows": 720}})
        merge = Job(owner=seeded.owner, dataset_id=parent.dataset_id, state="succeeded", progress=1.0,
                    time_limit_s=60, spec={"config": {}, "merge": {"job_ids": [parent.id, "f" * 32]},
                                           "lineage": {"structure_job_id": parent.id, "parts": [part]}},
                    summary={"merge": {"method": "summed_statistics", "what": "the closed form", "parts": [
                        {"job_id": parent.id, "dataset_id": parent.dataset_id, "val_rows": 180,
                         "merged_val_accuracy": 0.96, "source_val_accuracy": 0.94}]}})
        heads = [{"id": i, "kind": kind, "lr": lr, "reduction_factor": "auto" if kind == "glai" else None,
                  "seed": 0, "hidden": [30] if kind == "glai" else [256], "params": 19_000 + i,
                  "val_accuracy": 0.9 + i / 100, "seconds": 1.0 + i, "epochs": {}, "stopped_by": {},
                  "pruned_at": 3 if i == 2 else None}
                 for i, (kind, lr) in enumerate([("glai", 1e-3), ("glai", 3e-3), ("mlp", 1e-3), ("mlp",
                                                                                                 3e-3)])]
        sweep = Job(owner=seeded.owner, dataset_id=parent.dataset_id, state="succeeded", progress=1.0,
                    time_limit_s=60, spec={"config": {}, "sweep": {"lr": [1e-3, 3e-3]}},
                    summary={"sweep": {"heads": heads, "front": {"glai": [0, 1], "mlp": [3]},
                                       "best": {"glai": 1, "mlp": 3},
                                       "halving": {"eta": 2, "first_rung": {"glai": 3, "mlp": 3},
                                                   "rungs": []}}})
        session.add_all([child, merge, sweep])
        session.commit()
        ids = {"parent": parent.id, "child": child.id, "merge": merge.id, "sweep": sweep.id}
    engine.dispose()
    return ids


def test_lineage_card_links_parents_children_merges_and_sweeps(server, page, screenshots) -> None:  # type: ignore[no-untyped-def]  # noqa: E501, F811
    base, seeded = server
    ids = _jobs(seeded)
    page.goto(f"{base}/dashboard#token={seeded.key}")
    page.locator("tr[data-job-id]").first.wait_for()

    page.goto(f"{base}/dashboard#/jobs/{ids['parent']}")
    card = page.locator("section.lineage")
    card.wait_for()
    assert card.get_attribute("data-kind") == "train"
    assert card.locator(f'.children a[href="#/jobs/{ids["child"]}"]').count() == 1

    page.goto(f"{base}/dashboard#/jobs/{ids['child']}")
    card = page.locator('section.lineage[data-kind="incremental"]')
    card.wait_for()
    assert card.locator(f'a[href="#/jobs/{ids["parent"]}"]').count() >= 1
    text = card.inner_text()
    assert "450" in text and "statistics" in text and "95.1%" in text
    page.screenshot(path=str(screenshots / "lineage-child.png"), full_page=True)

    page.goto(f"{base}/dashboard#/jobs/{ids['merge']}")
    card = page.locator('section.lineage[data-kind="merge"]')
    card.wait_for()
    assert "96.0%" in card.inner_text() and "summed_statistics" in card.inner_text()

    page.goto(f"{base}/dashboard#/jobs/{ids['sweep']}")
    card = page.locator('section.lineage[data-kind="sweep"]')
    card.wait_for()
    rows = card.locator("table.lineage-table tbody tr")
    assert rows.count() == 4
    assert rows.nth(1).locator("td").last.inner_text() == "★•"  # the best GLAI head, on the front
    assert rows.nth(2).locator("td").last.inner_text() == "✂ 3"  # cut by halving at epoch 3
    assert rows.nth(0).locator("td").last.inner_text() == "•"
    assert "successive halving" in card.inner_text()
    page.screenshot(path=str(screenshots / "lineage-sweep.png"), full_page=True)
    assert page.errors == [], page.errors
