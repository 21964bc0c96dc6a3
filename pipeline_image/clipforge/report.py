"""report/index.html: what an output holds, to look at in a browser.

    report/index.html            counts, why clips were filtered, distributions (inline SVG),
                                 failures with their reasons (the first LISTED_FAILURES of each kind)
    report/report.js, .css       the page's script and style (clipforge/report_assets)
    report/data/<table>-<n>.js   the rows of the paged tables (videos, passed and filtered clips),
                                 ROWS_PER_FILE a file: the page loads one file at a time and shows
                                 PAGE_SIZE rows of it, so neither the page nor the browser's work
                                 grows with the output; only the shown page's previews are loaded

Static files with relative links only, so the report works from a local folder, from a bucket
served as a website, and from a copy; no network access from the page. It is built from the
clip index (clip_index.py), never from a run's memory: the same output gives the same bytes.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipforge import clip_index, layout
from clipforge.storage import Storage, StorageError

log = logging.getLogger(__name__)

ROWS_PER_FILE = 1000
PAGE_SIZE = 50  # divides ROWS_PER_FILE: a page never spans two data files
LISTED_FAILURES = 200
WRITE_THREADS = 16
HTML, JS, CSS = "text/html; charset=utf-8", "text/javascript; charset=utf-8", "text/css; charset=utf-8"

CLIP_COLUMNS = ["span_uuid", "status", "source_video", "duration_span", "motion_score", "aesthetic_score",
                "filtered_by", "clip_location", "preview_location", "valid", "missing_outputs", "windows", "errors"]


# ------------------------------------------------------------------------------------ charts


def _tick(value: float, log_scale: bool) -> str:
    return f"{10 ** value:.0e}" if log_scale else f"{value:.3g}"


def histogram_svg(by_status: dict[str, np.ndarray], log_scale: bool = False, bins: int = 24) -> str:
    """Stacked histogram (passed under filtered) of one value as inline SVG; log_scale bins log10."""
    width, height, left, bottom, top = 360, 150, 34, 22, 8
    series = {status: np.asarray(values, dtype=np.float64) for status, values in by_status.items()}
    if log_scale:
        series = {status: np.log10(np.maximum(values, 1e-9)) for status, values in series.items()}
    every = np.concatenate(list(series.values()))
    low, high = float(every.min()), float(every.max())
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = {status: np.histogram(values, bins=edges)[0] for status, values in series.items()}
    peak = max(1, int(sum(counts.values()).max()))
    bar = (width - left) / bins
    scale = (height - bottom - top) / peak
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    base = np.zeros(bins)
    for status in ("passed", "filtered"):
        if status not in counts:
            continue
        for i, count in enumerate(counts[status]):
            if count:
                y = height - bottom - (base[i] + count) * scale
                parts.append(f'<rect class="{status}" x="{left + i * bar + 0.5:.1f}" y="{y:.1f}"'
                             f' width="{bar - 1:.1f}" height="{count * scale:.1f}"><title>{status}: {count}</title></rect>')
        base = base + counts[status]
    axis_y = height - bottom
    parts.append(f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{width}" y2="{axis_y}"/>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>')
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        x = left + fraction * (width - left)
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="{anchor}">'
                     f'{_tick(low + fraction * (high - low), log_scale)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _charts(clips: pa.Table) -> str:
    """Distributions over the clips that have a file (passed and filtered)."""
    with_file = clips.filter(pc.field("status") != "failed")
    if with_file.num_rows == 0:
        return "<p>no clips</p>"
    status = with_file.column("status").to_numpy(zero_copy_only=False)
    motion = with_file.column("motion_score").combine_chunks()
    values = {
        "Clip length (s)": (with_file.column("duration_s"), False),
        "Motion, global mean (log)": (motion.field("global_mean"), True),
        "Motion, least-moving patch (log)": (motion.field("per_patch_min_256"), True),
        "Aesthetic score": (with_file.column("aesthetic_score"), False),
    }
    figures = []
    for title, (column, log_scale) in values.items():
        array = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
        present = pc.is_valid(array).to_numpy(zero_copy_only=False)
        if not present.any():
            continue
        numbers = array.to_numpy(zero_copy_only=False)
        by_status = {s: numbers[present & (status == s)].astype(np.float64) for s in ("passed", "filtered")}
        figures.append(f"<figure><figcaption>{html.escape(title)}</figcaption>"
                       f"{histogram_svg(by_status, log_scale)}</figure>")
    legend = '<p class="legend"><span class="passed"></span>passed<span class="filtered"></span>filtered</p>'
    return legend + '<div class="charts">' + "".join(figures) + "</div>"


# ------------------------------------------------------------------------------------ tables


def _errors_text(errors: list[dict] | None) -> str:
    return "; ".join(f"{stage}: {message}" for stage, message in clip_index.as_dict(errors).items())


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{html.escape(str(v))}</td>'
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _more(total: int, shown: int, query: str) -> str:
    if total <= shown:
        return ""
    return (f'<p class="more">{total - shown} more; all of them: '
            f"<code>{html.escape(query)}</code></p>")


def _filter_reasons(clips: pa.Table) -> str:
    filtered = Counter(v for v in clips.column("filtered_by").to_pylist() if v is not None)
    total = max(1, clips.num_rows)
    rows = [[reason, count, f"{100 * count / total:.1f}%"] for reason, count in sorted(filtered.items())]
    missing = Counter(m for row in clips.column("missing_outputs").to_pylist() for m in row or [])
    text = _table(["filtered by", "clips", "of all clips"], rows, {1, 2}) if rows else "<p>no clip was filtered</p>"
    if missing:
        text += "<h3>Outputs missing (clips not valid)</h3>" + _table(
            ["output", "clips"], [[name, count] for name, count in sorted(missing.items())], {1})
    return text


def _failures(clips: pa.Table, videos: pa.Table) -> str:
    failed_videos = [v for v in videos.select(["relative_path", "errors"]).to_pylist() if v["errors"]]
    clip_errors = clips.filter(pc.greater(pc.fill_null(pc.list_value_length(clips.column("errors")), 0), 0))
    stages = Counter(stage.split("[")[0] for v in failed_videos for stage in clip_index.as_dict(v["errors"]))
    stages.update(stage for errors in clip_errors.column("errors").to_pylist() for stage in clip_index.as_dict(errors))
    if not stages:
        return "<p>no failures</p>"
    parts = ["<h3>By stage</h3>", _table(["stage", "failures (videos and clips)"], sorted(stages.items()), {1})]
    if failed_videos:
        shown = failed_videos[:LISTED_FAILURES]
        parts += [f"<h3>Failed videos ({len(failed_videos)})</h3>",
                  _table(["video", "errors"], [[v["relative_path"], _errors_text(v["errors"])] for v in shown]),
                  _more(len(failed_videos), len(shown), "SELECT relative_path, errors FROM 'index/videos/*.parquet'"
                        " WHERE len(errors) > 0")]
    if clip_errors.num_rows:
        shown = clip_errors.slice(0, LISTED_FAILURES).select(["span_uuid", "status", "source_video", "errors"])
        parts += [f"<h3>Clips with errors ({clip_errors.num_rows})</h3>",
                  _table(["clip", "status", "video", "errors"],
                         [[c["span_uuid"], c["status"], c["source_video"], _errors_text(c["errors"])]
                          for c in shown.to_pylist()]),
                  _more(clip_errors.num_rows, shown.num_rows, "SELECT span_uuid, errors FROM 'index/clips/*.parquet'"
                        " WHERE len(errors) > 0")]
    return "".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _size(num_bytes: int) -> str:
    exponent = min(4, max(0, int(math.log(num_bytes, 1000)))) if num_bytes else 0
    return f"{num_bytes / 1000 ** exponent:.1f} {('B', 'kB', 'MB', 'GB', 'TB')[exponent]}"


def _counts(clips: pa.Table, videos: pa.Table) -> str:
    status = Counter(clips.column("status").to_pylist())
    passed = clips.filter(pc.field("status") == "passed")
    seconds = pc.sum(passed.column("duration_s")).as_py() or 0.0
    size = pc.sum(passed.column("num_bytes")).as_py() or 0
    failed_videos = sum(1 for errors in videos.column("errors").to_pylist() if errors)
    invalid = clips.filter((pc.field("status") != "failed") & ~pc.field("valid")).num_rows
    items = [
        ("", "videos", videos.num_rows), ("failed", "videos failed", failed_videos),
        ("passed", "clips passed", status["passed"]), ("filtered", "clips filtered", status["filtered"]),
        ("failed", "clips failed", status["failed"]), ("failed", "clips not valid", invalid),
        ("", "passed clips' length", _duration(seconds)), ("", "passed clips' size", _size(size)),
    ]
    return '<dl class="counts">' + "".join(
        f'<div class="{cls}"><dt>{html.escape(label)}</dt><dd>{value}</dd></div>' for cls, label, value in items
    ) + "</dl>"


# ------------------------------------------------------------------------------- paged data


def _data_file(name: str, part: int) -> str:
    return f"data/{name}-{part:05d}.js"


def _video_rows(videos: pa.Table) -> list[dict]:
    rows = []
    for v in videos.sort_by("relative_path").to_pylist():
        meta = v["metadata"] or {}
        rows.append({
            "path": v["relative_path"], "duration_s": meta.get("duration_s"),
            "size": f"{meta['width']}x{meta['height']}" if meta else "", "codec": meta.get("video_codec", ""),
            "clips": v["num_clips"], "passed": v["num_clips_passed"], "filtered": v["num_clips_filtered"],
            "failed": v["num_clips_failed"], "errors": _errors_text(v["errors"]),
        })
    return rows


def _clip_row(clip: dict, videos: dict[str, str]) -> dict:
    start, end = clip["duration_span"]
    return {
        "id": clip["span_uuid"], "status": clip["status"],
        "video": videos.get(clip["source_video"], clip["source_video"]), "start": start, "end": end,
        # The index's locations are relative to the output root, the page's parent folder.
        "clip": layout.location("..", clip["clip_location"]),
        "preview": layout.location("..", clip["preview_location"]),
        "motion": (clip["motion_score"] or {}).get("global_mean"), "aesthetic": clip["aesthetic_score"],
        "filtered_by": clip["filtered_by"], "valid": clip["valid"], "missing": ", ".join(clip["missing_outputs"] or []),
        "caption": clip_index.caption_text(clip["windows"]),
    }


def _data_js(name: str, part: int, rows: list[dict]) -> bytes:
    payload = json.dumps(rows, separators=(",", ":"), sort_keys=True)
    return f"clipforgeReport.receive({json.dumps(name)},{part},{payload});\n".encode()


class _ReportFiles:
    """Writes the report's files as they are made, WRITE_THREADS at a time (many small objects
    on S3), holding only the files in flight in memory; remembers the paged tables' files."""

    def __init__(self, storage: Storage, root: str, pool: ThreadPoolExecutor) -> None:
        self.storage, self.root, self.pool = storage, root, pool
        self.in_flight: list = []
        self.collections: dict[str, dict] = {}

    def add_table(self, name: str, count: int, parts) -> None:  # noqa: ANN001 - iterable of row lists
        names = []
        for part, rows in enumerate(parts):
            names.append(_data_file(name, part))
            self.write(names[-1], _data_js(name, part, rows), JS)
        self.collections[name] = {"count": count, "files": names}

    def write(self, name: str, body: bytes, content_type: str) -> None:
        if len(self.in_flight) >= 2 * WRITE_THREADS:
            self.in_flight.pop(0).result()
        self.in_flight.append(self.pool.submit(self.storage.write_bytes, layout.report_file(self.root, name),
                                               body, content_type))

    def finish(self) -> set[str]:
        """Waits for every write (raising the first error); the data files' names."""
        for future in self.in_flight:
            future.result()
        return {name for c in self.collections.values() for name in c["files"]}


