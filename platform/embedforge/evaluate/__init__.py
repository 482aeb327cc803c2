"""MTEB evaluation with the paper's instructions and Ray-sharded, cached corpus encoding."""
