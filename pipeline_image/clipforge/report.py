"""report/index.html: what happened in an output, to look at in a browser.

    report/index.html            how the last run ended (summary.json: state, reason, times), the
                                 settings and thresholds that decided the clips, counts, why clips
                                 were filtered, distributions (inline SVG, threshold lines),
                                 failures in plain words with the raw message folded (the first
                                 LISTED_FAILURES of each kind)
    report/report.js, .css       the page's script and style (clipforge/report_assets)
    report/data/<table>-<n>.js   the rows of the paged tables (videos, passed and filtered clips),
                                 ROWS_PER_FILE a file: the page loads one file at a time and shows
                                 PAGE_SIZE rows of it; only the shown page's previews are loaded.
                                 Filtering or sorting the gallery loads all of a status's files, so
                                 each holds at most GALLERY_LIMIT clips (the page says when it cuts)
    report/data/map-00000.js     the embedding map's points, duplicates-00000.js the duplicate
                                 pairs (report_data.py bounds both)

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

from clipforge import clip_index, layout, report_data
from clipforge.storage import Storage, StorageError

log = logging.getLogger(__name__)

ROWS_PER_FILE = 1000
PAGE_SIZE = 50  # divides ROWS_PER_FILE: a page never spans two data files
LISTED_FAILURES = 200
# Clips of each status the gallery holds (the first, by video and time): filtering and sorting
# load all of a status's files, so this bounds what the browser holds. The page says when it cuts.
GALLERY_LIMIT = 20_000
WRITE_THREADS = 16
HTML, JS, CSS = "text/html; charset=utf-8", "text/javascript; charset=utf-8", "text/css; charset=utf-8"

CLIP_COLUMNS = ["span_uuid", "status", "source_video", "duration_span", "motion_score", "aesthetic_score",
                "filtered_by", "clip_location", "preview_location", "valid", "missing_outputs", "windows", "errors",
                "duration_s", "num_bytes", "scores", "width", "height", "framerate", "num_frames", "video_codec",
                "embedding"]


# ------------------------------------------------------------------------------------ charts

CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM, CHART_TOP = 420, 190, 44, 36, 16
CHART_RIGHT = 14  # room for the last tick's label


def _nice_ticks(low: float, high: float, wanted: int = 6) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) from low to high, at least four."""
    raw = (high - low) / wanted
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]
    return ticks if len(ticks) >= 4 else _nice_ticks(low, high, wanted * 2)


def _log_ticks(low: float, high: float) -> list[tuple[float, str]]:
    """(log10 value, label) at powers of ten (every second or third over a wide range), with 2 and
    5 between them when fewer than four."""
    decades = range(math.floor(low), math.ceil(high) + 1)
    every = math.ceil(len(decades) / 8)  # labels a chart's width holds
    ticks = [(float(d), f"1e{d}") for d in decades if low - 1e-9 <= d <= high + 1e-9 and d % every == 0]
    if len(ticks) < 4:
        ticks = sorted(ticks + [(d + math.log10(m), f"{m}e{d}") for d in decades for m in (2, 5)
                                if low - 1e-9 <= d + math.log10(m) <= high + 1e-9])
    return ticks


