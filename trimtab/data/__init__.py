"""Data stage: read, map, check, split and write fine-tuning files (``trimtab prepare``)."""

from trimtab.data.preparation import PrepareOptions, PrepareResult, prepare

__all__ = ["PrepareOptions", "PrepareResult", "prepare"]
