"""Selection: which candidates become training data (best, top-k, pairs), with filters."""

from bonsynth.select.selection import (
    SelectionConfig,
    SelectionResult,
    distinct_n,
    parse_select,
    select_candidates,
)

__all__ = ["SelectionConfig", "SelectionResult", "distinct_n", "parse_select", "select_candidates"]
