"""build.log gets everything a build prints, line by line; progress bars never make a line over 1,000 characters."""

from __future__ import annotations

import io

from tqdm import tqdm

from trimflow.cli import main
from trimflow.logs import MAX_LINE, LineWriter


def test_progress_redraws_become_a_few_plain_lines():
    buf = io.StringIO()
    out = LineWriter(buf, every_s=3600)  # nothing periodic: only the bar's first and last state
    for _ in tqdm(range(2_000), file=out, mininterval=0, miniters=1, desc="work", leave=False):
        pass
    out.write("\x1b[1mdone\x1b[0m " + "x" * 5000 + "\n")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("work:   0%") and lines[1].startswith("work: 100%") and "2000/2000" in lines[1]
    assert lines[2].startswith("done xxx") and lines[2].endswith("characters cut]")
    assert max(map(len, lines)) <= MAX_LINE


def _relevance_build(tmp_path, *extra):
    return main(["relevance", "--build-dir", str(tmp_path), "--set", "relevance.images=100", "eval_images=50",
                 "--set", "trim.keep=0.3", *extra])


def test_build_log_has_the_console_output_and_stage_times(tmp_path, capsys):
    assert _relevance_build(tmp_path) == 0
    err = capsys.readouterr().err
    log = (tmp_path / "pynq-z2" / "build.log").read_text()
    lines = log.splitlines()
    assert max(map(len, lines)) <= MAX_LINE
    assert "trim.keep has no effect" in err and "trim.keep has no effect" in log
    start = next(line for line in lines if "▶ relevance" in line)
    end = next(line for line in lines if "✓ relevance" in line)
    assert start[:8].count(":") == 2 and end.rstrip().endswith(" s")  # clock time, then the stage's seconds
    # the bar as lines of their own (which states appear depends on timing: at most one line every 30 s)
    assert any(line.split(" ", 1)[-1].startswith("relevance:") for line in lines)
    assert "\r" not in log

    # -q: warnings (and the result) only on the console; the log still gets every line. Cached this time.
    assert _relevance_build(tmp_path, "-q") == 0
    err = capsys.readouterr().err
    assert "trim.keep has no effect" in err and "relevance" not in err.replace("trim.keep", "")
    log = (tmp_path / "pynq-z2" / "build.log").read_text()
    assert log.count("==== ") == 2 and "✓ relevance  cached" in log.split("==== ")[-1]


def test_quiet_still_shows_errors(tmp_path, capsys):
    assert main(["relevance", "-q", "--build-dir", str(tmp_path), "--force", "nosuchstage"]) == 2
    assert "trimflow: error: --force: unknown stage(s) nosuchstage" in capsys.readouterr().err
    assert "stopped: FlowError" in (tmp_path / "pynq-z2" / "build.log").read_text()
