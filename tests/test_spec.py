"""The job spec: NeMo Curator's defaults, per-stage resource defaults, error reporting."""

from __future__ import annotations

import pytest

from clipforge.spec import InvalidJobError, STAGES, load_job, parse_job, stage_resources


def job(**spec) -> dict:
    return {
        "apiVersion": "clipforge.dev/v1alpha1",
        "kind": "VideoCurationJob",
        "metadata": {"name": "j"},
        "spec": {"input": {"uri": "in"}, "output": {"uri": "out"}, **spec},
    }


def test_defaults_match_nemo_curator():
    spec = parse_job(job()).spec
    assert spec.splitting.algorithm == "fixed-stride"
    assert (spec.splitting.fixed_stride.clip_length_s, spec.splitting.fixed_stride.min_clip_length_s) == (10, 2)
    t = spec.splitting.transnetv2
    assert (t.threshold, t.min_length_s, t.max_length_s, t.max_length_mode, t.crop_s) == (0.4, 2, 10, "stride", 0.5)
    assert spec.motion_filter.global_mean_threshold == 0.00098
    assert spec.motion_filter.per_patch_min_threshold == 1e-6


def test_a_partial_stage_hint_keeps_the_stage_defaults():
    spec = parse_job(job(execution={"stages": {"probe": {"minWorkers": 3}, "split": {"gpus": 0.5}}})).spec
    probe = stage_resources(spec, "probe")
    assert (probe.cpus, probe.min_workers, probe.max_workers) == (0.25, 3, 3)
    split = stage_resources(spec, "split")
    assert (split.cpus, split.gpus, split.min_workers, split.max_workers) == (1.0, 0.5, 1, 4)
    assert all(stage_resources(spec, s).max_workers >= stage_resources(spec, s).min_workers for s in STAGES)


def test_every_problem_is_listed_by_field_path():
    document = job(splitting={"algorithm": "magic"}, previews={"fps": -1}, execution={"stages": {"write": {"minWorkers": 3, "maxWorkers": 1}}})
    document["spec"]["input"] = {}
    document["spec"]["typo"] = 1
    with pytest.raises(InvalidJobError) as info:
        parse_job(document, "job.yaml")
    message = str(info.value)
    for path in ("spec.input: Value error, give one of input.uri", "spec.splitting.algorithm", "spec.previews.fps", "spec.execution.stages.write", "spec.typo"):
        assert path in message
    assert message.startswith("job.yaml: invalid VideoCurationJob")


