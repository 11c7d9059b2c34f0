"""What a build prints, where it goes: the console (-q / -v) and build/<board>/build.log.

Everything the process writes to stdout/stderr (rich's stage lines, tqdm bars, warnings) and every record of the
`trimflow` loggers goes to the console and, from `build_log()` on, into the build's log file. Progress bars redraw
a line with carriage returns; in a file or a pipe that became one line of 116,000 characters, so wherever the
output is not a terminal a bar's redraws become plain lines, at most one every PROGRESS_EVERY_S seconds (and its
last state). Log-file lines carry a time stamp and never exceed MAX_LINE characters.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO

MAX_LINE = 1000
PROGRESS_EVERY_S = 30.0
QUIET_SHOWS = "trimflow:"  # the CLI's prefix for its errors and interruptions, shown under -q too
BACKLOG_CHARS = 200_000  # output kept from before the log file opens (config warnings), written into it then
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

log = logging.getLogger("trimflow")


class LineWriter(io.TextIOBase):
    """A text stream that writes whole lines to `out`: a carriage-return redraw (a progress bar) replaces the
    previous pending one and is written as its own line at most every `every_s` seconds, and once more when the bar
    is cleared or the next line starts; ANSI escapes are dropped and lines cut at MAX_LINE characters."""

    def __init__(self, out: TextIO, every_s: float = PROGRESS_EVERY_S, stamp: bool = False,
                 max_line: int | None = MAX_LINE):
        self.out, self.every_s, self.stamp, self.max_line = out, every_s, stamp, max_line
        self._line = ""  # text since the last \n or \r
        self._pending = ""  # the latest progress redraw not written yet
        self._written = ""  # the last progress redraw written
        self._last = -float("inf")  # the first redraw is written at once

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        for part in re.split(r"(\r\n|\r|\n)", _ANSI.sub("", s)):
            if part in ("\n", "\r\n"):
                self._progress_done()
                self._emit(self._line)
                self._line = ""
            elif part == "\r":
                self._redraw(self._line)
                self._line = ""
            else:
                self._line += part
        return len(s)

    def flush(self) -> None:  # tqdm flushes after every redraw: that must not turn each one into a line
        with contextlib.suppress(ValueError):
            self.out.flush()

    def finish(self) -> None:
        """Write what is still pending (a bar's latest state, an unterminated line)."""
        self._progress_done()
        if self._line.strip():
            self._emit(self._line)
        self._line = ""
        self.flush()

    def _redraw(self, text: str) -> None:
        if not text.strip():  # a bar clearing its line: its last state is worth a line
            self._progress_done()
            return
        self._pending = text.strip()
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._progress_done()
            self._last = now

    def _progress_done(self) -> None:
        if self._pending and self._pending != self._written:
            self._emit(self._pending)
            self._written = self._pending
        self._pending = ""

    def _emit(self, line: str) -> None:
        if self.max_line and len(line) > self.max_line:
            line = line[:self.max_line - 40] + f" … [{len(line) - self.max_line + 40} characters cut]"
        if self.stamp:
            if not line.strip():  # a time stamp alone says nothing
                return
            line = time.strftime("%H:%M:%S ") + line
        with contextlib.suppress(ValueError):  # a closed stream (e.g. pytest's capture torn down)
            self.out.write(line + "\n")


class _Output(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: the console (silent under -q) plus the open log files. On stderr,
    where progress bars draw, a console that is not a terminal gets whole lines; stdout (data such as `trimflow
    config`'s YAML) passes unchanged."""

    def __init__(self, real: TextIO, quiet: bool, progress_lines: bool):
        self.real = real
        self.console: TextIO = LineWriter(real, max_line=None) if progress_lines and not _isatty(real) else real
        self.quiet = quiet
        self._held = ""  # -q: the current line, shown only if it is the command's own message
        self.files: list[LineWriter] = []
        self.backlog: list[str] = []
        self._backlog_chars = 0

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # rich and tqdm ask: colours and redraws only for a real terminal
        return _isatty(self.real)

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.real.fileno()

    def write(self, s: str) -> int:
        if not self.quiet:
            self.console.write(s)
        else:  # -q: only the command's own "trimflow: error: ..." lines (warnings come through the log handler)
            *done, self._held = (self._held + s).split("\n")
            for line in done:
                if line.startswith(QUIET_SHOWS):
                    self.console.write(line + "\n")
        self.to_files(s)
        return len(s)

    def to_files(self, s: str) -> None:
        if self.files:
            for f in self.files:
                f.write(s)
        elif self._backlog_chars < BACKLOG_CHARS:
            self.backlog.append(s)
            self._backlog_chars += len(s)

    def flush(self) -> None:
        with contextlib.suppress(ValueError):
            self.console.flush()
        for f in self.files:
            f.flush()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Handler(logging.Handler):
    def __init__(self, write, level: int):
        super().__init__(level)
        self._write = write
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.WARNING:
                msg = f"{record.levelname.lower()}: {msg}"
            self._write(msg + "\n")
        except Exception:
            self.handleError(record)


def install(verbosity: int = 0) -> Callable[[], None]:
    """Route this process's output: verbosity -1 (-q) shows warnings and errors only, 0 also the stage lines and
    progress, 1 (-v) also debug records; log files opened by build_log() get everything. Returns the undo."""
    if isinstance(sys.stderr, _Output):  # already routed (a nested call)
        return lambda: None
    quiet = verbosity < 0
    saved = (sys.stdout, sys.stderr, log.handlers[:], log.level, log.propagate)
    # -q silences stderr (stage lines, progress); stdout carries results (a config, the report's path)
    out, err = _Output(sys.stdout, False, progress_lines=False), _Output(sys.stderr, quiet, progress_lines=True)
    sys.stdout, sys.stderr = out, err
    level = logging.WARNING if quiet else logging.DEBUG if verbosity > 0 else logging.INFO
    # FINN's builder swaps sys.stderr while it runs: the handlers hold our streams themselves
    log.handlers = [_Handler(err.console.write, level), _Handler(err.to_files, logging.DEBUG)]
    log.setLevel(logging.DEBUG)
    log.propagate = False

    def undo() -> None:
        out.flush()
        if isinstance(err.console, LineWriter):
            err.console.finish()
        err.flush()
        sys.stdout, sys.stderr = saved[0], saved[1]
        log.handlers, log.level, log.propagate = saved[2], saved[3], saved[4]

    return undo


@contextlib.contextmanager
def console(verbosity: int = 0) -> Iterator[None]:
    undo = install(verbosity)
    try:
        yield
    finally:
        undo()


@contextlib.contextmanager
def build_log(path: str | Path, header: str = "") -> Iterator[Path]:
    """Append everything printed from here on (and what console() kept from before) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with console(), open(path, "a", encoding="utf-8") as f:
        writer = LineWriter(f, stamp=True)
        outs = [s for s in (sys.stdout, sys.stderr) if isinstance(s, _Output)]
        writer.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S %Z')} {header}".rstrip() + "\n")
        for o in outs:
            for s in o.backlog:
                writer.write(s)
            o.backlog.clear()
            o.files.append(writer)
        try:
            yield path
        except BaseException as e:  # the reason a build stopped belongs in its log (the console shows it anyway)
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            writer.write(f"stopped: {why}\n")
            raise
        finally:
            for o in outs:
                if writer in o.files:
                    o.files.remove(writer)
            writer.finish()


def progress(msg: str, *args) -> None:
    """A progress line (console unless -q, and the build log)."""
    log.info(msg, *args)
