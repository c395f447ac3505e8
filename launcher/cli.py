"""The ``launcher`` command line: argument parsing and printing only; the work is done elsewhere.

Heavy modules are imported inside the commands so that ``launcher --help`` and ``launcher render``
start fast; TensorFlow is never imported here.
"""

from __future__ import annotations

import enum
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from launcher import __version__
from launcher.errors import LauncherError, SpecError
from launcher.validate import DEFAULT_K8S_VERSION
from trainer.fields import BY_NAME, FIELDS

MAX_ERROR_LINE = 1000


def error_line(err: LauncherError) -> str:
    """The one line an error prints: control characters escaped, length capped."""
    from trainer.text import escape

    text = escape(str(err))
    return text if len(text) <= MAX_ERROR_LINE else text[:MAX_ERROR_LINE - 3] + "..."


class _Commands(TyperGroup):
    """The launcher's command groups. This is the one place errors are reported: a
    ``LauncherError`` from any command is one ``error:`` line on stderr and its exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LauncherError as err:
            typer.echo(f"error: {error_line(err)}", err=True)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    cls=_Commands,
    name="launcher",
    help="Launch distributed TensorFlow fine-tuning on Kubernetes (MultiWorkerMirroredStrategy).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
spec_app = typer.Typer(help="Work with job spec files.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
image_app = typer.Typer(help="Build the trainer image.", no_args_is_help=True)
app.add_typer(image_app, name="image")
kind_app = typer.Typer(help="A local kind cluster with a GCS emulator.", no_args_is_help=True)
app.add_typer(kind_app, name="kind")
ClusterName = Annotated[str, typer.Option("--name", help="kind cluster name")]

# Flags for the common spec fields: (parameter, flag, type, dotted spec path, help). The
# training fields among them come from the field table (``trainer.fields``, ``launcher_flag``).
_JOB_FLAGS: list[tuple[str, str, Any, str, str]] = [
    ("profile", "--profile", str, "profile", "gke, kind or generic: sets defaults"),
    ("name", "--name", str, "name", "job name"),
    ("namespace", "--namespace", str, "namespace", "Kubernetes namespace"),
    ("image", "--image", str, "image", "trainer image"),
    ("workers", "--workers", int, "workers", "number of worker pods"),
    ("gpus", "--gpus", int, "resources.gpus", "GPUs per worker"),
    ("accelerator", "--accelerator", str, "resources.accelerator", "GKE accelerator type"),
    ("cpu", "--cpu", str, "resources.cpu", "CPU request per worker"),
    ("memory", "--memory", str, "resources.memory", "memory per worker"),
    ("run_dir", "--run-dir", str, "runDir", "root of run directories"),
    ("queue", "--queue", str, "scheduling.queue", "Kueue LocalQueue"),
    ("retries", "--retries", int, "scheduling.retriesPerIndex", "retries per worker index"),
    ("ttl", "--ttl", int, "scheduling.ttlSecondsAfterFinished", "seconds to keep a finished job"),
    ("deadline", "--deadline", int, "scheduling.activeDeadlineSeconds", "job deadline (s)"),
    ("gcp_service_account", "--gcp-service-account", str, "auth.gcpServiceAccount",
     "Workload Identity GCP service account"),
    ("key_secret", "--key-secret", str, "auth.keySecret", "Secret holding key.json"),
]
SPEC_FLAGS: list[tuple[str, str, Any, str, str]] = _JOB_FLAGS + [
    (f.name, f.flag, list[f.type] if f.repeated else f.type, f.spec or "", f.help
     + (f": {', '.join(f.options() or ())}" if f.choices else "")
     + (" (repeatable)" if f.repeated else ""))
    for f in FIELDS if f.launcher_flag]


def _spec_flag_param(param: str, flag: str, typ: Any, help_text: str) -> inspect.Parameter:
    short = ["-n"] if flag == "--namespace" else []
    option = typer.Option(flag, *short, help=help_text, rich_help_panel="Spec fields",
                          show_default=False)
    return inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[typ], option])  # noqa: UP045


def with_spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the SPEC argument, ``--set`` and the spec-field flags to a command.

    The command receives them as one ``spec_source: SpecSource`` keyword argument.
    """
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation))
           for p in signature.parameters.values() if p.name != "spec_source"]
    extra = [
        inspect.Parameter("spec_file", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                          annotation=Annotated[Optional[Path], typer.Argument(  # noqa: UP045
                              metavar="SPEC", help="job spec YAML file", show_default=False,
                              exists=False)]),
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
                              "--set", "-s", help="override a field: path.to.field=value",
                              show_default=False)]),
        *(_spec_flag_param(p, f, t, h) for p, f, t, _, h in SPEC_FLAGS),
    ]
    positional = [p for p in own if p.kind == p.POSITIONAL_OR_KEYWORD]
    keyword = [p for p in own if p.kind != p.POSITIONAL_OR_KEYWORD]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        from launcher.spec import SpecSource

        flags = {path: kwargs.pop(param) for param, _, _, path, _ in SPEC_FLAGS}
        kwargs["spec_source"] = SpecSource(
            path=kwargs.pop("spec_file"), sets=kwargs.pop("set_") or [],
            overrides={path: value for path, value in flags.items() if value not in (None, [])})
        return func(**kwargs)

    params = [extra[0], *positional, *extra[1:], *keyword]
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _warn_image(spec: Any) -> None:
    from launcher.spec import image_warnings

    for message in image_warnings(spec):
        typer.echo(f"warning: {message}", err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"launcher {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Launch distributed TensorFlow fine-tuning on Kubernetes."""


OutputFormat = Annotated[str, typer.Option("--output", "-o", help="yaml or json")]
K8sVersion = Annotated[str, typer.Option("--k8s-version",
                                         help="Kubernetes version whose schemas validate")]


@app.command()
@with_spec_options
def render(
    spec_source: Any,
    output: OutputFormat = "yaml",
    output_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--output-dir", help="write one YAML file per object here instead of stdout")] = None,
    k8s_version: K8sVersion = DEFAULT_K8S_VERSION,
    schema: Annotated[bool, typer.Option(
        "--validate/--no-validate",
        help="also check every object against the strict Kubernetes schema (slower)")] = False,
) -> None:
    """Render the job's Kubernetes objects as YAML for [bold]kubectl apply -f -[/].

    The spec and the cross-field rules are always checked; [bold]--validate[/] adds the schema.
    """
    from launcher import render as rendering
    from launcher.api import build_objects

    if output not in ("yaml", "json"):
        raise LauncherError(f"--output: {output!r} is not yaml or json")
    spec, objects = build_objects(spec_source, k8s_version, schema=schema)
    _warn_image(spec)
    if output_dir is not None:
        from launcher.files import write_all

        write_all(output_dir, {rendering.file_name(obj, i): rendering.to_yaml([obj])
                               for i, obj in enumerate(objects)})
        typer.echo(f"wrote {len(objects)} objects to {output_dir}", err=True)
        return
    sys.stdout.write(rendering.to_json(objects) if output == "json" else rendering.to_yaml(objects))


@app.command()
@with_spec_options
def validate(spec_source: Any, k8s_version: K8sVersion = DEFAULT_K8S_VERSION) -> None:
    """Validate the spec and every rendered object (strict schema + cross-field rules)."""
    from launcher.api import build_objects
    from launcher.inputs import input_checks

    spec, objects = build_objects(spec_source, k8s_version)
    _warn_image(spec)
    checks = input_checks(spec)
    for check in checks:
        if check.level != "error":
            typer.echo(f"{check.level}: {check.message}", err=True)
    errors = [c.message for c in checks if c.level == "error"]
    if errors:
        raise SpecError("", "; ".join(errors))
    kinds = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    typer.echo(f"ok: {spec.name} ({spec.workers} workers, profile {spec.profile}): {kinds} "
               f"valid for Kubernetes {k8s_version}")


@app.command("run-local")
@with_spec_options
def run_local(
    spec_source: Any,
    grace: Annotated[Optional[float], typer.Option(  # noqa: UP045
        "--grace", help="seconds workers get to exit after a peer failed or on Ctrl-C; "
        "default: scheduling.terminationGracePeriodSeconds")] = None,
) -> None:
    """Run the rendered Job as local processes on 127.0.0.1: no cluster needed.

    Worker output is prefixed with its index; exit codes 42/43 restart the whole group within
    the retry budget, exit code 1 stops every worker.
    """
    from launcher import api
    from trainer import contract

    spec = api.run_local(spec_source, grace=grace)
    run_dir = spec.job_run_dir
    typer.echo(f"done: {spec.name} ({spec.workers} workers)\n"
               f"  checkpoints: {contract.run_path(run_dir, contract.RUN_CHECKPOINTS)}\n"
               f"  summaries:   {contract.run_path(run_dir, contract.RUN_SUMMARIES)}")


class DemoTask(str, enum.Enum):
    """What ``launcher demo`` fine-tunes."""

    detection = "detection"
    keras = "keras"


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--dir", help="where data, runs and logs go")] = Path(
        "demo-run"),
    task: Annotated[DemoTask, typer.Option(
        "--task", help="detection (RetinaNet) or keras (an exported Keras classifier)")
    ] = DemoTask.detection,
    family: Annotated[str, typer.Option(
        "--family", help="the detector of --task detection: "
        f"{', '.join(BY_NAME['family'].options() or ())}")] = BY_NAME["family"].default,
) -> None:
    """Fine-tune end to end on this machine: no cluster, no cloud account.

    Makes a synthetic data set, pre-trains a base model (a RetinaNet, Faster R-CNN or YOLO
    checkpoint, or a Keras model saved as .h5), fine-tunes it with 2 local workers (the same
    Job [bold]run-local[/] runs) and compares with training from scratch.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from launcher.demo import DemoSettings, KerasDemoSettings, run_demo, run_keras_demo, summary

    if task is DemoTask.keras and family != BY_NAME["family"].default:
        raise LauncherError("--family: only with --task detection")
    settings = DemoSettings(family=family)
    columns = (TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        current: list[Any] = []

        def stage(title: str, total: int) -> Callable[[int, int], None]:
            for task in current:
                progress.update(task, completed=progress.tasks[task].total)
            task = progress.add_task(title, total=total)
            current.append(task)
            return lambda done, _total: progress.update(task, completed=done)

        try:
            if task is DemoTask.keras:
                result = run_keras_demo(workdir.resolve(), KerasDemoSettings(), stage)
            else:
                result = run_demo(workdir.resolve(), settings, stage)
        except LauncherError:
            progress.stop()
            typer.echo(f"(worker logs: {workdir / 'logs'})", err=True)
            raise
        for task in current:
            progress.update(task, completed=progress.tasks[task].total)
    typer.echo(summary(result))


Context = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--context", help="kubeconfig context (default: the current one)")]
Namespace = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--namespace", "-n", help="namespace (default: the kubeconfig context's)")]
JobName = Annotated[str, typer.Argument(help="job name")]
Local = Annotated[bool, typer.Option("--local", help="the jobs `launcher run-local` ran on this "
                                                     "machine, not the cluster's")]


def _emit(data: Any, output: str | None) -> bool:
    """Print ``data`` as JSON or YAML when asked; True if printed."""
    import json

    import yaml

    if output == "json":
        typer.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    elif output:
        raise LauncherError(f"--output: {output!r} is not json or yaml")
    return bool(output)


@app.command()
@with_spec_options
def submit(
    spec_source: Any,
    context: Context = None,
    replace: Annotated[bool, typer.Option("--replace", help="delete an existing job of the "
                                                            "same name first")] = False,
    dry_run: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--dry-run", help="server: the API server validates, nothing is persisted")] = None,
    skip_checks: Annotated[bool, typer.Option("--skip-checks",
                                              help="skip the pre-submit checks")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job to its end")] = False,
) -> None:
    """Render, validate, check and create the job on the cluster (server-side apply, all or
    nothing)."""
    from launcher import api

    if dry_run not in (None, "server"):
        raise LauncherError(f"--dry-run: {dry_run!r}: only 'server' (use `launcher render` "
                            "for a client-side dry run)")
    spec, applied, checks = api.submit(spec_source, context, replace=replace,
                                       dry_run=dry_run == "server", checks=not skip_checks)
    _warn_image(spec)
    for check in checks:
        typer.echo(f"{check.level}: {check.message}", err=True)
    suffix = " (server dry run)" if dry_run else ""
    for obj in applied:
        typer.echo(f"{obj['kind'].lower()}/{obj['metadata']['name']} applied{suffix}")
    if wait and not dry_run:
        _wait(spec.name, spec.namespace, context)


def _wait(name: str, namespace: str, context: str | None) -> None:
    import time

    from launcher import api

    last = ""
    while True:
        st = api.status(name, namespace, context)
        line = (f"{st.phase}: {st.succeeded}/{st.workers} workers done"
                + (f", step {st.step}" if st.step is not None else "")
                + (f" - {st.explanation}" if st.explanation else ""))
        if line != last:
            typer.echo(line, err=True)
            last = line
        if st.phase in ("Succeeded", "Failed"):
            if st.phase == "Failed":
                raise typer.Exit(1)
            return
        time.sleep(5)


@app.command("status")
def status_cmd(name: JobName, namespace: Namespace = None, context: Context = None,
               output: Annotated[Optional[str], typer.Option(  # noqa: UP045
                   "--output", "-o", help="json or yaml")] = None, local: Local = False) -> None:
    """Phase, per-worker pods and restarts, progress, and why it failed."""
    from launcher import api

    st = api.status(name, namespace, context, local=local)
    if _emit(st.to_dict(), output):
        return
    progress = f"  step {st.step}/{st.steps or '?'}" if st.step is not None else ""
    typer.echo(f"{st.namespace}/{st.name}: {st.phase}  {st.succeeded}/{st.workers} done"
               f"{progress}")
    if st.failed_indexes:
        typer.echo(f"failed indexes: {st.failed_indexes}")
    typer.echo(f"{'INDEX':<6}{'POD':<32}{'PHASE':<12}{'RESTARTS':<10}DETAIL")
    for w in st.indexes:
        typer.echo(f"{w.index:<6}{w.pod:<32}{w.phase:<12}{w.restarts:<10}{w.detail}")
    if st.records:
        typer.echo(f"records: {st.records}")
    if st.explanation:
        typer.echo(f"why: {st.explanation}")


@app.command("logs")
def logs_cmd(name: JobName, namespace: Namespace = None, context: Context = None,
             follow_: Annotated[bool, typer.Option("--follow", "-f",
                                                   help="stream until the job ends")] = False,
             index: Annotated[Optional[int], typer.Option(  # noqa: UP045
                 "--index", help="one worker only")] = None,
             tail: Annotated[Optional[int], typer.Option(  # noqa: UP045
                 "--tail", help="last lines per pod")] = None, local: Local = False) -> None:
    """Every worker's log, prefixed with its index, replaced pods included."""
    from launcher import api

    if follow_:
        api.backend(context, local).follow(name, namespace, typer.echo, index)
        return
    for line in api.logs(name, namespace, context, index, tail, local=local):
        typer.echo(line)


