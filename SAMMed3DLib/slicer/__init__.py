"""The Segment Editor effect's plain-Python logic, tested without Slicer: index bookkeeping between Slicer's oriented
images and volumes (`geometry`, the only module here that imports vtk), per-segment prompts (`prompts`) and the
model panel's decisions (`setup`). Nothing here imports Slicer or Qt."""
