"""Guidance distillation on Ray Train (`ditscale distill`): a guidance-embedded student trained from a teacher."""
