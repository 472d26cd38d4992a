"""The MedNeXtV2Train module's parts.

Plain-Python modules (no Slicer import, tested with pytest): pairing, case_checks, label_table,
dataset_layout, presets, settings, train_command, train_progress, training_curves, resume_state,
curve_painter, trained_model, training_run. Slicer-facing modules: scene_cases, logic, widget
(navigation and the first three pages), run_pages (training run and the new model), selftest.
"""
