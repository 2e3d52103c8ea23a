"""The `glai` command: run the service locally, drive it, and use the models it exports.

The API URL comes from GLAI_API_URL (default http://127.0.0.1:8000), the key from GLAI_API_KEY or the
file `glai serve` writes (<GLAI_DATA_DIR>/local_api_key).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from glai_client import lineage_options
from glai_client.cli_jobs import jobs_app, list_jobs
from glai_client.cli_output import CursorOption, console, err
from glai_client.cli_output import bad_input as _bad_input
from glai_client.cli_output import client as _client
from glai_client.cli_output import fail as _fail
from glai_client.cli_output import next_page as _next_page
from glai_client.cli_output import print_json as _print_json
from glai_client.cli_output import table as _table
from glai_client.cli_output import watch_until_done as _watch
from glai_client.client import FINAL_STATES, GlaiError
from glai_client.job_options import BadInput, JobOptions, job_body
from glai_client.progress import job_progress

app = typer.Typer(help="GLAI (GreenLightningAI) training service.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
datasets_app = typer.Typer(help="Upload and manage datasets.", no_args_is_help=True)
admin_app = typer.Typer(help="API keys, directly on the database (GLAI_DATABASE_URL).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(admin_app, name="admin")
# ------------------------------------------------------------------ service

@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface; non-loopback needs auth enabled.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default: GLAI_DATA_DIR, ./var).")
                        ] = None,
    worker: Annotated[bool, typer.Option(help="Also run a training worker.")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[int, typer.Option(min=1, max=64, help="API processes (uvicorn --workers): more "
                                                              "serve more status polls at once.")] = 1,
) -> None:
    """Run migrations, then the API and a worker, until Ctrl-C."""
    import os

    from glai_client import serve as launcher

    if data_dir is not None:
        os.environ["GLAI_DATA_DIR"] = str(data_dir.resolve())
    options = launcher.ServeOptions(host=host, port=port, worker=worker, log_level=log_level,
                                    api_workers=workers)
    code = launcher.run(options, console)
    raise typer.Exit(code)


@app.command("webhook-secret")
def webhook_secret(
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it first.")] = False,
) -> None:
    """Print the key your job webhooks are signed with (GLAI-Signature, HMAC-SHA256)."""
    try:
        with _client() as client:
            secret = client.webhook_secret(rotate=rotate)
    except GlaiError as exc:
        raise _fail(exc) from exc
    console.print(secret, highlight=False, soft_wrap=True)


@app.command("worker")
def worker_command(
    queues: Annotated[str | None, typer.Option(
        help="Comma-separated worker pools to serve, each one of GLAI_QUEUES (default: the first of them). "
             "Within them high-priority jobs are taken first, then normal, then low.")] = None,
    cpu: Annotated[bool, typer.Option(help="Train on the CPU even if a GPU is visible.")] = False,
    name: Annotated[str | None, typer.Option(help="Node name (default glai-<pid>@<host>).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run one training worker (one job at a time) against GLAI_DATABASE_URL and GLAI_BROKER_URL."""
    from glai_client import worker_cmd

    options = worker_cmd.WorkerOptions(queues=queues, cpu=cpu, name=name, log_level=log_level)
    try:
        worker_cmd.run(options)
    except worker_cmd.WorkerOptionError as exc:
        raise _bad_input(exc) from None


# ------------------------------------------------------------------ jobs

