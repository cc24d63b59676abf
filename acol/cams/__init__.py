"""Class activation maps: normalisation ops (and, later, the post-hoc localizers)."""
