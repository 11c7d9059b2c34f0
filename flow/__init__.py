"""trimflow: relevance trimming, Brevitas QAT and FINN compilation of CNNs for small FPGA boards."""

__version__ = "0.1.0"


class FlowError(Exception):
    """An error the user can act on. The CLI prints its message without a traceback."""
