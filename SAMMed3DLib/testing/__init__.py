"""Test support that ships with the package, because the Slicer self-tests and the benchmarks use it too: a
predictor with a known answer (`oracle`), synthetic scenes (`scenes`) and random network weights
(`random_weights`, needs torch)."""
