"""The progress bar for people: log records never glued to the end of a bar line."""
from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import mednextv2
from mednextv2.progress import BarSafeLogHandler, make_progress


def test_a_log_record_starts_on_its_own_line_after_a_bar():
    stream = io.StringIO()
    report = make_progress("bar", stream)
    logger = logging.getLogger("mednextv2.test.bar")
    handler = BarSafeLogHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        report("train", 0.4, "loss 1.5569")
        logger.warning("drew the curve")
        report("train", 0.5, "loss 1.4")
        report("train", 1.0, "done")
        logger.warning("after a finished bar")
        report("export", 0.5)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().split("\n")
    assert "WARNING mednextv2.test.bar: drew the curve" in lines, lines
    assert "WARNING mednextv2.test.bar: after a finished bar" in lines, lines
    assert not any(line.strip() == "" for line in lines[:-1]), lines  # no blank lines either
    assert all("loss" not in line for line in lines if "WARNING" in line)


def test_the_command_line_logs_through_the_bar_safe_handler():
    code = ("import logging, sys; from mednextv2.cli import main; from mednextv2.progress import make_progress;"
            "sys.argv=['mednextv2'];"
            "import mednextv2.cli as c; c.main(['demo', '--minutes', '-1']);"
            "make_progress('bar')('train', 0.3, 'loss 1.55'); logging.getLogger('mednextv2.x').info('a record')")
    env = {"PYTHONPATH": str(Path(mednextv2.__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "loss 1.55\nINFO mednextv2.x: a record" in done.stderr, done.stderr
