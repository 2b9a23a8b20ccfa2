"""The ``scaffold`` command line: a thin layer that turns flags into calls of the Python API.

Each command's docstring is its help text. Errors a user can cause are printed as one line per
problem, with the exit codes listed in :mod:`scaffold.errors`; ``--debug`` shows the traceback.
torch and transformers are imported inside the commands that need them, never at start-up.

Where each command lives (the pipeline, top to bottom):
  new         render.py     blueprint + manifest -> project folder (code, tokenizer, .scaffold/ last rendering)
  build       build.py      Project (project.py) -> prepare: code re-rendered (update.py), tokenizer remade
                            if its inputs changed (tokenizer.py) -> model directory + record
  import      importer.py   a local transformers model's config.json -> the manifest of a project reproducing it
  test        smoke.py      the build, loaded through the Auto classes, trained for a few steps;
                            devices.py answers which device, which dtype, how much memory
              distributed.py  the same steps in N processes (--nproc); runs.py records each run
  runs        runs.py       the recorded runs as a table, their loss curves on one figure
  sweep       sweep.py      every combination of a few --set values trained and compared (test's path)
  update      update.py     the project moved to the installed blueprint, merged with edits (merge.py)
  diff/status update.py     the user's edits, and whether the project is behind its blueprint
  show        show.py       what constructing the project gives, on the meta device
  verify      verify.py     a model directory checked against its build record
  schema      schema.py     every manifest key
  blueprints  blueprints.py the built-in families and their presets
Every folder a command replaces (project, model directory, checkpoint) is written by atomic.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from scaffold import __version__
from scaffold.cli.overrides import SET_OPTION, Overrides, override_options
from scaffold.errors import EXIT_INTEGRITY, EXIT_INTERNAL, EXIT_USAGE, ScaffoldError, UsageError

DEBUG_ENV = "SCAFFOLD_DEBUG"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so that it unwinds as Ctrl-C does: every ``finally``
    runs (worker processes stopped, temporary folders deleted, locks released)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while a command runs. A second signal acts at
    once (the default disposition is back); a signal already ignored (``nohup``) or handled by the
    program embedding scaffold is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        for s, h in previous.items():
            signal.signal(s, h)
        raise Terminated(signum)

    for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if s is not None and signal.getsignal(s) is signal.SIG_DFL:
            previous[s] = signal.SIG_DFL
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class ScaffoldGroup(click.Group):
    """A click group that prints ScaffoldErrors as one-line messages with their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from scaffold.atomic import sweep_scratch

        try:
            with signals_unwind():
                sweep_scratch()  # what killed runs left in the temporary directory
                return super().invoke(ctx)
        except ScaffoldError as err:
            if _debug(ctx):
                raise
            for line in str(err).splitlines() or [type(err).__name__]:
                click.echo(f"error: {line}", err=True)
            ctx.exit(err.exit_code)
        except OSError as err:  # permissions, a full disk: name the path and what failed
            if _debug(ctx) or (err.filename is None and err.errno not in _SYSTEM_ERRNOS):
                raise
            from scaffold.errors import file_access_error

            click.echo(f"error: {file_access_error(err)}", err=True)
            ctx.exit(EXIT_USAGE)
        except Terminated as err:
            click.echo(f"interrupted by {signal.Signals(err.signum).name}", err=True)
            ctx.exit(128 + err.signum)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except RecursionError as err:  # a file nested deeper than Python's parsers recurse (JSON, TOML)
            if _debug(ctx):
                raise
            click.echo(
                f"error: an input file is nested too deeply to read ({err}); a damaged or hostile config, "
                "record or index? (--debug shows which)",
                err=True,
            )
            ctx.exit(EXIT_INTEGRITY)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as err:  # a bug in scaffold or a library: say so plainly
            if _debug(ctx):
                raise
            from scaffold.errors import model_code_error

            user = model_code_error(err)  # unless the model's own code raised it: that is the user's
            if user is not None:
                click.echo(f"error: {user}", err=True)
                ctx.exit(user.exit_code)
            click.echo(
                f"internal error: {type(err).__name__}: {err} (run with --debug for the traceback)", err=True
            )
            ctx.exit(EXIT_INTERNAL)