@app.command()
def submit(
    dataset_id: Annotated[str, typer.Argument(help="Dataset id (see `glai datasets list`).")],
    config: Annotated[Path | None, typer.Option(help="JSON file with job settings (API body).")] = None,
    hidden: Annotated[str | None, typer.Option(help="Reference MLP widths, e.g. 256 or 512,256.")] = None,
    reduction_factor: Annotated[str | None, typer.Option(
        help="'auto' (match the MLP's parameters), 'adaptive' (sized by the data) or a number.")] = None,
    structural_epochs: Annotated[int | None, typer.Option(help="Max structural epochs.")] = None,
    quantitative_epochs: Annotated[int | None, typer.Option(help="Quantitative (Adam) epochs.")] = None,
    baseline: Annotated[bool | None, typer.Option(help="Train the MLP baseline.")] = None,
    pruning: Annotated[bool | None, typer.Option(help="Run the pruning sweep.")] = None,
    sparsities: Annotated[str | None, typer.Option(help="Pruning levels, e.g. 0.5,0.9.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    time_limit: Annotated[int | None, typer.Option(help="Time limit in seconds.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key: same key, same job.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Frozen backbone: minilm (text datasets) or "
                                                      "efficientnet-lite0 (image datasets).")] = None,
    precision: Annotated[str | None, typer.Option(help="Arithmetic of the training steps: auto (bf16 on "
                                                       "CPUs with bf16 hardware, TF32 on GPUs), fp32 or "
                                                       "bf16.")] = None,
    name: Annotated[str | None, typer.Option(help="Your label for the job (glai jobs list --name).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A free-form tag; repeat for several.")] = None,
    priority: Annotated[str | None, typer.Option(help="high, normal (default) or low within its queue.")
                        ] = None,
    queue: Annotated[str | None, typer.Option(help="Worker pool, one of the server's GLAI_QUEUES "
                                                   "(default: its first).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="POSTed (signed) when the job ends; see "
                                                         "glai webhook-secret.")] = None,
    parent: Annotated[str | None, typer.Option(help="Continue this job: reuse its frozen structure (no "
                                                    "structural phase) and refit its path weights.")] = None,
    rows: Annotated[str | None, typer.Option(help="With --parent: union (the parent's rows and this "
                                                  "dataset's, default) or own (this dataset's only).")
                    ] = None,
    appended: Annotated[bool, typer.Option("--appended", help="With --parent: the dataset is the parent's "
                                           "latest dataset with rows appended.")] = False,
    phase2: Annotated[str | None, typer.Option(help="With --parent: auto, statistics (new rows only) or "
                                                    "refit (the union).")] = None,
    sweep: Annotated[list[str] | None, typer.Option(help="A grid in one job, KEY=V1,V2 with KEY lr, "
                                                         "reduction_factor or seed; repeat per key. "
                                                         "halving=ETA cuts the weaker heads at rungs.")
                     ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")] = False,
) -> None:
    """Submit a training job and print its id."""
    try:
        body = job_body(JobOptions(config, hidden, reduction_factor, structural_epochs, quantitative_epochs,
                                   baseline, pruning, sparsities, seed, time_limit, name, tuple(tag or ())))
        body = lineage_options.apply(body, parent, rows, appended, phase2, list(sweep or []))
    except BadInput as exc:
        raise _bad_input(exc) from None
    if backbone:
        body["backbone"] = backbone
    if precision:
        body["precision"] = precision
    for key, value in (("priority", priority), ("queue", queue)):
        if value is not None:
            body[key] = value
    if webhook_url is not None:
        body["notify"] = {"webhook_url": webhook_url}
    try:
        with _client() as client:
            job = client.submit_job(dataset_id, body, idempotency_key=idempotency_key)
            console.print(f"job [bold]{job['id']}[/bold] {job['state']}")
            if watch:
                _watch(client, job["id"])
    except GlaiError as exc:
        raise _fail(exc) from exc


@app.command()
def merge(
    job_ids: Annotated[list[str], typer.Argument(help="Two or more jobs on one frozen structure.")],
    method: Annotated[str, typer.Option(help="auto, summed_statistics or refit.")] = "auto",
    name: Annotated[str | None, typer.Option(help="Your label for the merge job.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key: same key, same job.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the merge job until it ends.")] = False,
) -> None:
    """Merge jobs that share one structure into the model of all their data; prints the merge job's id."""
    try:
        with _client() as client:
            job = client.merge_models(job_ids, method=method, name=name, idempotency_key=idempotency_key)
            console.print(f"job [bold]{job['id']}[/bold] {job['state']} (merge of {len(job_ids)} jobs)")
            if watch:
                _watch(client, job["id"])
    except GlaiError as exc:
        raise _fail(exc) from exc


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id; without it, list recent jobs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    state: Annotated[str | None, typer.Option(help="When listing: only this state.")] = None,
    limit: Annotated[int, typer.Option(help="When listing: how many.")] = 20,
    cursor: CursorOption = None,
) -> None:
    """Show one job, or list your recent jobs."""
    if job_id is None:
        list_jobs(state, limit, cursor, as_json)
        return
    try:
        with _client() as client:
            job = client.get_job(job_id)
    except GlaiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(job)
        return
    reading = job_progress(job)
    console.print(f"job {job['id']}: [bold]{job['state']}[/bold]"
                  + (f", phase {reading.phase} {reading.fraction or 0.0:.0%}" if reading.phase else "")
                  + (f" in {reading.stopped_in}" if reading.stopped_in else ""), highlight=False)
    if job.get("failure_kind"):
        console.print(f"[red]failed ({job['failure_kind']}): {escape(str(job['failure_message']))}[/red]")
    for key, value in (job.get("summary") or {}).items():
        console.print(f"  {key}: {value}", markup=False)
    for artifact in job.get("artifacts", []):
        console.print(f"  artifact {artifact['name']} ({artifact['size_bytes']} bytes)")