def histogram_svg(by_status: dict[str, np.ndarray], log_scale: bool = False, bins: int = 24,
                  lines: dict[str, float] | None = None) -> str:
    """Stacked histogram (passed under filtered) of one value as inline SVG, with a dashed line
    at each of `lines` (label -> value). log_scale bins log10 of the values above zero; zeros
    (no motion at all) get a bar of their own, labelled 0, left of the axis's range."""
    width, height, left, bottom, top = CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM, CHART_TOP
    lines = lines or {}
    series = {status: np.asarray(values, dtype=np.float64) for status, values in by_status.items()}
    zeros = {status: 0 for status in series}
    if log_scale:
        zeros = {status: int((values <= 0).sum()) for status, values in series.items()}
        series = {status: np.log10(values[values > 0]) for status, values in series.items()}
        lines = {label: math.log10(value) for label, value in lines.items() if value > 0}
    every = np.concatenate([*series.values(), np.asarray(list(lines.values()), dtype=np.float64)])
    low, high = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    zero_bar = any(zeros.values())
    slots = bins + (2 if zero_bar else 0)  # the zeros' bar and a gap before the range
    right = width - CHART_RIGHT
    bar = (right - left) / slots
    x0 = left + (2 * bar if zero_bar else 0)
    edges = np.linspace(low, high, bins + 1)
    counts = {status: np.histogram(values, bins=edges)[0] for status, values in series.items()}
    peak = max(1, int(sum(counts.values()).max()), sum(zeros.values()))
    scale = (height - bottom - top) / peak
    axis_y = height - bottom

    def x_of(value: float) -> float:
        return x0 + (value - low) / (high - low) * (right - x0)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    base, zero_base = np.zeros(bins), 0
    for status in ("passed", "filtered"):
        if status not in counts:
            continue
        for i, count in enumerate(counts[status]):
            if count:
                y = axis_y - (base[i] + count) * scale
                parts.append(f'<rect class="{status}" x="{x0 + i * bar + 0.5:.1f}" y="{y:.1f}"'
                             f' width="{bar - 1:.1f}" height="{count * scale:.1f}"><title>{status}: {count}</title></rect>')
        if zeros[status]:
            y = axis_y - (zero_base + zeros[status]) * scale
            parts.append(f'<rect class="{status} zero" x="{left + 0.5:.1f}" y="{y:.1f}" width="{bar - 1:.1f}"'
                         f' height="{zeros[status] * scale:.1f}"><title>{status}, exactly 0: {zeros[status]}</title></rect>')
        base, zero_base = base + counts[status], zero_base + zeros[status]
    parts.append(f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{right}" y2="{axis_y}"/>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/>')
    for value in {int(v) for v in _nice_ticks(0, peak, 4) if v == int(v) and v <= peak}:
        y = axis_y - value * scale
        parts.append(f'<text class="y-tick" x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{value}</text>')
    parts.append(f'<text class="y-title" x="4" y="{top - 5}">clips</text>')
    ticks = _log_ticks(low, high) if log_scale else [(t, f"{t:.4g}") for t in _nice_ticks(low, high)]
    for value, label in ticks:
        x = x_of(value)
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}"/>')
        parts.append(f'<text class="x-tick" x="{x:.1f}" y="{axis_y + 15}" text-anchor="middle">{label}</text>')
    if zero_bar:
        parts.append(f'<text class="x-tick" x="{left + bar / 2:.1f}" y="{axis_y + 15}" text-anchor="middle">0</text>')
    for label, value in lines.items():
        x = x_of(value)
        shown = f"{10 ** value:.3g}" if log_scale else f"{value:.3g}"
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}">'
                     f'<title>{html.escape(label)}: {shown}</title></line>')
        parts.append(f'<text class="threshold-label" x="{x + 3:.1f}" y="{top + 6}">{html.escape(label)} {shown}</text>')
    if log_scale:
        parts.append(f'<text class="x-title" x="{right}" y="{height - 4}" text-anchor="end">log scale</text>')
    parts.append("</svg>")
    return "".join(parts)


def _charts(clips: pa.Table, limits: dict[str, float]) -> str:
    """Distributions over the clips that have a file (passed and filtered), with the thresholds
    (report_data.thresholds) that decided them."""
    with_file = clips.filter(pc.field("status") != "failed")
    if with_file.num_rows == 0:
        return "<p>no clips</p>"
    status = with_file.column("status").to_numpy(zero_copy_only=False)
    motion = with_file.column("motion_score").combine_chunks()
    length_lines = {"min": limits.get("length_min"), "max": limits.get("length_max")}
    values = {
        "Clip length (s)": (with_file.column("duration_s"), False, length_lines),
        "Motion, global mean (log)": (motion.field("global_mean"), True, {"threshold": limits.get("motion")}),
        "Motion, least-moving patch (log)": (motion.field("per_patch_min_256"), True,
                                             {"threshold": limits.get("motion_patch")}),
        "Aesthetic score": (with_file.column("aesthetic_score"), False, {"threshold": limits.get("aesthetic")}),
    }
    figures = []
    for title, (column, log_scale, lines) in values.items():
        array = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
        present = pc.is_valid(array).to_numpy(zero_copy_only=False)
        if not present.any():
            continue
        numbers = array.to_numpy(zero_copy_only=False)
        by_status = {s: numbers[present & (status == s)].astype(np.float64) for s in ("passed", "filtered")}
        drawn = {label: value for label, value in lines.items() if value is not None}
        figures.append(f"<figure><figcaption>{html.escape(title)}</figcaption>"
                       f"{histogram_svg(by_status, log_scale, lines=drawn)}</figure>")
    legend = ('<p class="legend"><span class="passed"></span>passed<span class="filtered"></span>filtered'
              '<span class="threshold"></span>threshold from the settings</p>')
    return legend + '<div class="charts">' + "".join(figures) + "</div>"