# errors of the machine, not of scaffold: reported as one line even when the system names no file
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  internal error (a bug: rerun with --debug and report the traceback)
  2  usage: bad flags, manifest, project name, blueprint, device, data; or the folder is busy
  3  integrity: corrupt, truncated, incomplete or changed files on disk (see `scaffold verify`)
  4  test failure: `scaffold test` saw a non-finite loss or gradient
Errors are printed one line per problem, naming the file and the key or tensor."""


@click.group(
    cls=ScaffoldGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP
)
@click.version_option(__version__, prog_name="scaffold")
@click.option("--debug", is_flag=True, help=f"Show tracebacks for errors (or set {DEBUG_ENV}=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Declare a transformer language model in a TOML manifest, generate it as standalone Hugging Face
    code, build a model directory any transformers install can load, and smoke-test it on a device.

    \b
      scaffold new my_llama --from llama        # projects/my_llama/
      scaffold build projects/my_llama          # projects/my_llama/model/
      scaffold test projects/my_llama --device cpu
    """
    ctx.obj = {"debug": debug}


projects_dir_option = click.option(
    "--projects-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("projects"),
    show_default=True,
    help="Folder the project is created in.",
)


def _overrides(sets: tuple[str, ...]) -> dict:
    from scaffold.spec.manifest import parse_sets

    return parse_sets(sets)


@cli.command()
@click.argument("name")
@click.option(
    "--from",
    "blueprint",
    required=True,
    metavar="BLUEPRINT",
    help="Blueprint folder (blueprints/llama) or a built-in blueprint's name (llama).",
)
@click.option("--preset", help="Preset of the blueprint to start from (default: the blueprint's).")
@SET_OPTION
@projects_dir_option
@click.option(
    "--force",
    is_flag=True,
    help="Render an existing project of that name afresh; files scaffold did not write (.git, your scripts "
    "and data, model/, runs/) are kept. A project holding edits that git's last commit does not hold is "
    "refused unless --backup or --discard-edits is given too.",
)
@click.option("--backup", is_flag=True, help="With --force: keep the previous project as NAME.backup-<time>.")
@click.option(
    "--discard-edits", is_flag=True, help="With --force: replace a project even if its files hold edits."
)
def new(
    name: str,
    blueprint: str,
    preset: str | None,
    sets: tuple[str, ...],
    projects_dir: Path,
    force: bool,
    backup: bool,
    discard_edits: bool,
) -> None:
    """Create the project NAME from a blueprint: manifest, modeling and configuration files, tokenizer.

    The generated files are yours to edit: `scaffold build` re-renders them when the manifest changes
    and `scaffold update` when the blueprint does, merging with your edits.
    """
    from scaffold.project.new import create_project

    if (backup or discard_edits) and not force:
        raise UsageError("--backup and --discard-edits go with --force")
    path = create_project(
        name,
        blueprint,
        projects_dir=projects_dir,
        preset=preset,
        overrides=_overrides(sets),
        force=force,
        backup=backup,
        discard_edits=discard_edits,
    )
    click.echo(f"created {path}")
    click.echo(f"next: scaffold build {path}")


