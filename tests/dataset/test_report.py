"""report/index.html in a real browser (headless Debian Chromium): it loads with no error, says
how the run ended and why, shows the output's counts, settings, videos, failures in plain words
and charts with their thresholds, a gallery of previews that really decode, filters, sorts and
opens a clip's panel, maps the embeddings and lists duplicates; paging loads one data file at a
time; it works from a folder, from a copy and from an S3 bucket.

Each test keeps its screenshots under its tmp dir, checks that they show a rendered page, and,
when CLIPFORGE_TEST_ARTIFACTS names a directory, copies them there.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.browser import Chromium, colour_census
from clipforge import report, report_data
from clipforge.cli import main
from clipforge.storage import Storage
from support.jobs import FIVE_SECOND_CLIPS, load_json, manifest, run_in_process, write_manifest

ALL_PREVIEWS_DECODED = (
    "(() => { const imgs = [...document.querySelectorAll('#tiles img')];"
    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.length; })()"
)
TILE_IDS = "[...document.querySelectorAll('#tiles figure')].map(f => f.dataset.id)"


def keep(screenshot: Path) -> Path:
    """Checks the screenshot shows a rendered page (many colours, none on 99 % of it: a blank
    page is one colour, a page of unstyled text over 99 % white), then copies it to
    CLIPFORGE_TEST_ARTIFACTS."""
    colours, commonest = colour_census(screenshot)
    assert colours >= 40 and commonest < 0.99, f"{screenshot}: {colours} colours, the commonest on {commonest:.0%}"
    artifacts = os.environ.get("CLIPFORGE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)
    return screenshot


def passed_and_filtered(out: Path) -> tuple[set[str], set[str]]:
    metas = [load_json(p) for p in (out / "metas" / "v0").glob("*.json")]
    return ({m["span_uuid"] for m in metas if m["filtered_by"] is None},
            {m["span_uuid"] for m in metas if m["filtered_by"] is not None})


def test_the_run_writes_a_report_that_loads_cleanly_and_shows_real_previews(curated, tmp_path):
    passed, filtered = passed_and_filtered(curated)
    page = curated / "report" / "index.html"
    with Chromium(tmp_path) as browser:
        browser.open(page.as_uri())
        assert browser.wait_for(ALL_PREVIEWS_DECODED) == len(passed) == 3
        assert set(browser.evaluate(TILE_IDS)) == passed
        counts = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.counts div')]"
            ".map(d => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]))")
        assert counts["videos"] == "3" and counts["videos failed"] == "1"
        assert (counts["clips passed"], counts["clips filtered"], counts["clips failed"]) == ("3", "1", "0")
        browser.wait_for("document.querySelectorAll('#video-rows tr').length === 3")
        videos = browser.evaluate("[...document.querySelectorAll('#video-rows tr')]"
                                  ".map(r => [...r.cells].map(c => c.textContent))")
        assert [v[0] for v in videos] == ["broken.mp4", "moving_then_static.mp4", "sub/three_scenes.mp4"]
        assert videos[1][4:8] == ["2", "1", "1", "0"] and videos[0][8].startswith("probe: ")
        failures = browser.evaluate("document.getElementById('failures').textContent")
        assert "broken.mp4" in failures and "probe" in failures
        reasons = browser.evaluate("[...document.querySelectorAll('#filters tbody tr')].map(r => r.cells[0].textContent)")
        assert reasons == ["motion"]
        charts = browser.evaluate("[...document.querySelectorAll('.charts figure')].map(f =>"
                                  " [f.querySelector('figcaption').textContent, f.querySelectorAll('rect').length])")
        assert [title for title, _ in charts] == ["Clip length (s)", "Motion, global mean (log)",
                                                  "Motion, least-moving patch (log)"]
        assert all(bars > 0 for _, bars in charts)
        captions = browser.evaluate("[...document.querySelectorAll('#tiles .caption')].length")
        assert captions == 3  # every passed clip was captioned
        keep(browser.screenshot(tmp_path / "report-passed.png"))

        browser.evaluate("document.querySelector('#gallery-tabs [data-collection=filtered]').click()")
        browser.wait_for(f"JSON.stringify({TILE_IDS}) === {json.dumps(json.dumps(sorted(filtered)))}")
        assert browser.wait_for(ALL_PREVIEWS_DECODED) == 1
        assert browser.evaluate("location.hash") == "#filtered/0"
        assert "filtered by motion" in browser.evaluate("document.getElementById('tiles').textContent")
        keep(browser.screenshot(tmp_path / "report-filtered.png"))
        assert browser.errors() == []


def test_paging_loads_only_the_shown_page_and_works_from_a_copy(curated_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ROWS_PER_FILE", 2)
    monkeypatch.setattr(report, "PAGE_SIZE", 1)
    report.write_report(Storage(), str(curated_copy))
    assert sorted(p.name for p in (curated_copy / "report" / "data").iterdir()) == [
        "filtered-00000.js", "map-00000.js", "passed-00000.js", "passed-00001.js", "videos-00000.js", "videos-00001.js"]
    copy = tmp_path / "served-elsewhere"
    shutil.copytree(curated_copy, copy)  # relative links: the copy shows its own files
    passed, _ = passed_and_filtered(curated_copy)
    loaded = "[...document.querySelectorAll('script[src]')].map(s => s.getAttribute('src').split('/').pop())"
    with Chromium(tmp_path) as browser:
        browser.open((copy / "report" / "index.html").as_uri() + "#passed/0")
        seen = []
        for page in range(3):
            browser.wait_for(f"document.querySelector('#gallery-pager .page').textContent === 'page {page + 1} of 3'")
            assert browser.wait_for(ALL_PREVIEWS_DECODED) == 1  # only the shown page's preview
            [clip_id] = browser.evaluate(TILE_IDS)
            seen.append(clip_id)
            image = browser.evaluate("document.querySelector('#tiles img').src")
            assert image == (copy / "previews" / f"{clip_id}.webp").as_uri()
            files = browser.evaluate(loaded)
            assert ("passed-00001.js" in files) == (page == 2)  # the second file only for page 3
            if page < 2:
                browser.evaluate("document.querySelector('#gallery-pager .next').click()")
        assert set(seen) == passed and len(seen) == 3
        assert browser.evaluate("document.querySelector('#gallery-pager .next').disabled") is True
        browser.evaluate("document.querySelector('#video-pager .next').click()")
        browser.wait_for("document.querySelector('#video-pager .page').textContent === 'page 2 of 3'")
        assert browser.evaluate("document.querySelector('#video-rows td').textContent") == "moving_then_static.mp4"
        keep(browser.screenshot(tmp_path / "report-paged.png"))
        assert browser.errors() == []


def test_the_same_output_gives_the_same_report_and_a_smaller_one_drops_stale_pages(curated_copy, monkeypatch):
    def files() -> dict[Path, bytes]:
        return {p.relative_to(curated_copy): p.read_bytes() for p in (curated_copy / "report").rglob("*") if p.is_file()}

    assert main(["report", str(curated_copy)]) == 0
    first = files()
    assert main(["report", str(curated_copy)]) == 0
    assert files() == first
    monkeypatch.setattr(report, "ROWS_PER_FILE", 1)
    monkeypatch.setattr(report, "PAGE_SIZE", 1)
    report.write_report(Storage(), str(curated_copy))
    assert (curated_copy / "report" / "data" / "passed-00002.js").exists()
    monkeypatch.undo()
    report.write_report(Storage(), str(curated_copy))
    assert files() == first


@pytest.mark.s3
def test_report_served_from_an_s3_bucket(curated, s3_server, s3_bucket, s3_env, upload, tmp_path):
    """The output in a bucket, read anonymously over HTTP as a bucket website would serve it."""
    client = s3_server.client()
    for part in ("metas", "processed_clip_chunks", "processed_videos", "previews", "clips", "filtered_clips"):
        upload(client, curated / part, s3_bucket, f"out/{part}")
    assert main(["report", f"s3://{s3_bucket}/out", "--endpoint", s3_server.endpoint]) == 0
    head = client.head_object(Bucket=s3_bucket, Key="out/report/index.html")
    assert head["ContentType"].startswith("text/html")
    client.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
                       "Resource": [f"arn:aws:s3:::{s3_bucket}/*"]}],
    }))
    passed, _ = passed_and_filtered(curated)
    with Chromium(tmp_path) as browser:
        browser.open(f"{s3_server.endpoint}/{s3_bucket}/out/report/index.html")
        assert browser.wait_for(ALL_PREVIEWS_DECODED) == 3
        assert set(browser.evaluate(TILE_IDS)) == passed
        assert browser.evaluate("getComputedStyle(document.querySelector('.counts div')).borderStyle") == "solid"
        keep(browser.screenshot(tmp_path / "report-s3.png"))
        assert browser.errors() == []


def test_a_report_that_cannot_be_written_is_logged_not_raised(curated_copy, monkeypatch, caplog):
    """The end of a run: the clips are written already; the log says how to write the report again."""
    from clipforge.storage import StorageError

    def refuse(self, uri, data, content_type=None):  # noqa: ANN001
        raise StorageError(f"cannot write {uri}: quota exceeded")

    monkeypatch.setattr(Storage, "write_bytes", refuse)
    assert report.publish(Storage(), str(curated_copy)) is None
    assert "quota exceeded" in caplog.text and f"clipforge report {curated_copy}" in caplog.text


# ------------------------------------------------------------------------------ what happened

RUN_HEADER = ("(() => ({state: document.getElementById('run-state').textContent,"
              " reason: document.getElementById('run-reason')?.textContent ?? null,"
              " facts: Object.fromEntries([...document.querySelectorAll('#run .facts div')]"
              ".map(d => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]))}))()")


def test_a_failed_run_shows_its_state_reason_and_plain_failures(tmp_path):
    """A run that exited 1 with TooManyVideosFailed says so at the top, with the limit it broke;
    the failures read in plain words, FFmpeg's message one click away."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (inputs / name).write_bytes(b"this is not a video\n" * 64)
    out = tmp_path / "out"
    assert run_in_process(tmp_path, inputs, out, execution={"executor": "local", "failures": {"maxFailedVideos": 0}}) == 1
    summary = load_json(out / "summary.json")
    assert (summary["state"], summary["reason"]) == ("failed", "TooManyVideosFailed")
    with Chromium(tmp_path) as browser:
        browser.open((out / "report" / "index.html").as_uri())
        header = browser.evaluate(RUN_HEADER)
        assert header["state"] == "failed"
        assert header["reason"] == f"TooManyVideosFailed: {summary['message']}"
        assert "maxFailedVideos" in header["reason"]
        assert header["facts"]["run"] == summary["runId"] and header["facts"]["from"] == "summary.json"
        assert header["facts"]["job"] == summary["job"] == "-/test-job"  # tests/support/jobs.py's manifest
        assert browser.evaluate("document.querySelector('h1').textContent") == "ClipForge report: -/test-job"
        assert header["facts"]["ended"] == summary["updatedAt"].replace("T", " ").replace("Z", " UTC")
        assert header["facts"]["started"] < header["facts"]["ended"]
        assert header["facts"]["duration"] == f"{summary['elapsedSeconds']:.1f} s"
        assert browser.evaluate("getComputedStyle(document.querySelector('#run .state')).backgroundColor") \
            == "rgb(253, 236, 234)"  # the failed colour
        reasons = browser.evaluate("[...document.querySelectorAll('#failures tbody tr')].slice(-2)"
                                   ".map(r => r.cells[1].firstChild.textContent)")
        assert reasons == ["probe: the file is not a video FFmpeg can read"] * 2
        assert "Errno" not in browser.evaluate("document.getElementById('failures').innerText")  # raw is folded
        browser.evaluate("document.querySelector('#failures details').open = true")
        assert "Invalid data found when processing input" in browser.evaluate(
            "document.querySelector('#failures details').innerText")
        keep(browser.screenshot(tmp_path / "report-failed-run.png"))
        assert browser.errors() == []


