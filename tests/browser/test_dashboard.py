"""The dashboard in a real headless Chromium against the real API, database and artifact files.

The schema is built with the project's migrations; a finished job (curves, summary, transitions, real
``.safetensors`` artifacts) and a failed job are written through glai_common's models; the API runs with
uvicorn in a subprocess on a free port. Playwright drives Debian's ``/usr/bin/chromium`` (never a browser
that Playwright downloads).

Locally a missing Chromium or Playwright skips with the reason; under CI=true it fails.
Screenshots go to ``$GLAI_TEST_ARTIFACTS`` (or pytest's temporary directory), never into the repo.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.seed import (
    BASELINE_EPOCHS,
    QUANTITATIVE_EPOCHS,
    SPARSITIES,
    STRUCTURAL_EPOCHS,
    Seeded,
    seed_database,
)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("GLAI_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The app to serve: api.main by default (create_app() or app); override only to point at another build.
API_APP = os.environ.get("GLAI_TEST_API_APP", "api.main")

# Every chart the finished job must show, with the fewest points its longest line must have.
EXPECTED_CHARTS = {
    "structural-loss": STRUCTURAL_EPOCHS,
    "structural-accuracy": STRUCTURAL_EPOCHS,
    "structural-distances": STRUCTURAL_EPOCHS,
    "quantitative-loss": QUANTITATIVE_EPOCHS,
    "quantitative-accuracy": QUANTITATIVE_EPOCHS,
    "baseline-loss": BASELINE_EPOCHS,
    "baseline-accuracy": BASELINE_EPOCHS,
    "pruning-sparsity": len(SPARSITIES),
    "time-to-accuracy": STRUCTURAL_EPOCHS + QUANTITATIVE_EPOCHS,
}


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("GLAI_TEST_ARTIFACTS")
    directory = Path(configured) / "dashboard" if configured else tmp_path_factory.mktemp("dashboard-screens")
    directory.mkdir(parents=True, exist_ok=True)
    assert REPO not in directory.resolve().parents, "screenshots must stay outside the repository"
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded]]:
    """The real API on a free port, over a migrated SQLite database holding the seeded jobs."""
    _require(Path(CHROMIUM).is_file(), f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _require(False, "Playwright for Python is not installed (pip install playwright)")
    try:
        from glai_common.migrate import upgrade
    except ImportError as exc:
        _require(False, f"glai_common.migrate is not available yet: {exc}")
    from sqlalchemy.orm import Session

    from glai_common.db import make_engine
    from glai_common.storage import LocalStorage

    data_dir = tmp_path_factory.mktemp("glai-dashboard")
    url = f"sqlite:///{data_dir / 'glai.db'}"
    storage_dir = data_dir / "storage"
    upgrade(url)
    engine = make_engine(url)
    scratch = data_dir / "scratch"
    scratch.mkdir()
    with Session(engine) as session:
        seeded = seed_database(session, LocalStorage(storage_dir), scratch)
    engine.dispose()

    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GLAI_")},
           "GLAI_DATA_DIR": str(data_dir), "GLAI_DATABASE_URL": url, "GLAI_STORAGE_DIR": str(storage_dir),
           "GLAI_AUTH_ENABLED": "true"}
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.browser.serve_app", str(port), API_APP],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log_text = (data_dir / "server.log").read_text()
                pytest.fail(f"the API exited with {proc.returncode}:\n{log_text}")
            try:
                if httpx.get(f"{base}/dashboard", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the API did not come up:\n{(data_dir / 'server.log').read_text()}")
            time.sleep(0.2)
        seeded.database_url, seeded.storage_dir = url, storage_dir
        yield base, seeded
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(server):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.errors = []  # console errors and uncaught exceptions (a CSP violation shows up here too)
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    yield page
    context.close()


def test_page_and_assets_are_served_safely(server) -> None:  # type: ignore[no-untyped-def]
    base, _ = server
    page = httpx.get(f"{base}/dashboard")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert httpx.get(f"{base}/dashboard/static/app.js").status_code == 200
    assert httpx.get(f"{base}/dashboard/static/style.css").status_code == 200
    for hidden in ("router.py", "__init__.py", "../router.py"):
        assert httpx.get(f"{base}/dashboard/static/{hidden}").status_code == 404


def test_finished_job_list_curves_summary_and_download(server, page, screenshots) -> None:  # type: ignore[no-untyped-def]
    base, seeded = server
    # A ready link as `glai serve` prints it: the key rides in the fragment, then leaves the address bar.
    page.goto(f"{base}/dashboard#token={seeded.key}")
    row = page.locator(f'tr[data-job-id="{seeded.job_id}"]')
    row.wait_for()
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('glai.apiKey')") == seeded.key
    assert row.locator(".badge").inner_text() == "succeeded"
    assert row.locator('[role="progressbar"]').get_attribute("aria-valuenow") == "100"
    failed_row = page.locator(f'tr[data-job-id="{seeded.failed_job_id}"]')
    assert failed_row.locator(".badge").inner_text() == "failed"
    page.screenshot(path=str(screenshots / "jobs.png"), full_page=True)

    row.locator("a.job-link").click()
    page.wait_for_url(f"**#/jobs/{seeded.job_id}")
    page.locator("figure[data-chart] path.series").first.wait_for()

    for chart, min_points in EXPECTED_CHARTS.items():
        figure = page.locator(f'figure[data-chart="{chart}"]')
        assert figure.count() == 1, f"chart {chart} is missing"
        paths = figure.locator("path.series")
        assert paths.count() >= 1, f"chart {chart} has no line"
        counts = [int(paths.nth(i).get_attribute("data-points")) for i in range(paths.count())]
        segments = [paths.nth(i).get_attribute("d").count("L") for i in range(paths.count())]
        assert max(counts) >= min_points, (chart, counts)
        assert min(segments) >= 1 and max(segments) == max(counts) - 1, (chart, segments)
    assert page.locator('figure[data-chart="structural-loss"] path.series').count() == 2  # train + validation
    assert page.locator('figure[data-chart="time-to-accuracy"] path.series').count() == 2  # GLAI + baseline

    # The structural stop point is the last structural step; the target line sits in time to accuracy.
    stop = page.locator('figure[data-chart="structural-distances"] line.vref.stop')
    assert stop.count() == 1
    assert f"epoch {STRUCTURAL_EPOCHS - 1}" in page.locator(
        'figure[data-chart="structural-distances"] text.ref-label.stop').text_content()
    assert page.locator('figure[data-chart="time-to-accuracy"] line.href.target').count() == 1
    assert page.locator('figure[data-chart="time-to-accuracy"] circle.ref-point').count() == 2

    summary = page.locator("table.summary")
    assert summary.locator('tr[data-key="glai_accuracy"] td').inner_text() == "94.5%"
    assert summary.locator('tr[data-key="speedup"] td').inner_text() == "2.03×"
    assert summary.locator('tr[data-key="total_time_speedup"] td').inner_text() == "1.93×"
    captions = page.locator("table.summary caption").all_text_contents()  # (shown in capitals)
    assert any(c.startswith("(a) Time to target") for c in captions), captions
    assert any(c.startswith("(b) Total training time") for c in captions), captions
    setting = summary.locator('tr[data-key="setting-structural.batch_size"]')
    assert setting.locator("th").inner_text() == "structural.batch_size = 32"
    assert "power of two" in setting.locator("td").inner_text()
    assert page.locator("ol.timeline li").count() == 7
    page.screenshot(path=str(screenshots / "job.png"), full_page=True)

    # Downloads go through fetch with the Bearer header and are saved from a Blob URL.
    link = page.locator('a.download[data-artifact="trained"]')
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename.endswith("trained.safetensors")
    assert Path(download.path()).read_bytes() == seeded.artifact_files["trained"].read_bytes()
    status = link.locator("xpath=following-sibling::span[contains(@class,'dl-status')]")
    page.wait_for_function("el => el.textContent.includes('verified')", arg=status.element_handle())
    assert page.errors == [], page.errors


def test_failed_job_shows_kind_and_message(server, page, screenshots) -> None:  # type: ignore[no-untyped-def]
    base, seeded = server
    page.goto(f"{base}/dashboard#token={seeded.key}")
    page.locator("tr[data-job-id]").first.wait_for()
    page.goto(f"{base}/dashboard#/jobs/{seeded.failed_job_id}")
    failure = page.locator(".failure")
    failure.wait_for()
    assert "gpu_oom" in failure.inner_text()
    assert "CUDA out of memory" in failure.inner_text()
    page.screenshot(path=str(screenshots / "failed.png"), full_page=True)
    assert page.errors == [], page.errors


def test_rejected_key_asks_for_another(server, page, screenshots) -> None:  # type: ignore[no-untyped-def]
    base, seeded = server
    page.goto(f"{base}/dashboard#token=not-a-real-key")
    form = page.locator("#auth")
    form.wait_for()
    assert "not accepted" in page.locator("#auth-message").inner_text()
    page.screenshot(path=str(screenshots / "auth.png"))
    page.fill("#api-key", seeded.key)
    page.click("#auth-form button[type=submit]")
    page.locator(f'tr[data-job-id="{seeded.job_id}"]').wait_for()
    assert page.evaluate("localStorage.getItem('glai.apiKey')") == seeded.key
    assert all("401" in error for error in page.errors), page.errors  # only the rejected request


@pytest.mark.slow
def test_job_trained_by_the_real_worker_is_drawn(server, page, screenshots) -> None:  # type: ignore[no-untyped-def]
    """A tiny real job: the worker's pipeline runs in this process and writes the database the API reads."""
    base, seeded = server
    from sqlalchemy import select
    from sqlalchemy.orm import sessionmaker

    from glai_common.db import make_engine
    from glai_common.models import Artifact, Job
    from glai_common.settings import Settings
    from glai_common.storage import LocalStorage
    from tests.worker.harness import insert_digits_job, tiny_config
    from worker.context import WorkerContext
    from worker.pipeline_runner import execute_job

    settings = Settings(data_dir=seeded.storage_dir.parent, database_url=seeded.database_url,
                        storage_dir=seeded.storage_dir)
    context = WorkerContext(settings=settings, engine=make_engine(seeded.database_url),
                            storage=LocalStorage(seeded.storage_dir), enqueue=lambda _job_id: None)
    try:
        sessions = sessionmaker(bind=context.engine, expire_on_commit=False)
        job_id = insert_digits_job(sessions, seeded.storage_dir, tiny_config(), n_samples=400)
        execute_job(context, job_id)
        with sessions() as session:
            job = session.get(Job, job_id)
            assert job.owner == seeded.owner
            assert job.state == "succeeded", (job.failure_kind, job.failure_message)
            trained = session.scalar(select(Artifact).where(Artifact.job_id == job_id,
                                                            Artifact.name == "trained"))
            trained_bytes = (seeded.storage_dir / trained.storage_key).read_bytes()
    finally:
        context.dispose()

    page.goto(f"{base}/dashboard#token={seeded.key}")
    page.locator(f'tr[data-job-id="{job_id}"] a.job-link').click()
    page.locator("figure[data-chart] path.series").first.wait_for()
    for chart in ("time-to-accuracy", "pruning-sparsity", "structural-loss", "structural-accuracy",
                  "quantitative-accuracy", "baseline-loss", "baseline-accuracy"):
        paths = page.locator(f'figure[data-chart="{chart}"] path.series')
        assert paths.count() >= 1, f"chart {chart} is missing for the real job"
        assert int(paths.first.get_attribute("data-points")) >= 1
    assert page.locator('tr[data-key="glai_accuracy"] td').inner_text().endswith("%")
    page.screenshot(path=str(screenshots / "real-job.png"), full_page=True)
    with page.expect_download() as info:
        page.locator('a.download[data-artifact="trained"]').click()
    assert Path(info.value.path()).read_bytes() == trained_bytes
    assert page.errors == [], page.errors