@cli.command(name="import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="Name of the project (default: the model folder's name).")
@projects_dir_option
@click.option(
    "--force",
    is_flag=True,
    help="Render an existing project of that name afresh (files scaffold did not write are kept).",
)
def import_cmd(path: Path, name: str | None, projects_dir: Path, force: bool) -> None:
    """Create a project that reproduces the transformers model at PATH (a local model folder or its
    config.json): the family from its model_type, the sizes and structure from its config. Features no
    part expresses (mixture of experts, latent attention, vision towers) are refused, naming the key."""
    from scaffold.project.importer import import_project

    project = import_project(path, name=name, projects_dir=projects_dir, force=force)
    click.echo(f"created {project}")
    weights = " --load-from-checkpoint " + str(path if Path(path).is_dir() else Path(path).parent)
    click.echo(f"next: scaffold build {project}{weights} --save-weights")


@cli.command()
@click.argument("project", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace a stale or foreign build in the output folder.")
@click.option("--save-weights", is_flag=True, help="Also save initialised weights as safetensors.")
@override_options
def build(project: Path, force: bool, save_weights: bool, overrides: Overrides) -> None:
    """Build PROJECT into a Hugging Face model directory that loads with trust_remote_code=True.

    An up-to-date build is kept; a stale one (manifest, code, blueprint or scaffold changed) is replaced
    only with --force. Deleting the output folder always gives a fresh build.

    The project's code is built as it is, edits included. When the manifest changed since the code was
    last rendered, it is re-rendered first and merged with your edits (one line per file changed);
    conflicts are marked inline and the build refuses until they are resolved.

    Model flags override the manifest for this build. --load-from-checkpoint saves that checkpoint's
    weights into the directory (loaded strictly into the model); --device, --dtype and
    --no-init-weights steer how saved weights are made, so they need --save-weights or
    --load-from-checkpoint. --attn-implementation is chosen at load time, not built in.
    """
    from scaffold.build import WeightOptions
    from scaffold.build import build as do_build

    overrides.refuse("build", ["attn_implementation"], "(the backend is chosen when the model is loaded)")
    writes_weights = save_weights or overrides.checkpoint is not None
    if not writes_weights:
        overrides.refuse(
            "build",
            ["device", "dtype", "no_init_weights"],
            "without --save-weights or --load-from-checkpoint (no weights are made)",
        )
    if overrides.no_init_weights and overrides.checkpoint is None:
        raise UsageError(
            "--no-init-weights with --save-weights would save uninitialised weights; "
            "add --load-from-checkpoint"
        )
    proj = overrides.load_project(project)
    weights = None
    if overrides.checkpoint is not None or overrides.device or overrides.dtype:
        weights = WeightOptions(
            checkpoint=overrides.checkpoint,
            device=overrides.device,
            dtype=overrides.dtype,
            no_init=overrides.no_init_weights,
        )
    result = do_build(proj, overrides.output_dir, force=force, save_weights=save_weights, weights=weights)
    click.echo(result.message)


def _doc(path: str) -> str:
    """A manifest key's one doc line (scaffold/spec/schema.py), reused as the help of the flag that sets it."""
    from scaffold.spec.schema import BY_PATH

    return BY_PATH[path].doc


def _seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """--timeout: a finite number of seconds, more than 0 and at most MAX_TIMEOUT (nan, inf and 1e300
    pass click's FloatRange but no timer takes them)."""
    import math

    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise click.BadParameter(
            f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, got {value}"
        )
    return value


MAX_TIMEOUT = 7 * 24 * 3600.0  # a week


def _option_doc(name: str) -> str:
    """A command-line option's help, written once in scaffold/spec/schema.py."""
    from scaffold.spec.schema import OPTIONS

    return OPTIONS[name]


@cli.command(name="test")
@click.argument("project", type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), help=_doc("test.steps"))
@click.option("--batch-size", type=click.IntRange(min=1), help=_doc("test.batch_size"))
@click.option("--sequence-length", type=click.IntRange(min=1), help=_doc("test.sequence_length"))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help=_doc("test.lr"))
@click.option(
    "--gradient-checkpointing", is_flag=True, default=None, help=_doc("test.gradient_checkpointing")
)
@click.option(
    "--fuse-optim-with-backward",
    is_flag=True,
    default=None,
    help=_doc("test.fuse_optim_with_backward"),
)
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), help=_doc("test.seed"))
@click.option(
    "--force", is_flag=True, help="Rebuild a stale or damaged build of PROJECT (as `scaffold build --force`)."
)
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    help="Train on this text, JSON Lines, CSV or Parquet file, folder of them, save_to_disk folder, "
    "dataset.toml or shipped sample (sample:tinyshakespeare) instead of random tokens.",
)
@click.option(
    "--dataset-project",
    type=click.Path(path_type=Path),
    help="A dataset project: a folder holding a dataset.toml (the seed's spelling of --dataset DIR).",
)
@click.option("--dataset-config", help="The configuration of the dataset.toml to use.")
@click.option(
    "--packed/--no-packed",
    default=None,
    help=_doc("test.packed"),
)
@click.option(
    "--random-tokens",
    is_flag=True,
    help="Train on random tokens whatever test.dataset says (a quick smoke test: --random-tokens --steps 3).",
)
@click.option("--no-record", is_flag=True, help="Do not write a run record under PROJECT/runs/.")
@click.option(
    "--nproc",
    type=int,
    help="Run in N processes through torch.distributed.run (gloo on the CPU, NCCL with one GPU each).",
)
@click.option(
    "--parallel",
    type=click.Choice(["ddp", "fsdp2", "tp"]),
    help="With --nproc: DistributedDataParallel, FSDP2 (fully_shard per decoder layer) or tensor "
    'parallelism (from_pretrained(tp_plan="auto")). Default ddp.',
)
@click.option(
    "--timeout",
    type=float,
    callback=_seconds,
    help="With --nproc: stop every process when the run takes longer than this many seconds (default 900).",
)
@click.option(
    "--compare/--no-compare",
    default=None,
    help="With --nproc: also run one process and print the largest loss difference (default on; under "
    "your own launcher, off).",
)
@click.option("--nnodes", type=int, help=_option_doc("nnodes"))
@click.option("--node-rank", type=int, help=_option_doc("node_rank"))
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help=_option_doc("rdzv_endpoint"))
@click.option("--rdzv-id", metavar="NAME", help=_option_doc("rdzv_id"))
@override_options
def test_cmd(project: Path, overrides: Overrides, force: bool, no_record: bool, **flags: Any) -> None:
    """Train the built model of PROJECT for a few steps: forward, backward and optimizer, on random
    tokens or on a dataset tokenized with the model's own tokenizer.

    Prints the loss as it goes (every step of a short run, ten to twenty lines of a long one), then the
    parameter count, the loss first and last, tokens per second and peak memory. A non-finite loss or
    gradient stops the run (exit 4); bad data stops it before training (exit 2). Options default to
    the manifest's [test] table.

    Model flags (and --set outside [test]) test a variant: it is built into a temporary folder unless
    --output-dir is given, so PROJECT/model is left alone. --load-from-checkpoint loads those weights
    (strictly, converted to --dtype); --no-init-weights constructs without init and loads the weights
    from the checkpoint or the model directory.

    Each run is recorded in PROJECT/runs/<time>-<id>/ (options, model config, per-step loss, learning
    rate, tokens/s and memory, the summary and a loss-curve PNG) unless --no-record; `scaffold runs`
    lists and plots them. A progress bar shows when stderr is a terminal.

    Several machines: run the same command on each with --nproc, --nnodes and --rdzv-endpoint; or start
    it under your own launcher (torchrun ... -m scaffold test PROJECT, or srun with MASTER_ADDR and
    MASTER_PORT set) without --nproc: each process is then one rank, and rank 0 keeps the record.
    """
    from scaffold.atomic import scratch_dir
    from scaffold.build import build_for_test
    from scaffold.data import is_sample
    from scaffold.devices import resolve_device, resolve_dtype
    from scaffold.run.runs import record_options, recording
    from scaffold.run.smoke import TestOptions, precision, run

    launch_keys = (
        "nproc",
        "parallel",
        "timeout",
        "compare",
        "nnodes",
        "node_rank",
        "rdzv_endpoint",
        "rdzv_id",
    )
    launch_flags = {k: flags.pop(k) for k in launch_keys}
    nproc, compare = launch_flags["nproc"], launch_flags["compare"]
    random_tokens = flags.pop("random_tokens")
    test_flags = {k: v for k, v in _dataset_flags(flags).items() if v is not None}
    if random_tokens:
        given = [
            f"--{k.replace('_', '-')}" for k in ("dataset", "dataset_config", "packed") if k in test_flags
        ]
        if given:
            raise UsageError(f"--random-tokens and {', '.join(given)} disagree: give one")
        test_flags.update(dataset="", dataset_config="", packed=False)
    proj = overrides.load_project(project, {"test": test_flags})
    options = TestOptions(**proj.manifest["test"])
    if options.dataset and not is_sample(options.dataset) and not Path(options.dataset).is_absolute():
        options.dataset = str(proj.path / options.dataset)  # the manifest's: relative to the project
    _check_dataset_options(options)
    _check_sequence_length(options, proj, "sequence_length" in test_flags)
    device = resolve_device(options.device)  # refuse a device that does not exist before building anything
    resolve_dtype(options.dtype)
    from scaffold.run.distributed import launched

    me = launched() if nproc is None else None
    if me is not None:
        _refuse_launch_flags(launch_flags)
        return _test_as_rank(me, proj, options, device, overrides, force, no_record, launch_flags)
    dist = _distributed_options(launch_flags, options, device)
    if overrides.checkpoint is not None:
        from scaffold.build.checkpoint import find_checkpoint

        find_checkpoint(overrides.checkpoint)  # a missing checkpoint is refused before building
    with scratch_dir("test") as tmp:
        output_dir = overrides.output_dir
        if output_dir is None and overrides.changes_build:
            output_dir = Path(tmp) / "model"
        result = build_for_test(proj, output_dir, force=force)
        if output_dir is None or overrides.output_dir:
            click.echo(result.message)
        else:
            click.echo(f"built a temporary model directory for {' '.join(overrides.build_flags())}")
        record = record_options(proj, options, device, overrides, result.output_dir)
        with recording(
            None if no_record else proj.path, record, result.output_dir, device, options.steps, click.echo
        ) as rec:
            if dist is not None:
                from scaffold.run.distributed import launch

                procs = f"{dist.nproc} process{'es' if dist.nproc > 1 else ''}"
                nodes = f" on each of {dist.nnodes} nodes" if dist.nnodes > 1 else ""
                click.echo(
                    f"testing {proj.name} ({proj.blueprint.name}) with {dist.parallel} over {procs}"
                    f"{nodes} on {device.type}, {precision(options)}"
                )
                report = launch(
                    result.output_dir,
                    options,
                    dist,
                    checkpoint=overrides.checkpoint,
                    no_init=overrides.no_init_weights,
                    compare=compare is not False,
                )
            else:
                click.echo(f"testing {proj.name} ({proj.blueprint.name}) on {device}, {precision(options)}")
                report = run(
                    result.output_dir,
                    options,
                    checkpoint=overrides.checkpoint,
                    no_init=overrides.no_init_weights,
                    on_step=rec.step if rec else None,
                )
            said = rec.finish("completed", report) if rec else []
    for line in said:
        click.echo(line)
    click.echo(report.summary())  # the last line, as before records


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _distributed_options(flags: dict[str, Any], options: Any, device: Any):
    """--nproc and its companions as DistributedOptions (None: one process); bad values are usage errors."""
    from scaffold.run.distributed import DEFAULT_TIMEOUT, DistributedOptions, check

    if flags["nproc"] is None:
        for key, value in flags.items():
            if value is not None:
                raise UsageError(f"{_flag(key)} needs --nproc")
        return None
    dist = DistributedOptions(
        nproc=flags["nproc"],
        parallel=flags["parallel"] or "ddp",
        timeout=flags["timeout"] or DEFAULT_TIMEOUT,
        nnodes=1 if flags["nnodes"] is None else flags["nnodes"],
        node_rank=flags["node_rank"],
        rdzv_endpoint=flags["rdzv_endpoint"],
        rdzv_id=flags["rdzv_id"] or "scaffold",
    )
    for key in ("node_rank", "rdzv_id"):
        if flags[key] is not None and dist.nnodes == 1:
            raise UsageError(f"{_flag(key)} needs --nnodes above 1")
    check(dist, options, device)
    return dist


