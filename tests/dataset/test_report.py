"""report/index.html in a real browser (headless Debian Chromium): it loads with no error, shows
the output's counts, videos, failures and charts, and a gallery of previews that really decode;
paging loads one data file at a time; it works from a folder, from a copy and from an S3 bucket.

Each test keeps its screenshots under its tmp dir and, when CLIPFORGE_TEST_ARTIFACTS names a
directory, copies them there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support.browser import Chromium
from clipforge import report
from clipforge.cli import main
from clipforge.storage import Storage
from support.jobs import load_json

ALL_PREVIEWS_DECODED = (
    "(() => { const imgs = [...document.querySelectorAll('#tiles img')];"
    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.length; })()"
)
TILE_IDS = "[...document.querySelectorAll('#tiles figure')].map(f => f.dataset.id)"


def keep(screenshot: Path) -> Path:
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
        "filtered-00000.js", "passed-00000.js", "passed-00001.js", "videos-00000.js", "videos-00001.js"]
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
