"""What a finished study says: importance (fANOVA main effects and interactions), the audit's
verdict, and the export of trials to CSV.

May import: ``tuner.storage``, ``tuner.study.stored`` (the stored contract) and ``tuner.study.results``
(reading a study back) only.
"""
