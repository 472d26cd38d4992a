"""MedNeXtV2Segment's implementation: Slicer-facing widget/logic/install, plus plain-Python helpers
(process, progress, command, parameters, labels, paths, models) that run and are tested without Slicer."""
