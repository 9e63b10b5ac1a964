"""The solver: the deep autoencoder, its device-resident training loop, and the RDA iteration."""

from rda_ext.solver.loop import HISTORY_KEYS, RDASolver, TrainingDiverged, survival_threshold

__all__ = ["HISTORY_KEYS", "RDASolver", "TrainingDiverged", "survival_threshold"]