def test_load_job_needs_exactly_one_job_document(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("kind: Secret\n---\napiVersion: clipforge.dev/v1\nkind: VideoCurationjob\n")
    with pytest.raises(InvalidJobError) as info:
        load_job(path)
    assert ("expected exactly one VideoCurationJob document (apiVersion clipforge.dev/v1alpha1), found 2 documents:"
            " kind 'Secret' (apiVersion None), kind 'VideoCurationjob' (apiVersion 'clipforge.dev/v1')"
            ) in str(info.value)
    with pytest.raises(InvalidJobError, match="file not found"):
        load_job(tmp_path / "missing.yaml")


def test_a_wrong_value_is_shown_back():
    document = job()
    document["apiVersion"] = "clipforge.dev/v1"
    with pytest.raises(InvalidJobError) as info:
        parse_job(document)
    assert "apiVersion: Input should be 'clipforge.dev/v1alpha1' (found 'clipforge.dev/v1')" in str(info.value)


def test_an_unknown_field_gets_the_closest_known_one():
    document = job(transcoding={"crff": 20}, execution={"stages": {"trancode": {}, "embed": {"cpu": 1}}},
                   cluster={"volumes": [{"name": "v", "emptyDir": {}, "mountPath": "/x"}]})
    with pytest.raises(InvalidJobError) as info:
        parse_job(document)
    problems = info.value.problems
    assert "spec.transcoding.crff: unknown field; did you mean crf?" in problems
    assert "spec.execution.stages.trancode: unknown field; did you mean transcode?" in problems
    assert "spec.execution.stages.embed.cpu: unknown field; did you mean cpus?" in problems
    # Nothing close: the names that are known there, through the list's index.
    assert ("spec.cluster.volumes.0.mountPath: unknown field (known here: name, emptyDir, configMap,"
            " persistentVolumeClaim)") in problems


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: clipforge.dev/v1alpha1\nkind: VideoCurationJob\nspec:\n  input: {uri: in\n"
                    "  output: {uri: out}\n")
    with pytest.raises(InvalidJobError) as info:
        load_job(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid VideoCurationJob")
    assert "line 5, column 9: not valid YAML: while parsing a flow mapping: expected ',' or '}'" in message
    assert "<unicode string>" not in message


def test_switched_off_stages_are_not_started():
    from clipforge.stages import pipeline_stages

    names = lambda spec: [s.name for s in pipeline_stages(parse_job(job(**spec)).spec)]  # noqa: E731
    assert names({}) == ["probe", "split", "transcode", "motion", "embed", "preview", "write"]
    off = {"motionFilter": {"mode": "disable"}, "previews": {"enabled": False}, "embeddings": {"enabled": False}}
    assert names(off) == ["probe", "split", "transcode", "write"]


def test_hdr_keep_needs_an_encoder_that_writes_10_bit():
    with pytest.raises(InvalidJobError) as info:
        parse_job(job(transcoding={"hdr": "keep", "encoder": "libvpx-vp9"}))
    assert ("spec.transcoding: Value error, hdr: keep needs an encoder that writes 10-bit video"
            " (libx264, libsvtav1), not libvpx-vp9 (or hdr: toneMap)") in str(info.value)
    # Stream copy writes what the source holds, with whichever encoder the spec names.
    assert parse_job(job(transcoding={"hdr": "keep", "encoder": "h264_nvenc", "mode": "copy"})).spec.transcoding.hdr == "keep"


def test_hdr_decides_the_clips():
    """Chunk records carry clip_settings: a changed hdr option redoes the clips."""
    from clipforge.spec import clip_settings

    mapped, kept = (clip_settings(parse_job(job(transcoding={"hdr": hdr})).spec) for hdr in ("toneMap", "keep"))
    assert mapped["transcoding"]["hdr"] == "toneMap" and kept["transcoding"]["hdr"] == "keep"


# Settings the pipeline cannot honour together: each is refused before a run, naming its fields.
INCONSISTENT = {
    "transnetv2 min over max": (
        {"splitting": {"algorithm": "transnetv2", "transnetv2": {"minLengthS": 10, "maxLengthS": 2}}},
        "spec.splitting.transnetv2: Value error, minLengthS (10) is more than maxLengthS (2): every clip would be"
        " dropped"),
    "scenedetect crop leaves less than min": (
        {"splitting": {"scenedetect": {"minLengthS": 2, "maxLengthS": 3, "cropS": 1}}},
        "spec.splitting.scenedetect: Value error, maxLengthS (3) less cropS (1) at both ends leaves 1 s, less than"
        " minLengthS (2): every clip would be dropped"),
    "crop leaves nothing": (
        {"splitting": {"transnetv2": {"minLengthS": 0, "maxLengthS": 2, "cropS": 1}}},
        "spec.splitting.transnetv2: Value error, maxLengthS (2) less cropS (1) at both ends leaves nothing"),
    "fixed stride min over clip length": (
        {"splitting": {"fixedStride": {"clipLengthS": 4, "minClipLengthS": 5}}},
        "spec.splitting.fixedStride: Value error, minClipLengthS (5) is more than clipLengthS (4)"),
    "crf over the encoder's scale": (
        {"transcoding": {"encoder": "libx264", "crf": 60}},
        "spec.transcoding: Value error, crf (60) is more than encoder libx264 takes (51)"),
    "texts without a text tower": (
        {"embeddings": {"algorithm": "efficientnet-lite0", "textsToVerify": ["a cat"]}},
        "spec.embeddings: Value error, textsToVerify needs an embedder with a text tower; algorithm"
        " efficientnet-lite0 has none"),
    "dedup without embeddings": (
        {"dedup": {"enabled": True}, "embeddings": {"enabled": False}},
        "spec: Value error, dedup.enabled needs embeddings.enabled"),
    "backoff initial over max": (
        {"retryBackoff": {"initialSeconds": 700, "maxSeconds": 600}},
        "spec.retryBackoff: Value error, initialSeconds (700) is more than maxSeconds (600)"),
}


@pytest.mark.parametrize("name", INCONSISTENT)
def test_validate_refuses_settings_that_contradict_each_other(name, tmp_path, capsys):
    import yaml

    from clipforge.cli import EXIT_INVALID, main

    spec, expected = INCONSISTENT[name]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(**spec)))
    assert main(["validate", str(path)]) == EXIT_INVALID
    captured = capsys.readouterr()
    assert expected in captured.err and "valid VideoCurationJob" not in captured.out


def test_consistent_edges_of_those_rules_are_accepted():
    """The bounds themselves hold: a clip can still be made, so the settings stand."""
    for spec in ({"splitting": {"transnetv2": {"minLengthS": 2, "maxLengthS": 3, "cropS": 0.5}}},
                 {"splitting": {"scenedetect": {"minLengthS": 0, "maxLengthS": 2, "cropS": 0.9}}},
                 {"splitting": {"fixedStride": {"clipLengthS": 4, "minClipLengthS": 4}}},
                 {"transcoding": {"encoder": "libvpx-vp9", "crf": 63}},
                 {"transcoding": {"encoder": "libx264", "crf": 60, "bitrate": "4M"}},  # crf unused
                 {"transcoding": {"encoder": "libx264", "crf": 60, "mode": "copy"}},
                 {"embeddings": {"algorithm": "clip", "textsToVerify": ["a cat"]}},
                 {"dedup": {"enabled": True, "inputUri": "/other"}, "embeddings": {"enabled": False}},
                 {"retryBackoff": {"initialSeconds": 600, "maxSeconds": 600}}):
        parse_job(job(**spec))