# ------------------------------------------------------------------------------------ tables


def _errors_html(errors: list[dict] | None) -> str:
    """stage: plain reason, with the raw message in a detail view."""
    return "<br>".join(
        f"{html.escape(f['stage'])}: {html.escape(f['reason'])}"
        f'<details class="raw"><summary>raw message</summary><code>{html.escape(f["raw"])}</code></details>'
        for f in report_data.failures(errors))


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset(),
           markup: set[int] = frozenset()) -> str:
    """An HTML table; the cells of the `markup` columns are HTML already, the others text."""
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{v if i in markup else html.escape(str(v))}</td>'
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
                  _table(["video", "why it failed"], [[v["relative_path"], _errors_html(v["errors"])] for v in shown],
                         markup={1}),
                  _more(len(failed_videos), len(shown), "SELECT relative_path, errors FROM 'index/videos/*.parquet'"
                        " WHERE len(errors) > 0")]
    if clip_errors.num_rows:
        shown = clip_errors.slice(0, LISTED_FAILURES).select(["span_uuid", "status", "source_video", "errors"])
        parts += [f"<h3>Clips with errors ({clip_errors.num_rows})</h3>",
                  _table(["clip", "status", "video", "why it failed"],
                         [[c["span_uuid"], c["status"], c["source_video"], _errors_html(c["errors"])]
                          for c in shown.to_pylist()], markup={3}),
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
            "failed": v["num_clips_failed"], "errors": report_data.failures(v["errors"]),
        })
    return rows


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
    subset = clips.filter(pc.field("status") == status).slice(0, GALLERY_LIMIT)
    for start in range(0, subset.num_rows, ROWS_PER_FILE):
        yield [report_data.clip_row(c, videos) for c in subset.slice(start, ROWS_PER_FILE).to_pylist()]


# ------------------------------------------------------------------------------------- page

# A run's end state in plain words, and how the header colours it.
STATES = {
    "succeeded": ("ok", "every video was processed"),
    "completed-with-failures": ("warn", "every video was processed; some failed, within execution.failures' limits"),
    "failed": ("bad", "the run failed"),
    "no-input": ("bad", "the input matched no file: nothing was curated"),
    "running": ("info", "the run is still going, or was stopped before writing its summary"),
    "starting": ("info", "the run is starting, or was stopped before writing its summary"),
}


def _header(root: str, outcome: dict, config: dict | None, distinct_settings: int) -> str:
    state = outcome.get("state")
    if state is None:
        return '<section id="run"><p class="state info">no summary.json or progress.json: no run has ended here</p></section>'
    tone, words = STATES.get(state, ("info", ""))
    why = ": ".join(html.escape(part) for part in (outcome.get("reason"), outcome.get("message")) if part)
    facts = [("job", outcome.get("job")), ("run", outcome.get("runId")), ("started", outcome.get("started")), ("ended", outcome.get("ended")),
             ("duration", _duration(outcome.get("elapsedSeconds") or 0.0)), ("from", outcome["source"])]
    facts_html = "".join(f"<div><dt>{k}</dt><dd>{html.escape(str(v))}</dd></div>" for k, v in facts if v is not None)
    return (f'<section id="run"><p class="state {tone}"><strong id="run-state">{html.escape(state)}</strong> '
            f'<span class="state-words">{html.escape(words)}</span></p>'
            + (f'<p class="reason" id="run-reason">{why}</p>' if why else "")
            + f'<dl class="facts">{facts_html}</dl>{_settings(config, distinct_settings)}</section>')