def test_a_succeeded_run_shows_its_state_and_the_settings_that_decided_its_clips(curated, tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(curated.parent / "samples" / "moving_then_static.mp4", inputs)
    assert run_in_process(tmp_path, inputs, out,
                          splitting=FIVE_SECOND_CLIPS, transcoding={"preset": "ultrafast"},
                          embeddings={"enabled": False}, execution={"executor": "local"}) == 0
    with Chromium(tmp_path) as browser:
        browser.open((out / "report" / "index.html").as_uri())
        header = browser.evaluate(RUN_HEADER)
        assert header["state"] == "succeeded" and header["reason"] is None
        assert browser.evaluate("document.querySelector('#run .state-words').textContent") == "every video was processed"
        settings = browser.evaluate("Object.fromEntries([...document.querySelectorAll('#run .settings tr')]"
                                    ".map(r => [r.cells[0].textContent, r.cells[1].textContent]))")
        assert settings["motion filter"] == "enable: global mean \u2265 0.00098, least-moving patch \u2265 1e-06"
        assert settings["splitting"] == "fixed-stride, clipLengthS 5.0, minClipLengthS 2.0"
        assert settings["embeddings"] == "off"
        keep(browser.screenshot(tmp_path / "report-succeeded-run.png", "#run"))
        assert browser.errors() == []


def test_a_later_run_without_a_summary_shows_as_running_not_as_the_earlier_end(curated_copy):
    """A run killed part way leaves progress.json at `running` and the earlier run's summary.json:
    the header shows the later run, from progress.json."""
    progress = load_json(curated_copy / "progress.json")
    progress.update(runId="a-later-run", state="running")
    (curated_copy / "progress.json").write_text(json.dumps(progress))
    report.write_report(Storage(), str(curated_copy))
    page = (curated_copy / "report" / "index.html").read_text()
    assert '<strong id="run-state">running</strong>' in page and "<dd>a-later-run</dd>" in page
    assert "<dd>progress.json</dd>" in page and "stopped before writing its summary" in page


CHARTS = ("Object.fromEntries([...document.querySelectorAll('.charts figure')].map(f => [f.querySelector('figcaption')"
          ".textContent, {ticks: [...f.querySelectorAll('text.x-tick')].map(t => [t.textContent, +t.getAttribute('x')]),"
          " lines: [...f.querySelectorAll('line.threshold')].map(l => [l.querySelector('title').textContent,"
          " +l.getAttribute('x1')]), zeros: [...f.querySelectorAll('rect.zero')].length}]))")


def test_histograms_have_threshold_lines_and_readable_axes(curated, tmp_path):
    """The thresholds sit where their values are on the axis; zero motion is its own bar at 0."""
    with Chromium(tmp_path) as browser:
        browser.open((curated / "report" / "index.html").as_uri())
        charts = browser.evaluate(CHARTS)
        for chart in charts.values():
            assert len(chart["ticks"]) >= 4
            assert not any("e-9" in label or "e-09" in label for label, _ in chart["ticks"])
        assert [title for title, _ in charts["Clip length (s)"]["lines"]] == ["min: 2"]
        [(title, x)] = charts["Motion, global mean (log)"]["lines"]
        ticks = dict(charts["Motion, global mean (log)"]["ticks"])
        decade = ticks["1e-2"] - ticks["1e-3"]  # pixels from one power of ten to the next
        assert title == "threshold: 0.00098" and x == pytest.approx(ticks["1e-3"] + math.log10(0.98) * decade, abs=0.2)
        [(title, x)] = charts["Motion, least-moving patch (log)"]["lines"]
        assert title == "threshold: 1e-06" and abs(x - dict(charts["Motion, least-moving patch (log)"]["ticks"])["1e-6"]) < 0.5
        # The static clip (filtered by motion) has no motion at all: a bar at "0", left of the log axis.
        assert charts["Motion, global mean (log)"]["zeros"] == 1
        assert ticks["0"] < min(x for label, x in ticks.items() if label != "0")
        keep(browser.screenshot(tmp_path / "report-charts.png", "#distributions"))


def test_plain_reasons_for_raw_failure_messages():
    raw = "ProbeError: not a readable video: [Errno 1094995529] Invalid data found when processing input: '<none>'"
    assert report_data.plain_reason(raw) == "the file is not a video FFmpeg can read"
    assert report_data.plain_reason("ProbeError: no video stream") == "the file has no video stream"
    # A dead worker may have crashed or been killed: the words do not claim memory ran out.
    died = "gave up after 2 attempts: its worker process died (crash, out of memory or killed)"
    assert report_data.plain_reason(died) == "the process working on it died (a crash, memory running out, or a kill)"
    assert report_data.plain_reason("ValueError: [Errno 5] something new") == "something new"
    assert report_data.failures([{"key": "probe", "value": raw}]) == [
        {"stage": "probe", "reason": "the file is not a video FFmpeg can read", "raw": raw}]


# ---------------------------------------------------------------------- gallery, panel, map


def clips_by_video(out: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (out / "metas" / "v0").glob("*.json"):
        meta = load_json(path)
        found.setdefault(Path(meta["source_video"]).name, set()).add(meta["span_uuid"])
    return found


def test_the_gallery_filters_sorts_and_opens_a_clip_panel(curated, tmp_path):
    passed, filtered = passed_and_filtered(curated)
    three_scenes = clips_by_video(curated)["three_scenes.mp4"]
    with Chromium(tmp_path) as browser:
        browser.open((curated / "report" / "index.html").as_uri())
        browser.wait_for(ALL_PREVIEWS_DECODED)

        def set_control(control: str, value: str) -> None:
            browser.evaluate(f"(() => {{ const c = document.getElementById('{control}'); c.value = {json.dumps(value)};"
                             f" c.dispatchEvent(new Event(c.tagName === 'SELECT' ? 'change' : 'input')); }})()")

        set_control("filter-video", "three_scenes")
        browser.wait_for("document.getElementById('gallery-matches').textContent === '2 of 3 clips match'")
        assert set(browser.evaluate(TILE_IDS)) == three_scenes & passed
        set_control("filter-video", "")
        motions = {m["span_uuid"]: m["motion_score"]["global_mean"]
                   for m in map(load_json, (curated / "metas" / "v0").glob("*.json")) if m["span_uuid"] in passed}
        middle = sorted(motions.values())[1]
        set_control("filter-min", str(middle))
        browser.wait_for("document.getElementById('gallery-matches').textContent === '2 of 3 clips match'")
        assert set(browser.evaluate(TILE_IDS)) == {i for i, m in motions.items() if m >= middle}
        set_control("filter-min", "")
        set_control("gallery-sort", "score-asc")
        browser.wait_for("document.getElementById('gallery-matches').textContent === '3 of 3 clips match'")
        assert browser.evaluate(TILE_IDS) == sorted(motions, key=motions.get)
        set_control("gallery-sort", "score-desc")
        descending = json.dumps(sorted(motions, key=motions.get)[::-1], separators=(",", ":"))
        browser.wait_for(f"JSON.stringify({TILE_IDS}) === {json.dumps(descending)}")

        browser.evaluate("document.querySelector('#gallery-tabs [data-collection=filtered]').click()")
        set_control("gallery-sort", "")
        set_control("filter-reason", "motion")
        browser.wait_for("document.getElementById('gallery-matches').textContent === '1 of 1 clips match'")
        assert set(browser.evaluate(TILE_IDS)) == filtered

        [clip_id] = filtered
        meta = load_json(curated / "metas" / "v0" / f"{clip_id}.json")
        browser.evaluate("document.querySelector('#tiles figure a').click()")
        browser.wait_for("document.getElementById('clip-panel').open")
        assert browser.evaluate("location.href").endswith("#filtered/0")  # the click opened the panel, not the mp4
        panel = browser.evaluate("Object.fromEntries([...document.querySelectorAll('#clip-panel .clip-facts tr')]"
                                 ".map(r => [r.cells[0].textContent, r.cells[1].textContent]))")
        assert browser.evaluate("document.getElementById('clip-panel-body').dataset.id") == clip_id
        assert panel["status"] == "filtered, filtered by motion" and panel["video"] == "moving_then_static.mp4"
        assert panel["size"] == f"{meta['width']}x{meta['height']}" and panel["codec"] == meta["video_codec"]
        assert panel["frames"] == str(meta["num_frames"]) and panel["bytes"] == str(meta["num_bytes"])
        link = browser.evaluate("document.querySelector('#clip-panel .clip-link').href")
        assert link == (curated / meta["clip_location"]).as_uri() and (curated / meta["clip_location"]).is_file()
        browser.wait_for("(() => { const i = document.querySelector('#clip-panel img'); return i.complete && i.naturalWidth > 0; })()")
        keep(browser.screenshot(tmp_path / "report-clip-panel.png"))
        assert browser.errors() == []


def test_the_embedding_map_has_a_point_per_embedded_clip_and_a_click_opens_it(curated, tmp_path):
    embedded = {m["span_uuid"] for m in map(load_json, (curated / "metas" / "v0").glob("*.json")) if m.get("embedding")}
    assert len(embedded) >= 3
    with Chromium(tmp_path) as browser:
        browser.open((curated / "report" / "index.html").as_uri())
        browser.wait_for("!document.getElementById('embeddings').hidden")
        points = browser.evaluate("[...document.querySelectorAll('#map circle')].map(c => [c.dataset.id, +c.getAttribute('cx'), +c.getAttribute('cy')])")
        assert {i for i, _, _ in points} == embedded
        assert len({(x, y) for _, x, y in points}) == len(points)  # a projection, not a pile
        browser.evaluate("document.querySelector('#map circle:last-of-type').dispatchEvent(new MouseEvent('click'))")
        browser.wait_for("document.getElementById('clip-panel').open")
        assert browser.evaluate("document.getElementById('clip-panel-body').dataset.id") == points[-1][0]
        browser.evaluate("document.getElementById('clip-panel').close()")
        keep(browser.screenshot(tmp_path / "report-embedding-map.png", "#embeddings"))
        assert browser.errors() == []


class _Touch:
    """Unpickles by creating a file: what a hostile embedding pickle could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


def test_the_map_loads_only_numpy_arrays_from_embedding_pickles(curated_copy, tmp_path, caplog):
    """An output may be someone else's: an embedding pickle that names anything but a numpy array
    is left out of the map, never run."""
    embedded = [m for m in map(load_json, sorted((curated_copy / "metas" / "v0").glob("*.json"))) if m.get("embedding")]
    marker = tmp_path / "ran"
    hostile = embedded[0]["embedding"]["location"]
    (curated_copy / hostile).write_bytes(pickle.dumps(_Touch(marker)))
    report.write_report(Storage(), str(curated_copy))
    assert not marker.exists()
    points = json.loads((curated_copy / "report" / "data" / "map-00000.js").read_text().split(",", 2)[2].rsplit(")", 1)[0])
    assert {p["id"] for p in points} == {m["span_uuid"] for m in embedded[1:]}
    assert f"{hostile} left out" in caplog.text


def test_duplicates_are_listed_when_dedup_ran(curated_copy, tmp_path):
    job = write_manifest(tmp_path / "dedup.yaml", manifest("/in", str(curated_copy), dedup={"enabled": True, "eps": 0.5}))
    assert main(["dedup", str(job)]) == 0
    found = pq.read_table(curated_copy / "dedup" / "duplicates.parquet").to_pylist()
    assert found
    assert main(["report", str(curated_copy)]) == 0
    with Chromium(tmp_path) as browser:
        browser.open((curated_copy / "report" / "index.html").as_uri())
        browser.wait_for("!document.getElementById('duplicates').hidden")
        rows = browser.evaluate("[...document.querySelectorAll('#duplicate-rows tr')].map(r =>"
                                " [...r.querySelectorAll('a')].map(a => a.title.split(' ')[1]).concat(+r.cells[2].textContent))")
        expected = sorted(found, key=lambda d: -d["cosine_similarity"])
        assert [r[:2] for r in rows] == [[d["id"], d["duplicate_of"]] for d in expected]
        assert [r[2] for r in rows] == pytest.approx([d["cosine_similarity"] for d in expected], abs=1e-3)
        browser.evaluate("document.querySelector('#duplicate-rows a').click()")
        browser.wait_for("document.getElementById('clip-panel').open")
        assert browser.evaluate("document.getElementById('clip-panel-body').dataset.id") == expected[0]["id"]
        browser.evaluate("document.getElementById('clip-panel').close()")
        browser.wait_for("[...document.querySelectorAll('#duplicates img')].every(i => i.complete && i.naturalWidth > 0)")
        keep(browser.screenshot(tmp_path / "report-duplicates.png", "#duplicates"))
        assert browser.errors() == []


def test_the_gallery_and_the_map_stay_bounded_and_say_so(curated_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "GALLERY_LIMIT", 2)
    monkeypatch.setattr(report_data, "MAP_POINTS", 2)
    report.write_report(Storage(), str(curated_copy))
    data = (curated_copy / "report" / "data" / "passed-00000.js").read_text()
    assert data.count('"id":') == 2
    with Chromium(tmp_path) as browser:
        browser.open((curated_copy / "report" / "index.html").as_uri())
        assert browser.evaluate("document.getElementById('gallery-cap').textContent").startswith(
            "The gallery holds the first 2 of the 3 passed clips")
        assert browser.evaluate("document.querySelector('#gallery-tabs [data-collection=passed]').textContent") == "passed (3)"
        browser.wait_for("document.querySelectorAll('#map circle').length === 2")
        assert "(an even sample of 3)" in browser.evaluate("document.getElementById('map-note').textContent")
        assert browser.errors() == []