@app.command()
def watch(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Follow a job with a progress bar per phase until it ends."""
    try:
        with _client() as client:
            _watch(client, job_id)
    except GlaiError as exc:
        raise _fail(exc) from exc


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job (queued: at once; running: at its next step)."""
    try:
        with _client() as client:
            job = client.cancel(job_id)
    except GlaiError as exc:
        raise _fail(exc) from exc
    console.print(f"job {job['id']} {job['state']}")


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print the job's log."""
    offset = 0
    try:
        with _client() as client:
            while True:
                chunk = client.logs(job_id, offset)
                if chunk["text"]:
                    console.out(chunk["text"], end="", highlight=False)
                offset = chunk["next_offset"]
                if not follow:
                    return
                if not chunk["text"]:
                    if client.get_job(job_id)["state"] in FINAL_STATES:
                        return
                    time.sleep(1.0)
    except GlaiError as exc:
        raise _fail(exc) from exc


@app.command()
def download(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    name: Annotated[str, typer.Argument(help="Artifact: trained, baseline, pruned-<pct>; their ONNX copies "
                                             "<model>.onnx; config.json.")] = "trained",
    output: Annotated[str, typer.Option("--output", "-o", help="A file, or a directory (existing, or "
                                                            "ending in /) to save it in under the name "
                                                            "the API gives it, <job>-<name>.safetensors "
                                                            "(<job>-trained.onnx, <job>-config.json).")
                      ] = ".",
) -> None:
    """Download an exported model, its ONNX copy or the job's config.json (resumes an interrupted
    download)."""
    try:
        with _client() as client:
            path = client.download_artifact(job_id, name, output)
    except GlaiError as exc:
        raise _fail(exc) from exc
    except ValueError as exc:
        raise _bad_input(exc) from exc
    console.print(f"saved {path}", highlight=False)


@app.command()
def plot(job_id: Annotated[str, typer.Argument(help="Job id.")],
         output: Annotated[Path, typer.Argument(help="Image file to write, e.g. curves.png.")]) -> None:
    """Plot the job's curves to an image."""
    from glai_client.plot import plot_curves

    try:
        with _client() as client:
            curves = client.curves(job_id, max_points=500)
            job = client.get_job(job_id)
    except GlaiError as exc:
        raise _fail(exc) from exc
    plot_curves(curves, output, summary=job.get("summary") or {}, title=f"job {job_id[:8]} ({job['state']})")
    console.print(f"saved {output}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A .safetensors model exported by GLAI.")],
    data: Annotated[Path, typer.Argument(help="Feature model: .npz (array X) or .csv/.parquet (feature "
                                              "columns). Text model (minilm): .txt (one text per line) or "
                                              ".csv/.parquet. Image model (efficientnet-lite0): an image "
                                              "file, a directory of images or a .zip.")],
    label_column: Annotated[str | None, typer.Option(help="Column to drop from a table first.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text models: the table's text column "
                                                         "(default: text).")] = None,
    proba: Annotated[bool, typer.Option("--proba", help="Print class probabilities as JSON lines.")] = False,
    header: Annotated[bool | None, typer.Option("--header/--no-header",
                                                help="Whether a .csv's first row names the columns "
                                                     "(default: detected; a row of numbers is data).")
                      ] = None,
) -> None:
    """Predict classes for new samples, one line per sample (images: `name<TAB>class`)."""
    from glai_client.predict_input import read_inputs
    from glai_core.predict import Predictor

    try:
        predictor = Predictor.load(model)
        inputs = read_inputs(data, _modality(predictor), label_column, text_column,
                             n_features=predictor.in_features, class_names=predictor.class_names,
                             header=header)
        results = predictor.predict_proba(inputs.values) if proba else predictor.predict(inputs.values)
    except (OSError, ValueError) as exc:  # the model or the input file cannot be used as given
        raise _bad_input(exc) from exc
    for index, result in enumerate(results):  # plain stdout, not rich: it would expand the tabs
        line = json.dumps([round(float(p), 6) for p in result]) if proba else str(result)
        typer.echo(f"{inputs.names[index]}\t{line}" if inputs.names else line)


