"""The clip index's format, picked with numbers: commits into an index of `--rows` clip rows.

Generated data only, in a temporary folder. Each figure is printed with its goal.

    plain    plain parquet files added atomically (written under a hidden name, `_` first and not
             ending .parquet, then renamed): the time to add one video's rows, whether any existing
             data file changed (bytes and mtimes), and a reader (pyarrow.dataset over the folder,
             as pandas, Ray Data and polars read it) looping while a writer subprocess that commits
             over and over is SIGKILLed: every read must hold whole commits only
    compact  the two ways to merge small files under a folder reader: merged file written, then
             the merged ones deleted (what a folder reader sees in between), against generations
             (each a hidden folder, `index/clips` a symlink switched with one rename)
    delta    Delta Lake through `deltalake` (when importable, e.g. PYTHONPATH=<pip --target dir>):
             the same append, and what a plain folder reader sees after Delta's own compaction

    python benchmarks/bench_index_commit.py                  # 10,000,000 rows
    python benchmarks/bench_index_commit.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROWS_PER_FILE = 100_000
CLIPS_PER_VIDEO = 8
SCHEMA = pa.schema([("span_uuid", pa.string()), ("source_video", pa.string()), ("status", pa.string()),
                    ("duration_s", pa.float64()), ("num_bytes", pa.int64())])


def rows(first: int, count: int) -> pa.Table:
    ids = range(first, first + count)
    return pa.table({
        "span_uuid": [f"{i:032x}" for i in ids],
        "source_video": [f"s3://bucket/videos/{i // CLIPS_PER_VIDEO:09d}.mp4" for i in ids],
        "status": ["passed" if i % 10 else "filtered" for i in ids],
        "duration_s": [5.0] * count,
        "num_bytes": [100_000 + i % 1000 for i in ids],
    }, schema=SCHEMA)


def write_atomically(table: pa.Table, path: Path) -> None:
    temporary = path.with_name(f"_{path.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


def count_rows(folder: Path) -> int:
    return ds.dataset(folder, format="parquet").count_rows()


def base_index(folder: Path, total: int) -> None:
    folder.mkdir(parents=True)
    for part, first in enumerate(range(0, total, ROWS_PER_FILE)):
        pq.write_table(rows(first, min(ROWS_PER_FILE, total - first)), folder / f"part-{part:05d}.parquet")


def committer(folder: str, first: int) -> None:
    """Subprocess: commits one video's rows after another until killed."""
    n = 0
    while True:
        start = first + n * CLIPS_PER_VIDEO
        write_atomically(rows(start, CLIPS_PER_VIDEO), Path(folder) / f"commit-{n:07d}.parquet")
        n += 1


def many_commits(folder: Path, count: int) -> tuple[str, str, None]:
    """What files never merged cost a reader: `count` commits of one video each, read whole."""
    folder.mkdir()
    for n in range(count):
        pq.write_table(rows(n * CLIPS_PER_VIDEO, CLIPS_PER_VIDEO), folder / f"commit-{n:07d}.parquet")
    started = time.perf_counter()
    table = ds.dataset(folder, format="parquet").to_table()
    read_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.iterdir())
    return (f"plain: reading {count:,} one-video commit files whole (no goal: the cost of never merging)",
            f"{read_s:.2f} s for {table.num_rows:,} rows, {size / count / 1024:.1f} KiB a file", None)


def bench_plain(work: Path, total: int, files: int) -> list[tuple[str, str, bool]]:
    clips = work / "plain" / "clips"
    started = time.perf_counter()
    base_index(clips, total)
    print(f"plain: base index of {total:,} rows in {len(list(clips.iterdir()))} files: {time.perf_counter() - started:.1f} s")
    before = snapshot(clips)
    started = time.perf_counter()
    write_atomically(rows(total, CLIPS_PER_VIDEO), clips / "commit-video.parquet")
    commit_s = time.perf_counter() - started
    after = snapshot(clips)
    unchanged = all(after[name] == stat for name, stat in before.items())
    read_s = time.perf_counter()
    seen = count_rows(clips)
    read_s = time.perf_counter() - read_s
    results = [("plain: add one video's rows (8 clips)", f"{commit_s * 1000:.1f} ms (goal < 1 s)", commit_s < 1),
               ("plain: existing data files unchanged (bytes, mtimes)", f"{unchanged} of {len(before)}", unchanged),
               ("plain: rows read after the commit", f"{seen:,} in {read_s:.2f} s (goal {total + CLIPS_PER_VIDEO:,})",
                seen == total + CLIPS_PER_VIDEO)]

    # A reader looping while a committer is SIGKILLed at arbitrary moments: whole commits only.
    commits = work / "plain" / "killed"
    commits.mkdir()
    pq.write_table(rows(0, ROWS_PER_FILE), commits / "part-00000.parquet")
    reads, torn, kills = 0, [], 0
    for round_ in range(10):
        child = subprocess.Popen([sys.executable, __file__, "--commit-into", str(commits),
                                  "--first", str(10_000_000 * (round_ + 1))])
        deadline = time.monotonic() + 0.3 + round_ * 0.07
        while time.monotonic() < deadline:
            n = count_rows(commits)
            reads += 1
            if (n - ROWS_PER_FILE) % CLIPS_PER_VIDEO:
                torn.append(n)
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
        n = count_rows(commits)
        reads += 1
        if (n - ROWS_PER_FILE) % CLIPS_PER_VIDEO:
            torn.append(n)
    leftovers = sorted(p.name for p in commits.iterdir() if p.name.startswith("_"))
    results.append(many_commits(work / "plain" / "many", files))
    ok = not torn
    results.append(("plain: reads during commits SIGKILLed", f"{reads} reads over {kills} kills,"
                    f" {len(torn)} torn, {len(leftovers)} hidden temp files left (ignored by readers); goal 0 torn", ok))
    return results


