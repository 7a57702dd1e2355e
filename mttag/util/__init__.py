"""Small helpers shared across mttag (hashing, file-system syncs, one-line messages), kept
free of torch and of the rest of the package so that anything may import them."""
