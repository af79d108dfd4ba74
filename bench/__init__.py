"""diffusion-inverse-bench: run diffusion inverse-problem solvers on one matrix of tasks, priors and datasets."""

__version__ = "0.1.0"
