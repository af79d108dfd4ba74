"""Inverse-problem solvers: one module per method, registered under its command-line name."""
