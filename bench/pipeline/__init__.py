"""The run pipeline, in the order a photo goes through it (docs/architecture.md has the picture):

settings (what was asked) -> run (preparation, the loop) -> units (the work, with content keys; shards) ->
evaluate (one batch: measure, solve, score, save) -> store (the parquet parts, which row wins, snapshots);
rescore (`bench score`) fills in metrics from the saved PNGs; distributed (torchrun ranks).
"""
