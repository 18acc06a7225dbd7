"""The built-in task specs (``nlp-mtl tasks list``), installed as the package ``nlp_mtl.builtin_tasks``.

This file makes the folder a package, so that importlib.resources finds the specs in a wheel and
in an editable install alike; there is no code here.
"""
