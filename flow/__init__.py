"""trimflow: relevance trimming, Brevitas QAT and FINN compilation of CNNs for small FPGA boards."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trimflow")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # the sources imported without being installed
    __version__ = "0+unknown"


class FlowError(Exception):
    """An error the user can act on. The CLI prints its message without a traceback."""
