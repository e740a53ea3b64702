"""A run's curves: read from whatever its trainer writes, summarised and diagnosed in bounded space.

store      the in-memory columns (`Curves`, `Series`) every reader fills and every analysis reads
readers    auto-detected, streaming, incremental readers (JSONL, CSV, TensorBoard, history.json,
           trainer_state.json, stdout lines)
analysis   per-metric statistics, the sparkline and the diagnoses
"""
