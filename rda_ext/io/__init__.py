"""What is read from and written to disk: the readers of data matrices, atomic writing and the
checks of a command's paths, the result of a fit (its schema, the .npz and the folder output), the
model file and the checkpoint."""
