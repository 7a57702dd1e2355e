"""From audio to results: the tagger and embedder, calibration and vocabulary, the embedding
index and its ANN file, and the result writers/readers (JSONL, CSV, JSON, Parquet, plots)."""
