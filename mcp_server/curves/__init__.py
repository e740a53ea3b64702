"""A run's curves: read from whatever its trainer writes, summarised and diagnosed in bounded space.

store      the in-memory columns (`Curves`, `Series`) every reader fills and every analysis reads
readers    auto-detected, streaming, incremental readers (JSONL, CSV, TensorBoard, history.json,
           trainer_state.json, stdout lines)
names      the one vocabulary of metric names and values
stats      per-metric statistics and the sparkline
findings   the diagnosis rules (`diagnose`)
remedies   what to do about each finding: generic advice, or the trainer spec's own
"""
