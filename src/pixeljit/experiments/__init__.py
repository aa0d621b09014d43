"""Reproductions of the paper's experiments, built on the library (never copies of it).

- `toy`: §3.3 / Fig. 2, 2-D data buried in ℝ^D; x- vs ε- vs v-prediction (`run_toy`),
  with its measures, table and figure in `toy_report`.
- the image grids on the emoji set, each cell a run of the training engine (`grid`: the shared
  frame; `evidence`: train, sample and score one cell): `table2` (Tab. 2, report in
  `table2_report`), `resolution` (resolution transfer), `bottleneck` (Fig. 4), `noise`
  (Tab. 3); the last three report through `sweep_report`.
"""

from pixeljit.experiments.toy import ToyConfig, ToyResult, ToyRun, run_toy
from pixeljit.experiments.toy_report import measure, write_outputs

__all__ = ["ToyConfig", "ToyResult", "ToyRun", "measure", "run_toy", "write_outputs"]
