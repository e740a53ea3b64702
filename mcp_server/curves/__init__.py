"""A run's curves: read from whatever its trainer writes, summarised and diagnosed in bounded space.

names      the one vocabulary: metric names (train/val roles, direction, spelling) and values (non-finite)
records    JSON lines as records: the one JSONL parser (curve readers, watchdog, GPU sampler); no numpy
store      the in-memory columns (`Curves`, `Series`) every reader fills and every analysis reads
readers    auto-detected, streaming, incremental readers (JSONL, CSV, TensorBoard, history.json,
           trainer_state.json, stdout lines)
columnar   the JSONL and CSV readers' fast way: blocks parsed by polars, checked against the slow way
tfevents   TensorBoard event files, read without TensorBoard
load       which of a run's files its curves come from, kept read between calls
stats      per-metric statistics and the sparkline (`MetricStats`)
findings   the diagnosis rules (`Finding`, `diagnose`)
remedies   what to do about each finding: generic advice, or the trainer spec's own
summary    a run's summary in budget (`CurveSummary`), cached while its logs do not change
plot       the PNG of `plot_run`
"""
