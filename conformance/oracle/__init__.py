"""The single-process oracle, one module per CONTRACT section (mirroring ``impl/``): what each
rank must observe for a case, from the spec alone. The utility table names each utility's
oracle function; ``conformance.utilities.expected_outcomes`` applies it to every rank."""
