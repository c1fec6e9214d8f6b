"""DPM-Solver-v3 model statistics of a checkpoint (`ditscale ems`), computed on Ray and stored beside it."""
