"""Bundled trainers: self-contained scripts that speak the trainguard metrics contract."""
