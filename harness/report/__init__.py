"""Reports: ``esolm report RESULTS_DIR`` -> ``reports/<sweep>/{*.png, report.md}``.

Rows come from ``points.jsonl`` (newest row per point key); seeds of the same (model entry,
schedule, length) are averaged.  Plots:

- ``pareto_time.png`` / ``pareto_nfe.png``: generative perplexity against seconds per
  sample / NFE per sample (log x), one colour per model family, one marker per model
  entry, each point labelled with its schedule and sample entropy (H, nats: collapse
  shows as low H with a flattering gen PPL); the Pareto frontier (no other point is both
  faster and better) is a dashed step line;
- ``alpha0.png``: Eso-LM test / generative perplexity against alpha_0 at evaluation, with
  AR and MDLM as horizontal reference lines;
- ``speed_vs_length.png`` (sweeps over several lengths): seconds per sample against L;
- ``speed_headline.png`` (CUDA sweeps): the paper's sampler settings, seconds per sample
  against L on one log-log panel.
- ``caching.png`` (sweeps that measure cache error): generative perplexity against time and
  NFE with exact and approximate caches marked apart, beside a table of each point's cache
  error and the speed-up against its uncached twin (:mod:`~harness.report.caching`).

On GPU rows that carry ``weight_bytes`` / ``matmul_parameters`` each point also gets a
floor (the time one could not beat on this GPU, docs/floors.md) and its measured / floor; with
Eso-LM (B) and MDLM / BD3-LM rows, a "Speed ratios" table (also ``speed_ratios.csv``)
next to the paper's figures; where points ran under the Eso-LM paper's own timing protocols
(its latency and throughput tables), "Against the paper's timings" puts its seconds, NFE and
ratios beside ours (:mod:`~harness.report.paper_speed`).

``report.md`` embeds them, names the protocol (evaluator, estimator, device, dtype, batch
size, commit) and quotes a few samples.

Modules: :mod:`~harness.report.frame` (rows and seeds averaged), :mod:`~harness.report.plots`,
:mod:`~harness.report.tables`, :mod:`~harness.report.speed` (floors and ratios),
:mod:`~harness.report.text` (protocol and notes), :mod:`~harness.report.write` (report.md).
"""

from harness.report.frame import FAMILY_COLORS, FAMILY_NAMES, aggregate, load_frame, pareto_front
from harness.report.speed import PERF_H100, add_floors, floor_seconds, speed_ratios
from harness.report.tables import fmt, md_table
from harness.report.write import default_report_dir, write_report

__all__ = ["FAMILY_COLORS", "FAMILY_NAMES", "PERF_H100", "add_floors", "aggregate", "default_report_dir",
           "floor_seconds", "fmt", "load_frame", "md_table", "pareto_front", "speed_ratios", "write_report"]
