"""Model weights: resolving a name, folder, URL or Hugging Face Hub id to a model folder
(registry, download, hub), loading and saving it (modelfile, pretrained), converting the
authors' checkpoints (convert)."""
