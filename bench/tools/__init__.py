"""Tools around runs: validate (solvers against exact Gaussian posteriors), speed (timing and memory), matrix
(which solver runs which task), compare (two run folders, unit by unit), export (φ or a bridge from a training
checkpoint), checks (the experiments' acceptance checks)."""