@app.command("list")
def list_cmd(namespace: Annotated[Optional[str], typer.Option(  # noqa: UP045
                 "--namespace", "-n", help="default: all namespaces")] = None,
             context: Context = None,
             output: Annotated[Optional[str], typer.Option(  # noqa: UP045
                 "--output", "-o", help="json or yaml")] = None, local: Local = False) -> None:
    """Jobs this tool manages, with phase, workers, age and progress."""
    from launcher import api
    from launcher.runs import run_progress

    rows = api.list_jobs(namespace, context, local=local,
                         warn=lambda message: typer.echo(f"warning: {message}", err=True))
    for row in rows:
        row["step"] = run_progress(row["runDir"]) if row["runDir"] else None
    if _emit(rows, output):
        return
    typer.echo(f"{'NAMESPACE':<16}{'NAME':<32}{'PHASE':<11}{'WORKERS':<9}{'STEP':<8}CREATED")
    for r in rows:
        step = "-" if r["step"] is None else str(r["step"])
        typer.echo(f"{r['namespace']:<16}{r['name']:<32}{r['phase']:<11}{r['workers']:<9}"
                   f"{step:<8}{r['created']}")


@app.command("delete")
def delete_cmd(name: JobName, namespace: Namespace = None, context: Context = None,
               purge: Annotated[bool, typer.Option(
                   "--purge", help="also delete the run directory (asks first)")] = False,
               yes: Annotated[bool, typer.Option("--yes", "-y",
                                                 help="do not ask")] = False,
               local: Local = False) -> None:
    """Delete the Job (foreground: pods first), its Service and ServiceAccount."""
    from launcher import api

    if purge and not yes and not typer.confirm(
            f"delete the run directory of job {name} (checkpoints, model) too?"):
        raise typer.Exit(1)
    gone = api.delete(name, namespace, context, purge=purge, local=local)
    for item in gone:
        typer.echo(f"deleted {item}")


