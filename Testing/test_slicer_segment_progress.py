"""The panel's progress parser reads exactly what the engine's JSON reporter writes."""
from __future__ import annotations

import io
import json

import pytest

from mednextv2.progress import make_progress
from MedNeXtV2SegmentLib.progress import format_duration, format_progress, parse_progress_line


def engine_lines(*calls) -> list:
    stream = io.StringIO()
    report = make_progress("json", stream)
    for args, kwargs in calls:
        report(*args, **kwargs)
    return stream.getvalue().splitlines()


def test_round_trip_with_the_engine_reporter():
    lines = engine_lines((("predict", 0.25), {"message": "tile 3/12", "eta_s": 90.0, "tiles_done": 3}),
                         (("train", 0.5), {"epoch": 4, "loss": float("nan"), "dice": 0.81}))
    first, second = (parse_progress_line(l) for l in lines)
    assert (first.stage, first.fraction, first.eta_s, first.message) == ("predict", 0.25, 90.0, "tile 3/12")
    assert first.extra == {"tiles_done": 3} and first.percent == 25
    assert second.extra == {"epoch": 4, "loss": None, "dice": 0.81}  # NaN arrives as null
    assert second.eta_s is None  # first report of a stage has no ETA yet


@pytest.mark.parametrize("line", [
    "", "INFO mednextv2.segment: model x", "Traceback (most recent call last):", "{not json}",
    "[1, 2]", '{"fraction": 0.5}', '{"stage": "x"}', '{"stage": "x", "fraction": "half"}',
    '{"stage": 3, "fraction": 0.5}', '{"stage": "x", "fraction": true}', "/tmp/out.seg.nrrd",
])
def test_lines_that_are_not_progress_go_to_the_log(line):
    assert parse_progress_line(line) is None


def test_values_are_sanitized():
    event = parse_progress_line(json.dumps({"stage": "export", "fraction": 1.7, "eta_s": -3, "message": None}))
    assert event.fraction == 1.0 and event.eta_s is None and event.message == ""
    assert parse_progress_line('  {"stage": "s", "fraction": -0.2, "eta_s": 5}\r\n').fraction == 0.0


def test_formatting():
    assert format_duration(None) == ""
    assert format_duration(44.6) == "45 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"
    event = parse_progress_line(engine_lines((("predict", 0.42), {"message": "tile 5/12", "eta_s": 80}))[0])
    assert format_progress(event) == "predict 42% - ETA 1 min 20 s - tile 5/12"
