"""``tuner.importance``, a path the README once documented (from before the package layout; it names ``tuner.importance_table`` now): see :mod:`tuner.analysis.importance`."""

from tuner.analysis.importance import (  # noqa: F401 -- re-exported
    AUDIT_MAX_INTERACTION_RATIO,
    COLUMNS,
    MIN_COMPLETE_TRIALS,
    MIN_TRIALS,
    RUNG_CAVEAT,
    AuditVerdict,
    UnknownStudyError,
    audit_verdict,
    basis_notes,
    headline_rows,
    importance_table,
    write_importance,
)
