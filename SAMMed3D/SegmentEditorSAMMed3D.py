"""Hidden module that registers the "SAM-Med3D" Segment Editor effect when Slicer has started."""

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class SegmentEditorSAMMed3D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorSAMMed3D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SAMMed3D"]
        self.parent.contributors = ["SAMMed3D contributors"]
        self.parent.hidden = True
        self.parent.helpText = "This hidden module registers the SAM-Med3D Segment Editor effect."
        self.parent.acknowledgementText = ""
        slicer.app.connect("startupCompleted()", registerEditorEffect)


def registerEditorEffect():
    """Register the effect with the Segment Editor's effect factory (also used by the self-tests)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

    instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
    # Slicer takes the module name from the folder and the class name from the file name.
    effectFilename = os.path.join(os.path.dirname(__file__), "SegmentEditorSAMMed3DLib", "SegmentEditorEffect.py")
    instance.setPythonSource(effectFilename.replace("\\", "/"))
    instance.self().register()