@image_app.command("build")
def image_build(
    kind: Annotated[str, typer.Option("--kind", help="gpu (GKE) or cpu (kind)")] = "gpu",
    registry: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--registry", help="e.g. us-docker.pkg.dev/PROJECT/REPO")] = None,
    tag: Annotated[Optional[str], typer.Option("--tag", help="default: the kind")] = None,  # noqa: UP045
    push: Annotated[bool, typer.Option("--push", help="push after building")] = False,
    network: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--network", help="the build's network: host on an engine without a bridge network "
        "(pip needs a route)")] = None,
    build_arg: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--build-arg", help="KEY=VALUE for docker build (repeatable); BASE_IMAGE overrides "
        "the kind's base")] = None,
) -> None:
    """docker build (and push) the trainer image from this checkout; prints its reference.

    Without --registry/--tag the reference is the profiles' default image, so specs need no
    [bold]image:[/] field: gpu for gke/generic, cpu for kind.
    """
    from launcher import images

    if kind not in images.BASE_IMAGES:
        raise LauncherError(f"--kind: {kind!r} is not gpu or cpu")
    args: dict[str, str] = {}
    for item in build_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LauncherError(f"--build-arg: {item!r} is not KEY=VALUE")
        args[key] = value
    ref = images.image_ref(kind, registry, tag)
    typer.echo(f"building {ref} from {images.base_image(kind, args)} "
               f"({images.source_root() / 'images' / 'Dockerfile'})", err=True)
    typer.echo(images.build(kind, registry, tag, push, network=network, build_args=args))


