"""Package mapping: ``passes/`` and ``schedules/`` install as ``tvmq.passes`` / ``tvmq.schedules``.

Metadata lives in pyproject.toml; this file only computes the mapped package list,
which pyproject's static ``packages.find`` cannot express.
"""
from setuptools import find_packages, setup

_MAPPED = {"tvmq.passes": "passes", "tvmq.schedules": "schedules"}

packages = find_packages(include=["tvmq", "tvmq.*"])
for name, folder in _MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir={"tvmq": "tvmq", **_MAPPED},
    package_data={"tvmq.schedules": ["*/*.json", "*/*/*.json"], "tvmq": ["py.typed"]},
)
