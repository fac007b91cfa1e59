"""What a finished study says: importance (fANOVA main effects and interactions), the audit's
verdict, and the export of trials to CSV.

May import: ``tuner.storage`` and ``tuner.study.results`` (the stored contract) only.
"""
