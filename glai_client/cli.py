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
from rich.console import Console
from rich.table import Table

from glai_client.client import FINAL_STATES, GlaiClient, GlaiError
from glai_client.config import api_key, api_url

app = typer.Typer(help="GLAI (GreenLightningAI) training service.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
datasets_app = typer.Typer(help="Upload and manage datasets.", no_args_is_help=True)
admin_app = typer.Typer(help="API keys, directly on the database (GLAI_DATABASE_URL).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(admin_app, name="admin")
console = Console()
err = Console(stderr=True)


def _client() -> GlaiClient:
    return GlaiClient(api_url(), api_key())


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


def _table(*columns: str) -> Table:
    """A table whose id column is never cut: ids are what users copy into the next command."""
    table = Table()
    for name in columns:
        table.add_column(name, no_wrap=name == "id", min_width=32 if name == "id" else None)
    return table


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data))


# ------------------------------------------------------------------ service

@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface; non-loopback needs auth enabled.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default: GLAI_DATA_DIR, ./var).")
                        ] = None,
    worker: Annotated[bool, typer.Option(help="Also run a training worker.")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run migrations, then the API and a worker, until Ctrl-C."""
    import os

    from glai_client import serve as launcher

    if data_dir is not None:
        os.environ["GLAI_DATA_DIR"] = str(data_dir.resolve())
    options = launcher.ServeOptions(host=host, port=port, worker=worker, log_level=log_level)
    code = launcher.run(options, console)
    raise typer.Exit(code)


# ------------------------------------------------------------------ jobs

def _job_settings(config: Path | None, hidden: str | None, reduction_factor: str | None,
                  structural_epochs: int | None, quantitative_epochs: int | None, baseline: bool | None,
                  pruning: bool | None, sparsities: str | None, seed: int | None,
                  time_limit: int | None) -> dict[str, Any]:
    """A JSON config file (optional) overlaid with the command-line options that were given."""
    body: dict[str, Any] = json.loads(config.read_text()) if config else {}

    def section(name: str) -> dict[str, Any]:
        return body.setdefault(name, {})  # type: ignore[no-any-return]

    if hidden:
        section("architecture")["hidden"] = [int(w) for w in hidden.split(",")]
    if reduction_factor:
        section("architecture")["reduction_factor"] = (
            reduction_factor if reduction_factor == "auto" else float(reduction_factor))
    if structural_epochs is not None:
        section("structural")["max_epochs"] = structural_epochs
        structural = section("structural")
        structural["min_epochs"] = min(structural.get("min_epochs", 2), structural_epochs)
    if quantitative_epochs is not None:
        section("quantitative")["epochs"] = quantitative_epochs
    if baseline is not None:
        section("baseline")["enabled"] = baseline
    if pruning is not None:
        section("pruning")["enabled"] = pruning
    if sparsities:
        section("pruning")["sparsities"] = [float(s) for s in sparsities.split(",")]
    if seed is not None:
        body["seed"] = seed
    if time_limit is not None:
        body["time_limit_s"] = time_limit
    return body


@app.command()
def submit(
    dataset_id: Annotated[str, typer.Argument(help="Dataset id (see `glai datasets list`).")],
    config: Annotated[Path | None, typer.Option(help="JSON file with job settings (API body).")] = None,
    hidden: Annotated[str | None, typer.Option(help="Reference MLP widths, e.g. 256 or 512,256.")] = None,
    reduction_factor: Annotated[str | None, typer.Option(help="'auto' or a number.")] = None,
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
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")] = False,
) -> None:
    """Submit a training job and print its id."""
    body = _job_settings(config, hidden, reduction_factor, structural_epochs, quantitative_epochs, baseline,
                         pruning, sparsities, seed, time_limit)
    if backbone:
        body["backbone"] = backbone
    if precision:
        body["precision"] = precision
    try:
        with _client() as client:
            job = client.submit_job(dataset_id, body, idempotency_key=idempotency_key)
            console.print(f"job [bold]{job['id']}[/bold] {job['state']}")
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
) -> None:
    """Show one job, or list your recent jobs."""
    try:
        with _client() as client:
            if job_id is None:
                page = client.list_jobs(state=state, limit=limit)
                if as_json:
                    _print_json(page)
                    return
                table = _table("id", "state", "phase", "progress", "created")
                for job in page["items"]:
                    table.add_row(job["id"], job["state"], job["phase"] or "", f"{job['progress']:.0%}",
                                  job["created_at"][:19])
                console.print(table)
                return
            job = client.get_job(job_id)
    except GlaiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(job)
        return
    console.print(f"job {job['id']}: [bold]{job['state']}[/bold]"
                  + (f", phase {job['phase']} {job['progress']:.0%}" if job.get("phase") else ""))
    if job.get("failure_kind"):
        console.print(f"[red]failed ({job['failure_kind']}): {job['failure_message']}[/red]")
    for key, value in (job.get("summary") or {}).items():
        console.print(f"  {key}: {value}")
    for artifact in job.get("artifacts", []):
        console.print(f"  artifact {artifact['name']} ({artifact['size_bytes']} bytes)")


def _watch(client: GlaiClient, job_id: str) -> None:
    from glai_client.watch import watch as watch_job

    job = watch_job(client, job_id, console)
    console.print(f"job {job['id']} {job['state']}")
    if job["state"] == "failed":
        console.print(f"[red]{job.get('failure_kind')}: {job.get('failure_message')}[/red]")
        raise typer.Exit(1)


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
    name: Annotated[str, typer.Argument(help="Artifact: trained, baseline, pruned-<pct>.")] = "trained",
    output: Annotated[Path, typer.Option("--output", "-o", help="File or directory.")] = Path("."),
) -> None:
    """Download an exported model (resumes an interrupted download)."""
    try:
        with _client() as client:
            path = client.download_artifact(job_id, name, output)
    except GlaiError as exc:
        raise _fail(exc) from exc
    console.print(f"saved {path}")


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
) -> None:
    """Predict classes for new samples, one line per sample (images: `name<TAB>class`)."""
    from glai_client.predict_input import read_inputs
    from glai_core.predict import Predictor

    try:
        predictor = Predictor.load(model)
        inputs = read_inputs(data, _modality(predictor), label_column, text_column)
        results = predictor.predict_proba(inputs.values) if proba else predictor.predict(inputs.values)
    except (OSError, ValueError) as exc:
        raise _fail(exc) from exc
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
def datasets_list() -> None:
    """List your datasets."""
    try:
        with _client() as client:
            page = client.list_datasets(limit=200)
    except GlaiError as exc:
        raise _fail(exc) from exc
    table = _table("id", "name", "samples", "features", "classes", "created")
    for ds in page["items"]:
        table.add_row(ds["id"], ds["name"], str(ds["n_samples"]), str(ds["n_features"]), str(ds["n_classes"]),
                      ds["created_at"][:19])
    console.print(table)


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