def _refuse_launch_flags(flags: dict[str, Any]) -> None:
    """Under the user's own launcher, the launcher decides the processes and the rendezvous."""
    for key in ("nnodes", "node_rank", "rdzv_endpoint", "rdzv_id"):
        if flags[key] is not None:
            raise UsageError(
                f"{_flag(key)} is for `scaffold test --nproc N` (scaffold starts torch.distributed.run); "
                "this process already runs under a launcher (RANK and WORLD_SIZE are set), which decides it"
            )


def _test_as_rank(
    me: Any,
    proj: Any,
    options: Any,
    device: Any,
    overrides: Overrides,
    force: bool,
    no_record: bool,
    flags: dict[str, Any],
) -> None:
    """`scaffold test` as one rank of a job the user's launcher (torchrun, srun) started: the build is
    made in turn (rank 0 first), every rank trains its share, rank 0 records the run and prints it."""
    from scaffold.atomic import scratch_dir
    from scaffold.build import build_for_test
    from scaffold.run.distributed import DEFAULT_TIMEOUT, in_turn, process_group, train_as_rank
    from scaffold.run.runs import record_options, recording
    from scaffold.run.smoke import precision, run

    def echo(line: str) -> None:
        if me.rank == 0:
            click.echo(line)

    parallel = flags["parallel"] or "ddp"
    timeout = flags["timeout"] or DEFAULT_TIMEOUT
    if overrides.checkpoint is not None:
        from scaffold.build.checkpoint import find_checkpoint

        find_checkpoint(overrides.checkpoint)
    with process_group(me, device, timeout) as rank_device, scratch_dir("test") as tmp:
        output_dir = overrides.output_dir
        if output_dir is None and overrides.changes_build:
            output_dir = Path(tmp) / "model"  # this rank's own
        result = in_turn(me, lambda: build_for_test(proj, output_dir, force=force))
        echo(result.message)
        record = record_options(proj, options, device, overrides, result.output_dir)
        record["distributed"] = {"parallel": parallel, "world_size": me.world}
        project_dir = None if no_record or me.rank != 0 else proj.path
        with recording(project_dir, record, result.output_dir, rank_device, options.steps, echo) as rec:
            echo(
                f"testing {proj.name} ({proj.blueprint.name}) with {parallel} as rank {me.rank} of "
                f"{me.world} (your launcher) on {device.type}, {precision(options)}"
            )
            report = train_as_rank(
                me,
                result.output_dir,
                options,
                parallel,
                rank_device,
                timeout=timeout,
                checkpoint=overrides.checkpoint,
                no_init=overrides.no_init_weights,
                on_step=rec.step if rec else None,
            )
            if flags["compare"] and me.rank == 0:
                echo("one process, for comparison:")
                reference = run(
                    result.output_dir,
                    options,
                    log=lambda line: None,
                    checkpoint=overrides.checkpoint,
                    no_init=overrides.no_init_weights,
                )
                report.reference_losses = reference.losses
            said = rec.finish("completed", report) if rec else []
    for line in said:
        echo(line)
    echo(report.summary())


