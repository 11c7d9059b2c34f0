"""The build report: report.md (for people, with plots) and report.json (every figure, for tools)."""

from trimflow.report.build_report import write_report

__all__ = ["write_report"]
