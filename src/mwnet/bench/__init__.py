"""Benchmarks: what an MW-Net step costs next to a plain training step, measured, not guessed."""

from mwnet.bench.step import BenchRow, ModeSpec, StepBenchConfig, mode_specs, run_step_bench

__all__ = ["BenchRow", "ModeSpec", "StepBenchConfig", "mode_specs", "run_step_bench"]