@kind_app.command("up")
def kind_up(name: ClusterName = "launcher") -> None:
    """Create the cluster (1 control plane, 2 workers) and deploy the GCS emulator."""
    from launcher import kind

    kind.up(name)
    typer.echo(f"cluster {name} is up (context {kind.context(name)}); GCS emulator at "
               f"{kind.HOST_EMULATOR} from this machine")


@kind_app.command("load")
def kind_load(
    image: Annotated[str, typer.Argument(help="image to side-load")] = "tf-finetune-trainer:cpu",
    name: ClusterName = "launcher",
) -> None:
    """kind load docker-image: make a locally built image available to every node."""
    from launcher import kind

    kind.load(image, name)


@kind_app.command("down")
def kind_down(name: ClusterName = "launcher") -> None:
    """Delete the cluster."""
    from launcher import kind

    kind.down(name)


@spec_app.command("init")
def spec_init(
    path: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="file to write; stdout when omitted", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write a commented example spec that documents every field."""
    from launcher.reference import example_spec_text

    text = example_spec_text()
    if path is None:
        sys.stdout.write(text)
        return
    from launcher.files import write_all

    if path.exists() and not force:
        raise LauncherError(f"{path}: exists; use --force to overwrite")
    write_all(path.parent, {path.name: text}, create_dir=False)
    typer.echo(f"wrote {path}", err=True)
