"""The single-process oracle: every rank's expected outcome of a case, from the spec alone."""

from conformance.oracle.expect import expected_outcomes

__all__ = ["expected_outcomes"]
