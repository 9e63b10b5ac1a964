"""The data sets: an embedded MNIST subset, IDX files, the papers' constructions."""
