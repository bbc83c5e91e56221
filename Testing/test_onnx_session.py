"""A session on ONNX Runtime alone, as `pip install "SAMMed3DLib[onnx]"` gives it. CI also runs this module under
Python 3.9 (Slicer 5.6 and 5.8) in an environment without torch, on an export made beforehand
(SAMMED3D_TEST_ONNX_EXPORT, see the `tiny_export` fixture); without that variable the export is made here, which
needs torch."""

from __future__ import annotations

import numpy as np

from SAMMed3DLib import InteractiveSession, OnnxPredictor, Volume
from SAMMed3DLib.testing.scenes import bright_box


def test_a_session_on_onnx_runtime_encodes_once_and_undoes_exactly(tiny_export):
    predictor = OnnxPredictor(tiny_export, providers="cpu")
    assert (predictor.device, predictor.label) == ("cpu", "ONNX Runtime on cpu")
    session = InteractiveSession(predictor, Volume(*bright_box()))
    first = session.add_click([45.0, 40.0, 44.0])
    assert first.timings["encode"] > 0 and first.rois >= 1
    after_first = first.mask.copy()
    assert after_first.shape == (48, 96, 96) and after_first.dtype == np.uint8
    second = session.add_click([40.0, 42.0, 40.0], positive=False)  # inside the same region: decoder only
    assert second.timings["encode"] == 0.0
    session.undo()
    np.testing.assert_array_equal(session.mask, after_first)

    again = InteractiveSession(predictor, Volume(*bright_box())).add_click([45.0, 40.0, 44.0]).mask
    np.testing.assert_array_equal(again, after_first)  # deterministic

