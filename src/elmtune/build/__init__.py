"""Declarative builds: ``elmtune build RECIPE.yaml -o DIR`` runs sft, dpo, eval, merge, export and generate stages.

Submodules: ``recipe`` (the typed recipe; imports no torch), ``references`` (``@NAME`` between stages),
``export_settings``, ``record`` (``build.json``), ``fingerprint`` (stage hashes and output digests), ``plan`` (run,
resume or skip, and why), ``stage_runs`` (one library call per stage kind) and ``run`` (:func:`run_build`).
"""
