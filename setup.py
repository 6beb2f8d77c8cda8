"""Map the card's top-level folders onto one import namespace.

``platform/`` becomes ``latentops.platform``, ``governance/`` becomes ``latentops.governance``,
``pipelines/`` becomes ``latentops.pipelines`` and ``migrations/`` ships as ``latentops.migrations``.
``platform/sdk/`` ships as ``latentops.client`` (the Python SDK) and is left out of
``latentops.platform`` so that it has exactly one import name.
``platform/`` deliberately has no ``__init__.py`` at its top: a regular package named ``platform``
on ``sys.path`` would shadow the standard library.
"""

from setuptools import find_namespace_packages, setup

FOLDERS = {
    "core": "latentops.core",
    "platform": "latentops.platform",
    "governance": "latentops.governance",
    "pipelines": "latentops.pipelines",
    "migrations": "latentops.migrations",
    "platform/sdk": "latentops.client",
}
# Folders that are packages of their own above: not also discovered inside their parent folder.
NESTED = {folder: [f"{sub[len(folder) + 1:]}" for sub in FOLDERS if sub.startswith(folder + "/")] for folder in FOLDERS}

package_dir: dict[str, str] = {}
packages: list[str] = []
for folder, namespace in FOLDERS.items():
    package_dir[namespace] = folder
    packages.append(namespace)
    exclude = ["*__pycache__*"] + [pattern for sub in NESTED[folder] for pattern in (sub, f"{sub}.*")]
    packages += [f"{namespace}.{sub}" for sub in find_namespace_packages(where=folder, exclude=exclude)]

setup(
    package_dir=package_dir,
    packages=packages,
    package_data={"": ["*.rego", "*.json", "*.yaml", "*.html", "*.css", "*.js", "*.safetensors", "*.npz", "*.txt", "*.md", "*.mako"]},
    include_package_data=True,
)
