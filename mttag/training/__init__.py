"""The training pipeline: data sources, splits and the prepared store (dataset), augmentation,
the training loop with noisy-student distillation and DDP (loop), and the metrics."""
