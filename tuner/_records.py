"""Kept so that ``from tuner._records import write_trial_records`` goes on working: the function now
lives in :mod:`tuner.storage` (``tuner/storage/_bulk.py``). Remove once nothing imports this module."""

from tuner.storage._bulk import write_trial_records

__all__ = ["write_trial_records"]
