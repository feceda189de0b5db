"""Reports of the HAT benchmark: the paper's forgetting-ratio tables and figures, regenerated
from run records (JSON). Never imports torch, avalanche or ``benchmark``.

Modules: :mod:`reports.schema` (the run-record contract: fields, versions, the validator),
:mod:`reports.io` (atomic writes), :mod:`reports.load` (reading records),
:mod:`reports.metrics` (every formula, pure numpy/scipy), :mod:`reports.tables` (numbers as
data), :mod:`reports.render` (Markdown, LaTeX, CSV), :mod:`reports.figures` (matplotlib),
:mod:`reports.build` (writes a report),
:mod:`reports.wandb_source` (records from W&B), :mod:`reports.commands` (the commands that
produce missing runs with the records' settings), :mod:`reports.cli` (``python -m reports``).
"""

from .build import BuildResult, build_report
from .load import RecordWarning, ReportError, load_records
from .tables import ScenarioReport, compute_report

__all__ = [
    "BuildResult",
    "RecordWarning",
    "ReportError",
    "ScenarioReport",
    "build_report",
    "compute_report",
    "load_records",
]