def _dataset_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """--dataset / --dataset-project as the test.dataset key; a path given here is relative to the cwd."""
    from scaffold.data import DATASET_MANIFEST, is_sample
    from scaffold.errors import UsageError

    dataset, dataset_project = flags.pop("dataset", None), flags.pop("dataset_project", None)
    if dataset is not None and dataset_project is not None:
        raise UsageError("give --dataset or --dataset-project, not both")
    if dataset_project is not None:
        dataset = dataset_project / DATASET_MANIFEST
    if dataset is not None:
        flags["dataset"] = str(dataset) if is_sample(str(dataset)) else str(dataset.absolute())
    return flags


def _check_sequence_length(options: Any, proj: Any, from_flag: bool) -> None:
    """A sequence must hold a next token to predict, and fit the model's positions."""
    from scaffold.errors import UsageError
    from scaffold.spec.manifest import MANIFEST_NAME

    where = (
        {"key": "--sequence-length"}
        if from_flag
        else {"path": proj.path / MANIFEST_NAME, "key": "test.sequence_length"}
    )
    length = options.sequence_length
    if length < 2:
        raise UsageError(f"{length} token(s) leave no next token to predict; use 2 or more", **where)
    longest = proj.manifest["model"].get("max_position_embeddings")
    if isinstance(longest, int) and length > longest:
        raise UsageError(f"{length} is longer than model.max_position_embeddings = {longest}", **where)


