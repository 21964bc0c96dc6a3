"""`clipforge`: curate videos into a clip dataset as a VideoCurationJob manifest says, and work with its output."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TextIO

from clipforge import logs
from clipforge.spec import InvalidJobError, RunReport, RunState, load_job

# Exit statuses of `clipforge run` (README: "Exit statuses"). 3: every video was processed and
# the failed ones are within execution.failures' limits; 1: the job failed (too many failed
# videos, dedup, or an error of the run itself).
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_COMPLETED_WITH_FAILURES, EXIT_NO_INPUT = 0, 1, 2, 3, 4


def _format_summary(summary: RunReport) -> str:
    videos, clips = summary.videos, summary.clips
    hours = summary.video_seconds_processed / 3600
    lines = [
        f"videos: {videos.total} total, {videos.done - videos.skipped} curated, "
        f"{videos.skipped} already done, {videos.failed} failed"
        + (f" ({videos.unmatched} other files matched no pattern)" if videos.unmatched else ""),
        f"clips: {clips.passed} passed, {clips.filtered} filtered, {clips.failed} failed",
        f"input: {hours:.3f} h of video in {summary.elapsed_seconds:.1f} s: "
        f"{summary.throughput_video_seconds_per_second:.2f} video-s/s, {summary.clips_per_second:.2f} clips/s",
    ]
    if summary.dedup:
        lines.append(_format_dedup(summary.dedup))
    for failure in summary.failures or []:
        reasons = "; ".join(f"{stage}: {msg}" for stage, msg in failure.errors.items())
        note = (" (the environment's: a rerun tries it again)" if failure.retryable else
                " (recorded by an earlier run; --retry-failed tries it again)" if failure.earlier else "")
        lines.append(f"FAILED {failure.video}{note}: {reasons}")
    if summary.state == RunState.completed_with_failures:
        lines.append(f"completed with failures: {videos.failed} of {videos.total} videos,"
                     f" {clips.failed} clips failed")
    elif summary.state == RunState.no_input:
        lines.append(f"nothing to curate: {summary.message}")
    elif summary.reason:
        lines.append(f"job failed: {summary.message}")
    lines.append(f"output: {summary.output}")
    lines.append(f"report: {_report_page(summary.output)}")
    return "\n".join(lines)


def _report_page(output: str) -> str:
    from clipforge import layout

    return layout.report_page(output)


def _format_dedup(dedup: dict) -> str:
    if "error" in dedup:
        return f"dedup FAILED: {dedup['error']}"
    return (
        f"dedup: {dedup['clips']} clips, {dedup['kept']} kept, {dedup['duplicates']} duplicates"
        f" (eps {dedup['eps']:g}, {dedup['clusters']} clusters)"
    )


@contextlib.contextmanager
def lines_above_the_bar() -> Iterator[TextIO]:
    """While a progress bar is drawn, what is written to sys.stdout and sys.stderr (Ray's
    forwarded worker lines) and log records go above it instead of into its line; yields the
    stderr the bar draws on."""
    from tqdm.contrib import DummyTqdmFile
    from tqdm.contrib.logging import logging_redirect_tqdm

    out, err = sys.stdout, sys.stderr
    # The logging redirect first: it finds the console handler by its stream being sys.stderr.
    with logging_redirect_tqdm():
        sys.stdout, sys.stderr = DummyTqdmFile(out), DummyTqdmFile(err)
        try:
            yield err
        finally:
            sys.stdout, sys.stderr = out, err


def cmd_run(args: argparse.Namespace) -> int:
    job = load_job(args.job)  # InvalidJobError before any work
    from tqdm import tqdm

    from clipforge.runner import CURATING, OutputLost, RunNotStarted, RunStats, run_job

    if _model_problems(job.spec):  # missing weights fail here, at submission, not in an actor
        return EXIT_INVALID
    bar = None  # drawn once the inputs are listed: a run that cannot start draws none

    def on_progress(stats: RunStats) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=stats.total - stats.skipped, unit="video", disable=args.no_progress or args.quiet or None,
                       desc=job.metadata.name, file=terminal)
        bar.total = stats.total - stats.skipped  # it grows as the inputs are listed
        bar.set_description_str(job.metadata.name if stats.phase == CURATING else f"{job.metadata.name} ({stats.phase})",
                                refresh=False)
        bar.update(stats.done + stats.failed - bar.n)
        bar.set_postfix(clips=stats.clips_passed + stats.clips_passed_unfinished, filtered=stats.clips_filtered,
                        videos_failed=stats.failed)

    try:
        with lines_above_the_bar() as terminal:
            summary = run_job(job, executor=args.executor, ray_address=args.ray_address, overwrite=args.overwrite,
                              on_progress=on_progress, retry_failed=args.retry_failed, force_unlock=args.force_unlock)
    except RunNotStarted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OutputLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if bar is not None:
            bar.close()
    if summary.dedup and "error" in summary.dedup:
        print(f"error: dedup: {summary.dedup['error']}", file=sys.stderr)
    print(_format_summary(summary))
    return {RunState.succeeded: EXIT_OK, RunState.completed_with_failures: EXIT_COMPLETED_WITH_FAILURES,
            RunState.no_input: EXIT_NO_INPUT}.get(summary.state, EXIT_FAILED)


def cmd_dedup(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    from clipforge import layout
    from clipforge.dedup import DedupError
    from clipforge.runner import dedup_job
    from clipforge.storage import StorageError

    try:
        dedup = dedup_job(job, args.ray_address)
    except (DedupError, StorageError) as exc:
        print(f"error: dedup: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(_format_dedup(dedup))
    print(f"output: {layout.join(job.spec.output.uri, 'dedup')}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    print(f"{args.job}: valid VideoCurationJob {job.metadata.name}")
    return EXIT_OK


def _model_problems(spec) -> list[str]:  # noqa: ANN001
    from clipforge import preflight

    problems = preflight.check(spec)
    if problems:
        print("error: models missing:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
    return problems


def cmd_models(args: argparse.Namespace) -> int:
    from clipforge import preflight

    job = load_job(args.job)
    print(preflight.format_requirements(job.spec))
    if _model_problems(job.spec):
        return EXIT_INVALID
    print("all models in place")
    return EXIT_OK


def _output_storage(args: argparse.Namespace):  # noqa: ANN202
    from clipforge.storage import Storage

    return Storage(endpoint=args.endpoint, region=args.region)


def cmd_report(args: argparse.Namespace) -> int:
    from clipforge import clip_index, layout
    from clipforge.report import write_report
    from clipforge.storage import StorageError

    storage = _output_storage(args)
    index_dir = layout.join(args.output, layout.INDEX)
    try:
        # The runs' commits keep the index current; it is rebuilt from the records when asked, and
        # when it is missing or an older ClipForge's.
        rebuild = args.rebuild_index or not clip_index.is_current(storage, args.output)
        index = clip_index.write_output_index(storage, args.output) if rebuild else None
        page = write_report(storage, args.output)
    except (clip_index.NotAnOutputError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if index is None:
        print(f"index: {index_dir} (as the runs committed it; --rebuild-index rebuilds it from the records)")
    else:
        print(f"index: rebuilt, {index.clips} clips, {index.videos} videos in {index_dir}")
    print(f"report: {page}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from clipforge.clip_index import NotAnOutputError
    from clipforge.export import ExportError, export_webdataset
    from clipforge.storage import StorageError

    try:
        result = export_webdataset(_output_storage(args), args.output, args.dest, args.shard_size, args.seed)
    except (ExportError, NotAnOutputError, StorageError) as exc:
        print(f"error: export: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"exported {result.clips} clips in {len(result.shards)} shards to {args.dest}"
          f" ({result.written} written now, {len(result.shards) - result.written} already there)")
    return EXIT_OK


def _shard_size(text: str) -> int:
    from clipforge.export import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="S3 endpoint for s3:// paths (default: $AWS_ENDPOINT_URL; unset: AWS)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"),
                        help="S3 region (default: $AWS_REGION, else us-east-1)")


def cmd_samples(args: argparse.Namespace) -> int:
    from clipforge.samples import write_samples

    for path in write_samples(Path(args.directory)):
        print(path)
    return EXIT_OK


def _logging_options(parser: argparse.ArgumentParser, default: bool) -> None:
    """--log-level and --quiet, before the command (`default`: the values when not given) and
    after it (no defaults there: those would override the values given before the command)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--log-level", choices=logs.LEVELS, default=logs.DEFAULT_LEVEL if default else argparse.SUPPRESS,
                       help=f"what ClipForge and its Ray workers log (default {logs.DEFAULT_LEVEL})")
    group.add_argument("--quiet", action="store_true", default=False if default else argparse.SUPPRESS,
                       help="only errors and the final summary: no progress bar, no warnings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('clipforge')}",
                        help="print ClipForge's version and exit")
    _logging_options(parser, default=True)
    common = argparse.ArgumentParser(add_help=False)
    _logging_options(common, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (`clipforge COMMAND --help` for its arguments)")

    def command(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's name
        return sub.add_parser(name, help=help, description=help, parents=[common])

    job_help = "the VideoCurationJob manifest (the same file kubectl applies)"
    run = command("run", "run a VideoCurationJob manifest")
    run.add_argument("job", help=job_help)
    run.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (default: $RAY_ADDRESS; unset starts a local Ray for this run)",
    )
    run.add_argument("--executor", choices=["ray", "local"], help="override spec.execution.executor")
    run.add_argument("--overwrite", action="store_true", help="redo videos already recorded in processed_videos/")
    run.add_argument("--force-unlock", action="store_true",
                     help="remove every run's claim on the output first (leases/): only when the run that holds it"
                          " is gone; two runs on one output destroy each other's clips")
    run.add_argument("--retry-failed", action="store_true",
                     help="try again the videos recorded as failed by their input (a plain rerun tries again only"
                          " those failed by the environment: storage, memory, an encoder, a killed worker)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    dedup = command("dedup", "deduplicate an existing output's clip embeddings (dedup.inputUri or output.uri)")
    dedup.add_argument("job", help=job_help)
    dedup.add_argument(
        "--ray-address",
        help="spread the per-cluster work over this Ray cluster (unset: in-process); 'local' starts a local Ray",
    )
    dedup.set_defaults(func=cmd_dedup)

    validate = command("validate", "check a manifest and list every problem")
    validate.add_argument("job", help=job_help)
    validate.set_defaults(func=cmd_validate)

    models = command("models", "list the models the job's stages need and check they are in place")
    models.add_argument("job", help=job_help)
    models.set_defaults(func=cmd_models)

    report = command("report", "(re)write an output's report/index.html from its clip index")
    report.add_argument("output", help="the job's output.uri: a local directory or s3:// URI")
    report.add_argument("--rebuild-index", action="store_true",
                        help="rebuild the clip index from the chunk and video records first (their source of truth)")
    _storage_options(report)
    report.set_defaults(func=cmd_report)

    export = command("export", "write an output's passed clips as WebDataset tar shards")
    export.add_argument("output", help="the job's output.uri: a local directory or s3:// URI")
    export.add_argument("dest", help="where the shards go: a local directory or s3:// URI")
    export.add_argument("--format", choices=["webdataset"], default="webdataset",
                        help="the shard format (default webdataset, the only one so far)")
    export.add_argument("--shard-size", type=_shard_size, default="512M",
                        help="about how large each shard grows, such as 256M or 1G (default 512M)")
    export.add_argument("--seed", type=int, default=0, help="the shuffle's seed: the same seed, the same shards")
    _storage_options(export)
    export.set_defaults(func=cmd_export)

    samples = command("samples", "write synthetic sample videos with known cuts")
    samples.add_argument("directory", help="where the videos go (created if missing)")
    samples.set_defaults(func=cmd_samples)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("error" if args.quiet else args.log_level)
    try:
        return args.func(args)
    except InvalidJobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
