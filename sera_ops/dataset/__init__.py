"""Stage 7, dataset: per-instance results in, published SFT records out.

`formats` turns trajectories into training records (Hermes, XML or raw tool calls); `assemble` writes the dataset
(t1/t2 JSONL and Parquet, stats) and publishes it; `card` writes its dataset card and plots; `curate` filters and
subsamples a published dataset.
"""
