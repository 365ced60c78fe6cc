"""Benchmarks: kernel-level (`proxcl bench kernels`) and model-level (`proxcl bench model`)."""