def _check_dataset_options(options: Any) -> None:
    """Dataset options that mean nothing without a dataset are errors; a dataset that cannot be found
    is reported before anything is built."""
    from scaffold.data import resolve
    from scaffold.errors import UsageError

    if not options.dataset:
        for flag, value in (("--dataset-config", options.dataset_config), ("--packed", options.packed)):
            if value:
                raise UsageError(f"{flag} needs a dataset (--dataset or --dataset-project)")
        return
    resolve(options.dataset, options.dataset_config or None)


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
def verify(model_dir: Path) -> None:
    """Check MODEL_DIR (or a project's model/) against the record its build wrote (scaffold-build.json).

    Names every file that is missing, changed (size or sha256) or extra, and every safetensors file
    that does not load or disagrees with its index. Exit 3 when anything is wrong.
    """
    from scaffold.build.verify import verify as do_verify

    click.echo(do_verify(model_dir))


@cli.command()
@click.argument("project", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the description to this file instead of printing it.",
)
@click.option(
    "-e", "--edit", is_flag=True, help="Write the description to a temporary file and open it in $EDITOR."
)
@override_options
def show(project: Path, output_file: Path | None, edit: bool, overrides: Overrides) -> None:
    """Show what constructing PROJECT gives: the resolved configuration, the tokenizer, the model's
    module tree and its parameter count.

    The model is constructed on the meta device (no memory, no init), so the largest presets show in
    well under a second; --device constructs it for real there (then --no-init-weights applies).
    --load-from-checkpoint checks that a checkpoint fits the model (from its headers on the meta
    device; loaded on a real device). --output-dir names the build to report on.
    """
    import tempfile

    from scaffold.cli.show import ShowOptions, describe

    proj = overrides.load_project(project)
    text = describe(
        proj,
        ShowOptions(
            device=overrides.device,
            dtype=overrides.dtype,
            attn_implementation=overrides.attn_implementation,
            no_init=overrides.no_init_weights,
            checkpoint=overrides.checkpoint,
            output_dir=overrides.output_dir,
            flags=tuple(overrides.flags_given()),
        ),
    )
    if edit and output_file is None:
        fd, name = tempfile.mkstemp(prefix=f"scaffold-show-{proj.name}-", suffix=".txt")
        os.close(fd)
        output_file = Path(name)
    if output_file is not None:
        from scaffold.atomic import write_text

        write_text(output_file, text)  # whole or not at all: never a 0-byte file on a full disk
        click.echo(f"wrote {output_file}", err=True)
    else:
        click.echo(text, nl=False)
    if edit:
        click.edit(filename=str(output_file))


