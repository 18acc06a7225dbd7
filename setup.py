"""Package layout only; everything else is in pyproject.toml.

The built-in task specs stay in the top-level ``tasks/`` folder, where users read and copy them,
and are installed as the package ``nlp_mtl.builtin_tasks`` (read through importlib.resources), so
a wheel carries them and an editable install maps the package onto the folder.
"""

from setuptools import find_packages, setup

setup(
    # find_packages, not a fixed list: a new subpackage of nlp_mtl cannot be left out of the wheel.
    packages=[*find_packages(include=["nlp_mtl", "nlp_mtl.*"]), "nlp_mtl.builtin_tasks"],
    package_dir={"nlp_mtl.builtin_tasks": "tasks"},
)