def _clip_parts(clips: pa.Table, status: str, videos: dict[str, str]):  # noqa: ANN202 - generator
    subset = clips.filter(pc.field("status") == status)
    for start in range(0, subset.num_rows, ROWS_PER_FILE):
        yield [_clip_row(c, videos) for c in subset.slice(start, ROWS_PER_FILE).to_pylist()]


# ------------------------------------------------------------------------------------- page


def _page(root: str, clips: pa.Table, videos: pa.Table, config: dict) -> str:
    # "</" cannot end the JSON's script element early.
    config_json = json.dumps(config, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    video_headers = "".join(
        f'<th{" class=n" if n else ""}>{h}</th>'
        for h, n in (("video", 0), ("duration (s)", 1), ("size", 0), ("codec", 0), ("clips", 1),
                     ("passed", 1), ("filtered", 1), ("failed", 1), ("errors", 0))
    )
    collections = config["collections"]
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ClipForge report</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="report.css">
</head>
<body>
<header>
<h1>ClipForge report</h1>
<p class="output">{html.escape(root)}</p>
<p><a href="../{layout.SUMMARY}">{layout.SUMMARY}</a> &middot; clip index: <code>{layout.CLIP_INDEX}/</code>,
<code>{layout.VIDEO_INDEX}/</code> (parquet)</p>
</header>
<p id="load-error" hidden></p>
<section id="counts">{_counts(clips, videos)}</section>
<section id="filters"><h2>Why clips were filtered</h2>{_filter_reasons(clips)}</section>
<section id="distributions"><h2>Distributions</h2>{_charts(clips)}</section>
<section id="failures"><h2>Failures</h2>{_failures(clips, videos)}</section>
<section id="videos"><h2>Videos ({collections["videos"]["count"]})</h2>
<table><thead><tr>{video_headers}</tr></thead><tbody id="video-rows"></tbody></table>
<nav class="pager" id="video-pager"></nav>
</section>
<section id="gallery"><h2>Clips</h2>
<nav class="tabs" id="gallery-tabs">
<button type="button" data-collection="passed">passed ({collections["passed"]["count"]})</button>
<button type="button" data-collection="filtered">filtered ({collections["filtered"]["count"]})</button>
</nav>
<nav class="pager" id="gallery-pager"></nav>
<div id="tiles"></div>
</section>
<script type="application/json" id="report-config">{config_json}</script>
<script src="report.js"></script>
</body>
</html>
"""


def write_report(storage: Storage, root: str) -> str:
    """Writes report/ for the index under root; returns the URI of report/index.html."""
    clips = clip_index.read_table(storage, root, layout.CLIP_INDEX, CLIP_COLUMNS + ["duration_s", "num_bytes"])
    clips = clips.append_column("start", pc.list_element(clips.column("duration_span"), 0))
    clips = clips.sort_by([("source_video", "ascending"), ("start", "ascending"), ("span_uuid", "ascending")])
    videos = clip_index.read_table(storage, root, layout.VIDEO_INDEX)
    relative = dict(zip(videos.column("video").to_pylist(), videos.column("relative_path").to_pylist()))

    assets = resources.files("clipforge") / "report_assets"
    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        files = _ReportFiles(storage, root, pool)
        files.write("report.js", (assets / "report.js").read_bytes(), JS)
        files.write("report.css", (assets / "report.css").read_bytes(), CSS)
        video_rows = _video_rows(videos)
        files.add_table("videos", len(video_rows),
                 (video_rows[i:i + ROWS_PER_FILE] for i in range(0, len(video_rows), ROWS_PER_FILE)))
        for status in ("passed", "filtered"):
            count = clips.filter(pc.field("status") == status).num_rows
            files.add_table(status, count, _clip_parts(clips, status, relative))
        written = files.finish()
    _delete_stale(storage, root, written)
    config = {"pageSize": PAGE_SIZE, "rowsPerFile": ROWS_PER_FILE, "collections": files.collections}
    # The page last: once it is there, everything it loads is.
    page = layout.report_page(root)
    storage.write_bytes(page, _page(root, clips, videos, config).encode(), HTML)
    return page


def _delete_stale(storage: Storage, root: str, keep: set[str]) -> None:
    """Data files of an earlier, larger report."""
    for uri, relative, *_ in storage.list_files(layout.report_file(root, "data"), ["*.js"], missing_ok=True):
        if f"data/{relative}" not in keep:
            storage.delete(uri)


def write_index_and_report(storage: Storage, root: str) -> tuple[clip_index.IndexResult, str]:
    """The index, then the report, over what the output now holds; (index counts, report URI)."""
    result = clip_index.write_index(storage, root)
    return result, write_report(storage, root)


def publish(storage: Storage, root: str) -> str | None:
    """write_index_and_report at the end of a run: the report's URI, or None after logging why not.

    A failure here loses nothing: the run's clips and records are written, and
    `clipforge report OUTPUT` writes the index and the report again.
    """
    try:
        return write_index_and_report(storage, root)[1]
    except (StorageError, OSError, pa.ArrowException) as exc:
        log.error("index and report of %s not written: %s (`clipforge report %s` writes them)", root, exc, root)
        return None
