"""Concept directions and steering of a checkpoint (`ditscale concepts`)."""
