"""Evaluation as published: simulated click protocols (`clicks`), Dice and NSD (`metrics`), dataset evaluation
(`runner`) and its tables and plot (`report`)."""
