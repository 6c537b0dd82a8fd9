"""The run report: one self-contained HTML page per run folder (charts, sample grids, receipt, dataset, files)."""

from gpurun.report.page import REPORT_NAME, write_report

__all__ = ["REPORT_NAME", "write_report"]
