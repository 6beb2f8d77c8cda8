"""Map the card's top-level folders onto one import namespace.

``platform/`` becomes ``latentops.platform``, ``governance/`` becomes ``latentops.governance``,
``pipelines/`` becomes ``latentops.pipelines`` and ``migrations/`` ships as ``latentops.migrations``.
``platform/`` deliberately has no ``__init__.py`` at its top: a regular package named ``platform``
on ``sys.path`` would shadow the standard library.
"""

from setuptools import find_namespace_packages, setup

FOLDERS = {
    "platform": "latentops.platform",
    "governance": "latentops.governance",
    "pipelines": "latentops.pipelines",
    "migrations": "latentops.migrations",
}

package_dir: dict[str, str] = {}
packages: list[str] = []
for folder, namespace in FOLDERS.items():
    package_dir[namespace] = folder
    packages.append(namespace)
    packages += [f"{namespace}.{sub}" for sub in find_namespace_packages(where=folder, exclude=["*__pycache__*"])]

setup(
    package_dir=package_dir,
    packages=packages,
    package_data={"": ["*.rego", "*.json", "*.yaml", "*.html", "*.css", "*.js", "*.safetensors", "*.txt", "*.md", "*.mako"]},
    include_package_data=True,
)