def _settings(config: dict | None, distinct: int) -> str:
    """The settings that decided pass or fail, as the latest recorded video was curated."""
    if config is None:
        return ""
    algorithm, lengths = report_data.split_lengths(config)
    motion, aesthetic = config.get("motionFilter", {}), config.get("aestheticFilter", {})
    sharpness, captions, embeddings = (config.get(k, {}) for k in ("sharpnessFilter", "captions", "embeddings"))

    def switch(section: dict, detail: str) -> str:
        return detail if section.get("enabled") else "off"

    rows = [
        ["splitting", f"{algorithm}, " + ", ".join(f"{k} {v}" for k, v in sorted(lengths.items()) if "Length" in k)],
        ["motion filter", "off" if motion.get("mode") in (None, "disable") else
         f"{motion.get('mode')}: global mean &ge; {motion.get('globalMeanThreshold')},"
         f" least-moving patch &ge; {motion.get('perPatchMinThreshold')}"],
        ["aesthetic filter", switch(aesthetic, f"score &ge; {aesthetic.get('threshold')} ({aesthetic.get('reduction')})")],
        ["sharpness filter", switch(sharpness, f"score &ge; {sharpness.get('threshold')}")],
        ["captions", switch(captions, str(captions.get("model")))],
        ["embeddings", switch(embeddings, str(embeddings.get("algorithm")))],
    ]
    note = (f'<p class="note">The videos here were curated with {distinct} different settings; these are the'
            " latest video's.</p>" if distinct > 1 else "")
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    full = html.escape(json.dumps(config, indent=2, sort_keys=True))
    return (f'<h2>Settings that decided the clips</h2><table class="settings">{body}</table>{note}'
            f"<details><summary>all settings</summary><pre>{full}</pre></details>")