def test_active_jobs_refresh_live(server, page, screenshots) -> None:  # type: ignore[no-untyped-def]
    """While a job runs, the list and the job page poll: new progress and new curve points appear."""
    base, seeded = server
    from sqlalchemy.orm import Session

    from glai_common.db import make_engine
    from glai_common.models import Job
    from tests.browser.seed import running_curve_points

    page.goto(f"{base}/dashboard#token={seeded.key}")
    bar = page.locator(f'tr[data-job-id="{seeded.running_job_id}"] [role="progressbar"]')
    assert bar.get_attribute("aria-valuenow") == "40"
    assert page.locator("#live").is_visible()
    engine = make_engine(seeded.database_url)
    try:
        with Session(engine) as session:
            session.get(Job, seeded.running_job_id).progress = 0.8
            session.commit()
        page.wait_for_function(
            "id => document.querySelector(`tr[data-job-id='${id}'] [role=progressbar]`)"
            ".getAttribute('aria-valuenow') === '80'", arg=seeded.running_job_id, timeout=10_000)

        page.goto(f"{base}/dashboard#/jobs/{seeded.running_job_id}")
        line = page.locator('figure[data-chart="structural-loss"] path.series').first
        line.wait_for()
        assert line.get_attribute("data-points") == "4"
        assert page.get_by_role("button", name="Cancel job").is_visible()
        with Session(engine) as session:
            session.add_all(running_curve_points(seeded.running_job_id, range(4, 7)))
            session.commit()
        page.wait_for_function(
            "() => document.querySelector('figure[data-chart=\"structural-loss\"] path.series')"
            ".dataset.points === '7'", timeout=10_000)
        page.screenshot(path=str(screenshots / "running.png"), full_page=True)
    finally:
        engine.dispose()
    assert page.errors == [], page.errors


def test_a_failed_job_can_be_resumed(server, page, screenshots) -> None:  # type: ignore[no-untyped-def]
    """Last in the module: it sends the seeded failed job (gpu_oom, 1 attempt of 3) back to the queue."""
    base, seeded = server
    from sqlalchemy.orm import Session

    from glai_common.db import make_engine
    from glai_common.models import Job

    page.goto(f"{base}/dashboard#token={seeded.key}")
    page.locator("tr[data-job-id]").first.wait_for()
    page.goto(f"{base}/dashboard#/jobs/{seeded.failed_job_id}")
    resume = page.get_by_role("button", name="Resume job")
    resume.wait_for()
    resume.click()
    page.locator(".job-head .badge.state-queued").wait_for(timeout=10_000)  # the view reloaded the job
    assert page.get_by_role("button", name="Resume job").count() == 0
    assert page.get_by_role("button", name="Cancel job").is_visible()
    engine = make_engine(seeded.database_url)
    try:
        with Session(engine) as session:
            assert session.get(Job, seeded.failed_job_id).state == "queued"
    finally:
        engine.dispose()
    page.screenshot(path=str(screenshots / "resumed.png"), full_page=True)
    assert page.errors == [], page.errors