def torn_reads(folder: Path, change, expected: int, seconds: float = 2.0) -> tuple[int, int, int]:  # noqa: ANN001
    """(reads, reads that saw other than `expected` rows, reads that failed) while `change` runs over
    and over in a thread."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                change()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    reads = bad = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reads += 1
        try:
            bad += count_rows(folder) != expected
        except (OSError, pa.ArrowException):  # a file listed, then gone: an error, not silently wrong rows
            failed += 1
    stop.set()
    thread.join()
    if errors:
        raise errors[0]
    return reads, bad, failed


def bench_compaction(work: Path) -> list[tuple[str, str, bool]]:
    files, per_file = 50, 200
    expected = files * per_file
    small = [rows(i * per_file, per_file) for i in range(files)]
    merged = pa.concat_tables(small)

    naive = work / "compact" / "naive"
    naive.mkdir(parents=True)

    def merge_then_delete() -> None:
        """Compacts the small files into one, or splits it back: each is the written-then-deleted change."""
        merged_path = naive / "merged.parquet"
        if merged_path.exists():
            for i, table in enumerate(small):
                write_atomically(table, naive / f"commit-{i:05d}.parquet")
            merged_path.unlink()
        else:
            write_atomically(merged, merged_path)
            for i in range(files):
                (naive / f"commit-{i:05d}.parquet").unlink()

    for i, table in enumerate(small):
        write_atomically(table, naive / f"commit-{i:05d}.parquet")
    reads, bad, failed = torn_reads(naive, merge_then_delete, expected)

    table_dir = work / "compact" / "generations"
    table_dir.mkdir(parents=True)
    link = table_dir / "clips"
    generation = [0]

    def switch() -> None:
        generation[0] += 1
        new = table_dir / f".clips-{generation[0]:06d}"
        new.mkdir()
        # Names never repeat across generations: a reader that listed one generation and opens a
        # file after the switch fails (and can retry) instead of reading another generation's rows.
        if generation[0] % 2:
            write_atomically(merged, new / f"merged-{generation[0]:06d}.parquet")
        else:
            for i, table in enumerate(small):
                write_atomically(table, new / f"commit-{generation[0]:06d}-{i:05d}.parquet")
        temporary = table_dir / ".clips.link"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(new.name)
        os.replace(temporary, link)
        old = table_dir / f".clips-{generation[0] - 2:06d}"  # the one before the previous: no reader left on it
        if old.exists():
            for path in old.iterdir():
                path.unlink()
            old.rmdir()

    switch()
    g_reads, g_bad, g_failed = torn_reads(link, switch, expected)
    return [("compact: merged written, then merged files deleted", f"{bad} of {reads} reads torn"
             f" (duplicated or missing rows), {failed} failed", bad == 0),
            ("compact: generations switched by renaming a symlink (local only)", f"{g_bad} of {g_reads} reads"
             f" torn, {g_failed} failed (a file gone after listing) over {generation[0]} switches", g_bad == 0)]


def bench_delta(work: Path, total: int) -> list[tuple[str, str, bool]]:
    try:
        import deltalake
    except ImportError:
        print("delta: deltalake is not importable; skipped")
        return []
    table_dir = work / "delta" / "clips"
    started = time.perf_counter()
    batches = (rows(first, min(ROWS_PER_FILE, total - first)).to_batches()[0] for first in range(0, total, ROWS_PER_FILE))
    deltalake.write_deltalake(str(table_dir), pa.RecordBatchReader.from_batches(SCHEMA, batches))
    print(f"delta {deltalake.__version__}: base table of {total:,} rows: {time.perf_counter() - started:.1f} s")
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in table_dir.glob("*.parquet")}
    started = time.perf_counter()
    deltalake.write_deltalake(str(table_dir), rows(total, CLIPS_PER_VIDEO), mode="append")
    append_s = time.perf_counter() - started
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in table_dir.glob("*.parquet")}
    unchanged = all(after[name] == stat for name, stat in before.items())
    for first in range(1, 6):
        deltalake.write_deltalake(str(table_dir), rows(total + first * CLIPS_PER_VIDEO, CLIPS_PER_VIDEO), mode="append")
    deltalake.DeltaTable(str(table_dir)).optimize.compact()
    expected = total + 6 * CLIPS_PER_VIDEO
    delta_rows = deltalake.DeltaTable(str(table_dir)).to_pyarrow_dataset().count_rows()
    folder_rows = count_rows(table_dir)  # pandas/polars/Hugging Face pointed at the folder, as they are
    return [("delta: add one video's rows (8 clips)", f"{append_s * 1000:.1f} ms (goal < 1 s)", append_s < 1),
            ("delta: existing data files unchanged", f"{unchanged}", unchanged),
            ("delta: a plain folder reader after Delta's compaction", f"{folder_rows:,} rows, the table holds"
             f" {delta_rows:,} of {expected:,} (removed files stay until vacuum; readers must speak Delta)",
             folder_rows == expected)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--commits", type=int, default=10_000, help="commit files read whole")
    parser.add_argument("--commit-into", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.commit_into:
        committer(args.commit_into, args.first)
        return
    with tempfile.TemporaryDirectory(prefix="bench-index-commit-") as tmp:
        work = Path(tmp)
        results = bench_plain(work, args.rows, args.commits) + bench_compaction(work) + bench_delta(work, args.rows)
    for name, figure, met in results:
        print(f"{name}: {figure}" + ("" if met is None else f" [{'met' if met else 'NOT met'}]"))
    goals = [met for *_, met in results if met is not None]
    print(f"goals met: {sum(goals)} of {len(goals)}")


if __name__ == "__main__":
    main()
