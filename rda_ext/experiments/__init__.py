"""Experiments: the detectors RDA is compared with, detection metrics, and the demo."""
