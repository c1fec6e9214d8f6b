"""Command-line entry points of the sampler service (`ditscale serve`, `ditscale loadtest`)."""