@cli.command()
@click.argument("project", type=click.Path(path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Print what would change (one line per file, then a diff); write nothing."
)
@click.option(
    "--adopt",
    is_flag=True,
    help="Take in a project made before scaffold kept its last rendering: files that differ from the "
    "installed blueprint's rendering are kept exactly as they are, as your edits.",
)
def update(project: Path, dry_run: bool, adopt: bool) -> None:
    """Move PROJECT to the installed version of its blueprint, keeping your edits.

    Manifest keys the blueprint renamed, added or removed since are migrated (its migration table is
    data; no template code runs), the code is re-rendered and merged three ways with your edits (the
    code as last rendered, yours, the new rendering), and the new version is recorded in the manifest
    and the answers file. Conflicts are written inline with markers; build and test refuse until they
    are resolved. Written whole or not at all.
    """
    from scaffold.project.update import update_project

    click.echo(update_project(project, dry_run=dry_run, adopt=adopt))


@cli.command(name="diff")
@click.argument("project", type=click.Path(path_type=Path))
def diff_cmd(project: Path) -> None:
    """Show what you changed in PROJECT's generated files since scaffold last rendered them (a unified
    diff), whether the manifest changed since, and whether the project is behind the installed blueprint.
    `scaffold status` is the same command."""
    from scaffold.project.update import status

    click.echo(status(project))


cli.add_command(diff_cmd, name="status")


@cli.command()
@click.argument("targets", nargs=-1, required=True, metavar="PROJECT | RUN...")
@click.option(
    "--plot", is_flag=True, help="Draw the loss curves of the RUNs (a PROJECT: all its runs) on one figure."
)
@click.option(
    "-o",
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG file --plot writes (default for one PROJECT: PROJECT/runs/all-runs.png).",
)
def runs(targets: tuple[str, ...], plot: bool, output_file: Path | None) -> None:
    """List the runs `scaffold test` recorded for PROJECT, or with --plot draw several runs' loss
    curves on one figure: runs of different projects too, to compare two architectures.

    \b
      scaffold runs projects/my_llama
      scaffold runs --plot projects/my_llama                # every run, in projects/my_llama/runs/all-runs.png
      scaffold runs --plot projects/a:latest projects/b:20260101T120000Z-1a2b3c -o compare.png
      scaffold runs --plot projects/a/runs/20260101T120000Z-1a2b3c projects/b:latest -o compare.png

    A RUN is a run folder or PROJECT:RUN, where RUN is a run id, a unique prefix of one, or latest.
    Plotting needs matplotlib (pip install 'scaffold[plot]').
    """
    from scaffold.run.runs import ALL_RUNS_PLOT, RUNS_DIR, is_project, plot_runs, runs_of, runs_table

    if not plot:
        if output_file is not None:
            raise UsageError("-o/--output-file goes with --plot")
        for i, target in enumerate(targets):
            if len(targets) > 1:
                click.echo(("\n" if i else "") + f"{target}:")
            click.echo(runs_table(Path(target)), nl=False)
        return
    if output_file is None:
        if len(targets) != 1 or not is_project(Path(targets[0])):
            raise UsageError("--plot needs -o FILE (the PNG to write) unless it is given one PROJECT")
        output_file = Path(targets[0]) / RUNS_DIR / ALL_RUNS_PLOT
    chosen = runs_of(targets)
    if not output_file.name or output_file.name in (".", "..") or output_file.is_dir():
        raise UsageError(f"-o/--output-file must name a file to write, got {str(output_file)!r}")
    labels = plot_runs(chosen, output_file)
    click.echo(f"wrote {output_file}: {len(labels)} loss curves ({', '.join(labels)})")


@cli.command()
@click.argument("project", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "sets",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2,...",
    help="A manifest key and the values to try, comma-separated (each read as TOML, as --set reads it); "
    "one value fixes the key for every variant. Repeatable: every combination is trained.",
)
@click.option("--steps", type=click.IntRange(min=1), help=_doc("test.steps"))
@click.option("--batch-size", type=click.IntRange(min=1), help=_doc("test.batch_size"))
@click.option("--sequence-length", type=click.IntRange(min=1), help=_doc("test.sequence_length"))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help=_doc("test.lr"))
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), help=_doc("test.seed"))
@click.option("--device", help=_doc("test.device"))
@click.option("--dtype", help=_doc("test.dtype"))
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    help="Train every variant on this dataset (as `scaffold test --dataset`), e.g. sample:tinyshakespeare.",
)
@click.option("--packed/--no-packed", default=None, help=_doc("test.packed"))
@click.option(
    "-o",
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG of every variant's loss curve (default PROJECT/runs/sweep-<id>.png).",
)
def sweep(project: Path, sets: tuple[str, ...], output_file: Path | None, **flags: Any) -> None:
    """Train every combination of the values given with --set, from the same seed on the same data,
    and compare them: one table (parameters, loss first -> last, best loss, tokens/s, peak memory)
    and one figure of all the loss curves.

    \b
      scaffold sweep projects/my_llama --set model.norm_position=pre,post,sandwich \\
          --set model.qk_norm=none,head --dataset sample:tinyshakespeare --steps 100

    Each variant is built into a temporary folder and trained as `scaffold test PROJECT --set ...`
    would; the project's files and model/ are left as they are. Each leaves a run record in
    PROJECT/runs/. Rerunning the same command skips the variants already completed, so a stopped
    sweep resumes; a variant that fails does not stop the others, and its row says why (the exit code
    is then the first failure's).
    """
    from scaffold.cli.sweep import failed, run_sweep, table

    layer = {k: v for k, v in _dataset_flags(flags).items() if v is not None}
    result = run_sweep(project, sets, layer, echo=click.echo, plot_file=output_file)
    click.echo(table(result), nl=False)
    bad = failed(result)
    if bad:
        click.echo(
            f"error: {len(bad)} of {len(result.variants)} variants did not complete (their rows say why); "
            "rerun the command to retry them",
            err=True,
        )
        click.get_current_context().exit(bad[0].exit_code)


@cli.command()
def schema() -> None:
    """Print every manifest key with its type and meaning."""
    from scaffold.spec.schema import describe

    click.echo(describe(), nl=False)


@cli.command(name="blueprints")
def list_blueprints() -> None:
    """List the built-in blueprints and their presets."""
    from scaffold.spec.blueprints import builtin_names, load

    for name in builtin_names():
        bp = load(name)
        click.echo(f"{bp.name} {bp.version}: {bp.meta.get('description', '')}")
        click.echo(f"    presets: {', '.join(bp.presets)} (default {bp.default_preset})")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="scaffold")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