def _page(root: str, clips: pa.Table, videos: pa.Table, config: dict, outcome: dict,
          settings: tuple[dict | None, int]) -> str:
    # "</" cannot end the JSON's script element early.
    config_json = json.dumps(config, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    video_headers = "".join(
        f'<th{" class=n" if n else ""}>{h}</th>'
        for h, n in (("video", 0), ("duration (s)", 1), ("size", 0), ("codec", 0), ("clips", 1),
                     ("passed", 1), ("filtered", 1), ("failed", 1), ("why it failed", 0))
    )
    collections = config["collections"]
    reasons = sorted({v for v in clips.column("filtered_by").to_pylist() if v is not None})
    reason_options = "".join(f'<option value="{html.escape(r)}">{html.escape(r)}</option>' for r in reasons)
    capped = [f"{c['count']:,} of the {c['total']:,} {name} clips" for name, c in collections.items()
              if name in ("passed", "filtered") and c["count"] < c["total"]]
    cap_note = (f'<p class="note" id="gallery-cap">The gallery holds the first {" and ".join(capped)} (by video and'
                " time); the clip index has them all.</p>" if capped else "")
    name = outcome.get("job") or root.rstrip("/").rsplit("/", 1)[-1] or root
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
<h1>ClipForge report: {html.escape(name)}</h1>
<p class="output">{html.escape(root)}</p>
<p><a href="../{layout.SUMMARY}">{layout.SUMMARY}</a> &middot; clip index: <code>{layout.CLIP_INDEX}/</code>,
<code>{layout.VIDEO_INDEX}/</code> (parquet)</p>
</header>
<p id="load-error" hidden></p>
{_header(root, outcome, *settings)}
<section id="counts">{_counts(clips, videos)}</section>
<section id="filters"><h2>Why clips were filtered</h2>{_filter_reasons(clips)}</section>
<section id="distributions"><h2>Distributions</h2>{_charts(clips, report_data.thresholds(settings[0]))}</section>
<section id="failures"><h2>Failures</h2>{_failures(clips, videos)}</section>
<section id="duplicates" hidden><h2>Duplicates</h2><p id="duplicates-note"></p><table><thead><tr>
<th>clip</th><th>duplicate of</th><th class=n>similarity</th></tr></thead><tbody id="duplicate-rows"></tbody></table>
</section>
<section id="embeddings" hidden><h2>Embedding map</h2><p id="map-note"></p>
<svg id="map" xmlns="http://www.w3.org/2000/svg" width="640" height="420" role="img"></svg>
</section>
<section id="videos"><h2>Videos ({collections["videos"]["count"]})</h2>
<table><thead><tr>{video_headers}</tr></thead><tbody id="video-rows"></tbody></table>
<nav class="pager" id="video-pager"></nav>
</section>
<section id="gallery"><h2>Clips</h2>
<nav class="tabs" id="gallery-tabs">
<button type="button" data-collection="passed">passed ({collections["passed"]["total"]})</button>
<button type="button" data-collection="filtered">filtered ({collections["filtered"]["total"]})</button>
</nav>
<form id="gallery-filters" class="filters" onsubmit="return false">
<label>video <input type="search" id="filter-video" placeholder="part of the path"></label>
<label>filtered by <select id="filter-reason"><option value="">any</option>{reason_options}</select></label>
<label>score <select id="filter-score"><option value="motion">motion</option><option value="aesthetic">aesthetic</option></select></label>
<label>from <input type="number" id="filter-min" step="any"></label>
<label>to <input type="number" id="filter-max" step="any"></label>
<label>sort <select id="gallery-sort"><option value="">video and time</option>
<option value="score-desc">score, highest first</option><option value="score-asc">score, lowest first</option>
<option value="length-desc">length, longest first</option><option value="length-asc">length, shortest first</option>
</select></label>
<span id="gallery-matches"></span>
</form>
{cap_note}
<nav class="pager" id="gallery-pager"></nav>
<div id="tiles"></div>
</section>
<dialog id="clip-panel"><form method="dialog"><button class="close" type="submit">close</button></form>
<div id="clip-panel-body"></div></dialog>
<script type="application/json" id="report-config">{config_json}</script>
<script src="report.js"></script>
</body>
</html>
"""


def write_report(storage: Storage, root: str) -> str:
    """Writes report/ for the index under root; returns the URI of report/index.html."""
    clips = clip_index.read_table(storage, root, layout.CLIP_INDEX, CLIP_COLUMNS)
    clips = clips.append_column("start", pc.list_element(clips.column("duration_span"), 0))
    clips = clips.sort_by([("source_video", "ascending"), ("start", "ascending"), ("span_uuid", "ascending")])
    videos = clip_index.read_table(storage, root, layout.VIDEO_INDEX)
    relative = dict(zip(videos.column("video").to_pylist(), videos.column("relative_path").to_pylist()))
    embedding_map = report_data.embedding_map(storage, root, clips, relative)
    duplicates = report_data.duplicates(storage, root, clips, relative)

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
            files.add_table(status, min(count, GALLERY_LIMIT), _clip_parts(clips, status, relative))
            files.collections[status]["total"] = count
        if embedding_map:
            files.add_table("map", len(embedding_map["points"]), [embedding_map.pop("points")])
            files.collections["map"].update(embedding_map)
        if duplicates:
            files.add_table("duplicates", len(duplicates["pairs"]), [duplicates.pop("pairs")])
            files.collections["duplicates"].update(duplicates)
        written = files.finish()
    _delete_stale(storage, root, written)
    config = {"pageSize": PAGE_SIZE, "rowsPerFile": ROWS_PER_FILE, "collections": files.collections}
    # The page last: once it is there, everything it loads is.
    page = layout.report_page(root)
    outcome = report_data.run_outcome(storage, root)
    storage.write_bytes(page, _page(root, clips, videos, config, outcome, report_data.settings(videos)).encode(), HTML)
    return page


def _delete_stale(storage: Storage, root: str, keep: set[str]) -> None:
    """Data files of an earlier, larger report."""
    for uri, relative, *_ in storage.list_files(layout.report_file(root, "data"), ["*.js"], missing_ok=True):
        if f"data/{relative}" not in keep:
            storage.delete(uri)


def publish(storage: Storage, root: str) -> str | None:
    """The report at the end of a run, from the index its chunks and videos committed: the report's
    URI, or None after logging why not. An output whose index is not current (none, or an older
    ClipForge's) has it rebuilt from the records first, once.

    A failure here loses nothing: the run's clips and records are written, and
    `clipforge report OUTPUT` writes the report again (`--rebuild-index`: the index too).
    """
    try:
        if not clip_index.is_current(storage, root):
            clip_index.write_index(storage, root)
        return write_report(storage, root)
    except (StorageError, OSError, pa.ArrowException) as exc:
        log.error("report of %s not written: %s (`clipforge report %s` writes it)", root, exc, root)
        return None
