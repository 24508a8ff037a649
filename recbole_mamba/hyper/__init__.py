"""Hyperparameter search on Ray Tune (``run_hyper.py``): search spaces, the per-epoch trainable,
and the runner that writes the best config, the trial table and the retrained test metrics."""