def _modality(predictor: Any) -> str | None:
    """``text``/``image`` for a model trained on a frozen backbone, None for a feature model."""
    if predictor.backbone is None:
        return None
    from glai_core.backbones import spec

    return spec(predictor.backbone).modality


# ------------------------------------------------------------------ datasets

@datasets_app.command("upload")
def datasets_upload(
    path: Annotated[Path, typer.Argument(help=".npz, .csv, .parquet or (images) .zip file.", exists=True,
                                         dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Display name (default: the file name).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column of a csv/parquet table.")] = None,
    kind: Annotated[str, typer.Option(help="features, text (csv/parquet) or images (.zip, a folder per "
                                           "class).")] = "features",
    text_column: Annotated[str | None, typer.Option(help="kind text: the column holding the texts "
                                                         "(default: text).")] = None,
) -> None:
    """Upload a dataset and print its id."""
    try:
        with _client() as client:
            ds = client.upload_dataset(path, name=name, label_column=label_column, kind=kind,
                                       text_column=text_column)
    except GlaiError as exc:
        raise _fail(exc) from exc
    console.print(f"dataset [bold]{ds['id']}[/bold]: {ds['n_samples']} samples, {ds['n_features']} features, "
                  f"{ds['n_classes']} classes")


@datasets_app.command("builtin")
def datasets_builtin(name: Annotated[str, typer.Argument(help="digits, mnist1d, iris, wine, ...")],
                     seed: Annotated[int, typer.Option(help="Seed for generated datasets.")] = 0) -> None:
    """Add a built-in dataset and print its id."""
    try:
        with _client() as client:
            ds = client.builtin_dataset(name, seed=seed)
    except GlaiError as exc:
        raise _fail(exc) from exc
    console.print(f"dataset [bold]{ds['id']}[/bold]: {ds['name']}, {ds['n_samples']} samples")


@datasets_app.command("list")
def datasets_list(
    limit: Annotated[int, typer.Option(help="How many.")] = 50,
    cursor: CursorOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """List your datasets, newest first."""
    try:
        with _client() as client:
            page = client.list_datasets(limit=limit, cursor=cursor)
    except GlaiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(page)
        return
    table = _table("id", "name", "samples", "features", "classes", "created")
    for ds in page["items"]:
        table.add_row(ds["id"], escape(ds["name"]), str(ds["n_samples"]), str(ds["n_features"]),
                      str(ds["n_classes"]), ds["created_at"][:19])
    console.print(table)
    _next_page(page)


@datasets_app.command("delete")
def datasets_delete(dataset_id: Annotated[str, typer.Argument(help="Dataset id.")]) -> None:
    """Delete a dataset (refused while jobs use it)."""
    try:
        with _client() as client:
            client.delete_dataset(dataset_id)
    except GlaiError as exc:
        raise _fail(exc) from exc
    console.print(f"deleted {dataset_id}")


# ------------------------------------------------------------------ admin

def _session():  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    from glai_common.db import make_engine
    from glai_common.settings import Settings

    settings = Settings()
    return Session(make_engine(settings.resolved_database_url, settings))


@admin_app.command("create-key")
def admin_create_key(owner: Annotated[str, typer.Option(help="Owner the key acts as.")],
                     name: Annotated[str, typer.Option(help="Note to recognise the key by.")] = "") -> None:
    """Issue an API key; the key is printed once and never stored in clear."""
    from api.services.api_keys import create_key

    with _session() as session:
        issued = create_key(session, owner=owner, name=name)
    console.print(issued.key, highlight=False)
    err.print(f"key {issued.prefix}… for owner '{owner}' (shown once: store it now)")


@admin_app.command("revoke-key")
def admin_revoke_key(prefix: Annotated[str, typer.Argument(help="The key's prefix (list-keys).")]) -> None:
    """Revoke a key by its prefix."""
    from api.services.api_keys import revoke_key

    with _session() as session:
        count = revoke_key(session, prefix)
    if not count:
        raise _fail(ValueError(f"no active key with prefix '{prefix}'"))
    console.print(f"revoked {count} key(s)")


@admin_app.command("list-keys")
def admin_list_keys() -> None:
    """List keys (prefix, owner, state)."""
    from api.services.api_keys import list_keys

    with _session() as session:
        rows = list_keys(session)
        table = Table("prefix", "owner", "name", "created", "revoked")
        for row in rows:
            table.add_row(row.prefix, row.owner, row.name, str(row.created_at), str(row.revoked_at or ""))
    console.print(table)


if __name__ == "__main__":
    app()
