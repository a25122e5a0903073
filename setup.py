"""Packaging of the shipped suites and method variants (the rest is in pyproject.toml).

They stay at the top level (`suites/`, `methods/`), where users read and copy them, and are
installed inside the package as `petlbench/_shipped/suites/` and `petlbench/_shipped/methods/`:
package data of two packages mapped onto those folders, read through importlib.resources
(`petlbench.config.shipped_folder`). The mapping puts them into the sdist (as the top-level
folders) and into every wheel, built from the tree or from the sdist, with one copy of each
file in the repository. An editable install or a checkout on PYTHONPATH has no
`petlbench/_shipped/` and reads the top-level folders. Data files (`data_files`) would land
outside the package, where importlib.resources cannot find them. The packages are listed
here because pyproject.toml cannot both discover packages and add mapped ones.
"""

from setuptools import find_namespace_packages, setup

SHIPPED = {f"petlbench._shipped.{kind}": kind for kind in ("suites", "methods")}

setup(
    packages=find_namespace_packages(include=["petlbench*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={"petlbench": ["assets/**/*"], **{package: ["*.yaml"] for package in SHIPPED}},
)
