"""Data and I/O: the data sets (an embedded MNIST subset, IDX files, the papers' constructions) and
the files the command line reads and writes."""
