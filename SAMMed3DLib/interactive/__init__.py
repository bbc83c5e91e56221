"""Interactive segmentation in physical space: volumes and patch frames (`geometry`), resampling both ways
(`resample`), the model's intensity preprocessing (`preprocess`) and `InteractiveSession` (`session`). numpy,
SciPy and SimpleITK only."""
