"""trimflow: relevance trimming, Brevitas QAT and FINN compilation of CNNs for small FPGA boards."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trimflow")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # the sources imported without being installed
    __version__ = "0+unknown"


class FlowError(Exception):
    """An error the user can act on. The CLI prints its message without a traceback."""


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's text: torch's and FINN's messages run to many lines, and a trimflow
    error is one line."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
