"""Synthetic datasets: the spec, the filters and the output formats (Hugging Face ImageFolder,
WebDataset shards, a Croissant-style manifest and a dataset card). Generation itself goes through
the governed path, in the dataset service that uses these."""
