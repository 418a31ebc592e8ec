"""Logging: the `emoframe` logger's level from `--log-level`, and what a run shows at each level."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emoframe.flows.run import logs
from tests.media import write_video

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_logger():
    """The emoframe logger and the Prefect settings as this process had them, restored afterwards."""
    logger = logging.getLogger(logs.LOGGER)
    saved = (logger.level, list(logger.handlers), logger.propagate)
    # configure() writes os.environ itself; restored by hand (monkeypatch.delenv of an absent name records
    # nothing, and a PREFECT_LOGGING_LEVEL left behind would quieten every later test's services).
    names = ("PREFECT_LOGGING_LEVEL", "PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW")
    env = {name: os.environ.pop(name, None) for name in names}
    logger.setLevel(logging.NOTSET)
    logger.handlers = []
    yield logger
    logger.level, logger.handlers, logger.propagate = saved[0], saved[1], saved[2]
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_configure_sets_the_level_once_and_hands_it_to_prefect(fresh_logger):
    os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "mylib"  # the fixture restores the environment
    logs.configure(None)
    assert fresh_logger.level == logging.INFO
    assert "PREFECT_LOGGING_LEVEL" not in os.environ  # no flag given: Prefect keeps its own setting
    logs.configure("warning")
    logs.configure(None)  # a later default does not undo the flag
    assert fresh_logger.level == logging.WARNING
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "WARNING"
    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == "mylib,emoframe"  # the user's extra loggers kept
    # One line per record, not two: one handler of ours (Prefect may add its API handler), no propagation.
    assert sum(isinstance(h, logs._Handler) for h in fresh_logger.handlers) == 1 and not fresh_logger.propagate
    with pytest.raises(ValueError, match="one of debug, info"):
        logs.configure("loud")


def test_a_record_reaches_stderr_with_its_module_and_level(fresh_logger, capsys):
    logs.configure("debug")
    logging.getLogger("emoframe.flows.run.label_archive").debug("submitted %s", "a.mp4")
    logging.getLogger("emoframe.workers.task.triton_nodes").info("ready")
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("| DEBUG   | emoframe.flows.run.label_archive - submitted a.mp4"), err
    assert err[1].endswith("| INFO    | emoframe.workers.task.triton_nodes - ready"), err


def test_a_record_still_prints_after_the_stderr_it_last_wrote_to_was_closed(fresh_logger, monkeypatch, tmp_path):
    """pytest and the CLI's tests swap sys.stderr and close the old one; the next record goes to the new one
    (it failed with "I/O operation on closed file" when the handler flushed the old stream first)."""
    import io

    logs.configure("info")
    first = open(tmp_path / "first.log", "w")  # a file: flushing a closed one raises (a StringIO's does not)
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("emoframe.x").info("one")
    first.close()
    assert (tmp_path / "first.log").read_text().endswith("emoframe.x - one\n")
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("emoframe.x").info("two")
    assert second.getvalue().endswith("emoframe.x - two\n"), second.getvalue()


def _label(folder: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "label", str(folder), "--out", str(out),
                           "--faces", "centred", "--no-report", *flags], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.integration
def test_log_level_warning_keeps_the_answer_and_debug_adds_each_video(tmp_path):
    """The real CLI, Prefect, Ray and Triton. At warning: the summary (the command's answer) and nothing of
    the run's progress or Prefect's chatter. At debug: each video as it is submitted, besides the progress."""
    folder = tmp_path / "in"
    write_video(folder / "clip.mp4", 24)
    quiet = _label(folder, tmp_path / "quiet", "--log-level", "warning")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    said = quiet.stdout + quiet.stderr
    assert quiet.stdout.count("1 labelled, 0 failed") == 1  # the answer, once, on stdout
    for chatter in ("videos found", "[1/1]", "in flight", "Finished in state", "Beginning flow run"):
        assert chatter not in said, f"{chatter!r} shown at --log-level warning:\n{said}"
    loud = _label(folder, tmp_path / "loud", "--log-level", "debug")
    assert loud.returncode == 0, loud.stdout + loud.stderr
    said = loud.stdout + loud.stderr
    assert loud.stdout.count("1 labelled, 0 failed") == 1 and "clip.mp4: 24 frames" in loud.stdout
    assert "DEBUG   | emoframe.flows.run.label_archive - submitted" in said and "clip.mp4" in said
    assert "INFO    | emoframe.flows.run.label_archive - 1 videos found" in said
    assert "INFO    | emoframe.flows.run.label_archive - [1/1] labelled" in loud.stderr
