"""What an upload is called (lib/uploads/naming.py): its content type, extension, object name and source URL."""

from __future__ import annotations

import json
import re

import pytest

from lib.platform.errors import (
    UnsupportedContentType,
    ValidationFailed,
)
from lib.uploads import naming
from tests.helpers import content_type_pattern


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("video/mp4", "video/mp4", id="plain"),
        pytest.param("Video/MP4", "video/mp4", id="upper-case"),
        pytest.param('video/mp4; codecs="avc1.42E01E"', "video/mp4", id="parameters"),
        pytest.param("  audio/mpeg ", "audio/mpeg", id="whitespace"),
        pytest.param("audio/x-wav", "audio/wav", id="alias-x-wav"),
        pytest.param("image/jpg", "image/jpeg", id="alias-jpg"),
        pytest.param("font/woff2", "font/woff2", id="font"),
        pytest.param("text/vtt", "text/vtt", id="subtitles"),
    ],
)
def test_if_content_type_supported_then_normalised(given, expected):
    assert naming.normalize_content_type(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("text/html", id="html"),
        pytest.param("image/svg+xml", id="svg"),
        pytest.param("application/octet-stream", id="octet-stream"),
        pytest.param("", id="empty"),
        pytest.param("video", id="no-subtype"),
        pytest.param("video/mp4/x", id="extra-slash"),
    ],
)
def test_if_content_type_not_on_allow_list_then_unsupported(given):
    with pytest.raises(UnsupportedContentType) as info:
        naming.normalize_content_type(given)
    assert info.value.details["supported_content_types"] == sorted(naming.CONTENT_TYPES)
    assert "video/mp4" in info.value.details["supported_content_types"]


@pytest.mark.parametrize("given", ["video/mp4\r\nX-Evil: 1", "video/mp4\x00", "video/\tmp4", "video/mp4;\x7f"])
def test_if_content_type_has_control_characters_then_validation_error(given):
    with pytest.raises(ValidationFailed) as info:
        naming.normalize_content_type(given)
    assert info.value.details["fields"][0]["field"] == "content_type"
    assert given not in json.dumps(info.value.envelope())


@pytest.mark.parametrize(
    ("filename", "content_type", "expected"),
    [
        pytest.param("clip.MP4", "video/mp4", "mp4", id="lower-cased"),
        pytest.param("clip.m4v", "video/mp4", "m4v", id="another-usual-extension"),
        pytest.param("photo.JPEG", "image/jpeg", "jpeg", id="jpeg-spelled-out"),
        pytest.param("my.clip.mov", "video/mp4", "mp4", id="last-suffix-of-another-type"),
        pytest.param("my.clip.mov", "video/quicktime", "mov", id="last-suffix"),
        pytest.param("noext", "video/quicktime", "mov", id="no-suffix"),
        pytest.param(None, "image/jpeg", "jpg", id="no-filename"),
        pytest.param("", "audio/mpeg", "mp3", id="empty-filename"),
        pytest.param("clip.", "video/webm", "webm", id="trailing-dot"),
        pytest.param("x.abcdefghij", "video/mp4", "mp4", id="any-other-suffix"),
        pytest.param("x.html", "video/mp4", "mp4", id="html"),
        pytest.param("x.svg", "image/png", "png", id="svg"),
        pytest.param("x.exe", "font/woff2", "woff2", id="exe"),
        pytest.param("x.\u212a", "video/mp4", "mp4", id="kelvin-sign-folds-to-k"),
        pytest.param("x.m\u0130v", "video/mp4", "mp4", id="dotted-capital-i"),
        pytest.param("x.m-p4", "video/mp4", "mp4", id="suffix-punctuation"),
        pytest.param("../../etc/passwd", "video/mp4", "mp4", id="traversal"),
        pytest.param("a.mp4/../../b", "video/mp4", "mp4", id="traversal-after-dot"),
        pytest.param("x.mp4\x00", "video/mp4", "mp4", id="nul"),
        pytest.param("x.ñ", "video/mp4", "mp4", id="non-ascii"),
        pytest.param("x.mp3.gz", "audio/mpeg", "mp3", id="double-suffix"),
    ],
)
def test_extension_comes_from_filename_only_when_usual_for_the_type(filename, content_type, expected):
    assert naming.choose_extension(filename, content_type) == expected


def test_object_name_is_workspace_scoped_and_unguessable_and_the_id_names_it():
    made = [naming.new_upload("ws_1", "mp4", "live") for _ in range(1000)]
    assert len({name for _, name in made}) == 1000
    for upload_id, name in made:
        token = re.fullmatch(r"uploads/ws_1/([0-9a-f]{32})\.mp4", name).group(1)
        assert upload_id == f"upl_{token}"
        assert naming.UPLOAD_ID.fullmatch(upload_id)


def test_test_mode_objects_go_under_the_test_prefix():
    _, name = naming.new_upload("ws_1", "png", "test")
    assert re.fullmatch(r"test-uploads/ws_1/[0-9a-f]{32}\.png", name)
    # The prefixes must not nest, or one lifecycle rule would match the other's objects.
    live, test = naming.PREFIXES["live"], naming.PREFIXES["test"]
    assert not live.startswith(test)
    assert not test.startswith(live)


def test_source_url_joins_cdn_base_and_object_name():
    assert (
        naming.source_url("https://cdn-user.framelane.io", "uploads/ws_1/ab.mp4")
        == "https://cdn-user.framelane.io/uploads/ws_1/ab.mp4"
    )


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("video/mp4\u00a0", id="no-break-space"),
        pytest.param("image/webp\u212a", id="kelvin-sign"),
        pytest.param("vİdeo/mp4", id="dotted-capital-i"),
    ],
)
def test_only_ascii_is_case_folded_or_trimmed(given):
    with pytest.raises(UnsupportedContentType):
        naming.normalize_content_type(given)


def test_content_type_pattern_accepts_exactly_what_normalisation_accepts():
    pattern = re.compile(content_type_pattern())
    cases = [
        "video/mp4",
        " VIDEO/MP4 ",
        "audio/x-wav;rate=44100",
        "image/jpg; q=1",
        "font/woff2",
        "video/mp4\n",
        "video/mp4\x00",
        "text/html",
        "",
        "video/mp4\u00a0",
        "vİdeo/mp4",
        "video/mp4;\x7f",
    ]
    for value in cases:
        try:
            naming.normalize_content_type(value)
            accepted = True
        except (UnsupportedContentType, ValidationFailed):
            accepted = False
        assert bool(pattern.search(value)) is accepted, repr(value)
