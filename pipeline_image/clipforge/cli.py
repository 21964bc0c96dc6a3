"""`clipforge`: run a VideoCurationJob manifest, validate one, or write sample videos."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from clipforge.spec import (
    RUN_COMPLETED_WITH_FAILURES, RUN_FAILED, RUN_SUCCEEDED, TOO_MANY_VIDEOS_FAILED, InvalidJobError, load_job,
)

# Exit statuses of `clipforge run` (README: "Exit statuses"). 3: every video was processed and
# the failed ones are within execution.failures' limits; 1: the job failed (too many failed
# videos, dedup, or an error of the run itself).
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_COMPLETED_WITH_FAILURES = 0, 1, 2, 3


def _format_summary(summary: dict) -> str:
    videos, clips = summary["videos"], summary["clips"]
    hours = summary["videoSecondsProcessed"] / 3600
    lines = [
        f"videos: {videos['total']} total, {videos['done'] - videos['skipped']} curated, "
        f"{videos['skipped']} already done, {videos['failed']} failed",
        f"clips: {clips['passed']} passed, {clips['filtered']} filtered, {clips['failed']} failed",
        f"input: {hours:.3f} h of video in {summary['elapsedSeconds']:.1f} s: "
        f"{summary['throughputVideoSecondsPerSecond']:.2f} video-s/s, {summary['clipsPerSecond']:.2f} clips/s",
    ]
    dedup = summary.get("dedup")
    if dedup:
        lines.append(_format_dedup(dedup))
    for failure in summary["failures"]:
        reasons = "; ".join(f"{stage}: {msg}" for stage, msg in failure["errors"].items())
        lines.append(f"FAILED {failure['video']}: {reasons}")
    if summary["state"] == RUN_COMPLETED_WITH_FAILURES:
        lines.append(f"completed with failures: {videos['failed']} of {videos['total']} videos failed")
    elif summary.get("reason"):
        lines.append(f"job failed: {summary['message']}")
    lines.append(f"output: {summary['output']}")
    lines.append(f"report: {_report_page(summary['output'])}")
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


def cmd_run(args: argparse.Namespace) -> int:
    job = load_job(args.job)  # InvalidJobError before any work
    from tqdm import tqdm

    from clipforge.runner import JobRun, ProgressWriter
    from clipforge.storage import StorageError

    spec = job.spec
    if _model_problems(spec):  # missing weights fail here, at submission, not in an actor
        return EXIT_INVALID
    executor = args.executor or spec.execution.executor
    run = JobRun(job, overwrite=args.overwrite)
    try:
        tasks = run.prepare()
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    started_ray = False
    bar = tqdm(total=len(tasks), unit="video", disable=args.no_progress or None, desc=job.metadata.name)

    def on_video(record: dict) -> None:
        bar.update(1)
        bar.set_postfix(clips=run.stats.clips_passed, filtered=run.stats.clips_filtered, failed=run.stats.failed)

    state, reason, message = RUN_FAILED, None, None
    try:
        with ProgressWriter(run):
            if executor == "local":
                from clipforge.executors.local import run_local

                results = run_local(spec, tasks)
            else:
                from clipforge.executors.ray_data import run_ray, start_ray

                started_ray = start_ray(spec, args.ray_address)
                results = run_ray(spec, tasks)
            if tasks:
                run.consume(results, on_video)
            message = run.too_many_failures()
            reason = TOO_MANY_VIDEOS_FAILED if message else None
            state = RUN_FAILED if message else RUN_COMPLETED_WITH_FAILURES if run.stats.failed else RUN_SUCCEEDED
            if spec.dedup.enabled:  # after every video, on the Ray the run used (if any)
                from clipforge.dedup import DedupError

                try:
                    run.deduplicate()
                except (DedupError, StorageError) as exc:
                    print(f"error: dedup: {exc}", file=sys.stderr)
                    run.dedup = {"error": str(exc)}
                    state = RUN_FAILED
    finally:
        bar.close()
        summary = run.summary(state, reason, message)
        run.write_progress(state)
        if started_ray:
            import ray

            ray.shutdown()
    print(_format_summary(summary))
    return {RUN_SUCCEEDED: EXIT_OK, RUN_COMPLETED_WITH_FAILURES: EXIT_COMPLETED_WITH_FAILURES}.get(state, EXIT_FAILED)


def cmd_dedup(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    import json

    from clipforge import layout
    from clipforge.dedup import DedupError, dedup_output
    from clipforge.storage import Storage, StorageError

    spec = job.spec
    storage = Storage.from_spec(spec.storage)
    started_ray = False
    try:
        if args.ray_address:
            from clipforge.executors.ray_data import start_ray

            started_ray = start_ray(spec, None if args.ray_address == "local" else args.ray_address)
        dedup = dedup_output(spec, storage)
        # summary.json keeps the run's counts; only its dedup entry changes.
        summary_uri = layout.join(spec.output.uri, layout.SUMMARY)
        summary = json.loads(storage.read_bytes(summary_uri)) if storage.exists(summary_uri) else {}
        summary["dedup"] = dedup
        storage.write_json(summary_uri, summary)
    except (DedupError, StorageError) as exc:
        print(f"error: dedup: {exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    print(_format_dedup(dedup))
    print(f"output: {layout.join(spec.output.uri, 'dedup')}")
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
    try:
        index = clip_index.write_index(storage, args.output)
        if not index.clips and not index.videos:
            print(f"error: {args.output} holds no {layout.METAS}/ or {layout.PROCESSED_VIDEOS}/ records:"
                  " not a ClipForge output", file=sys.stderr)
            return EXIT_INVALID
        page = write_report(storage, args.output)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"index: {index.clips} clips, {index.videos} videos in {layout.join(args.output, layout.INDEX)}")
    print(f"report: {page}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from clipforge.export import ExportError, export_webdataset
    from clipforge.storage import StorageError

    try:
        result = export_webdataset(_output_storage(args), args.output, args.dest, args.shard_size, args.seed)
    except (ExportError, StorageError) as exc:
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
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"), help="S3 region")


def cmd_samples(args: argparse.Namespace) -> int:
    from clipforge.samples import write_samples

    for path in write_samples(Path(args.directory)):
        print(path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a VideoCurationJob manifest")
    run.add_argument("job", help="the job manifest (the same file kubectl applies)")
    run.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (default: $RAY_ADDRESS; unset starts a local Ray for this run)",
    )
    run.add_argument("--executor", choices=["ray", "local"], help="override spec.execution.executor")
    run.add_argument("--overwrite", action="store_true", help="redo videos already recorded in processed_videos/")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    dedup = sub.add_parser("dedup", help="deduplicate an existing output's clip embeddings (dedup.inputUri or output.uri)")
    dedup.add_argument("job")
    dedup.add_argument(
        "--ray-address",
        help="spread the per-cluster work over this Ray cluster (unset: in-process); 'local' starts a local Ray",
    )
    dedup.set_defaults(func=cmd_dedup)

    validate = sub.add_parser("validate", help="check a manifest and list every problem")
    validate.add_argument("job")
    validate.set_defaults(func=cmd_validate)

    models = sub.add_parser("models", help="list the models the job's stages need and check they are in place")
    models.add_argument("job")
    models.set_defaults(func=cmd_models)

    report = sub.add_parser("report", help="(re)write an output's clip index and report/index.html")
    report.add_argument("output", help="the job's output.uri: a local directory or s3:// URI")
    _storage_options(report)
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="write an output's passed clips as WebDataset tar shards")
    export.add_argument("output", help="the job's output.uri: a local directory or s3:// URI")
    export.add_argument("dest", help="where the shards go: a local directory or s3:// URI")
    export.add_argument("--format", choices=["webdataset"], required=True, help="the shard format")
    export.add_argument("--shard-size", type=_shard_size, default="512M",
                        help="about how large each shard grows, such as 256M or 1G (default 512M)")
    export.add_argument("--seed", type=int, default=0, help="the shuffle's seed: the same seed, the same shards")
    _storage_options(export)
    export.set_defaults(func=cmd_export)

    samples = sub.add_parser("samples", help="write synthetic sample videos with known cuts")
    samples.add_argument("directory")
    samples.set_defaults(func=cmd_samples)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InvalidJobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
