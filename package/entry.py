"""The frozen executable's entry point (``package/llama-sidecar.spec``).

``sidecar/__main__.py`` imports ``.cli`` relatively, which a frozen entry script cannot
(it runs as a top-level script, with no package); this one imports it by name.
"""

from sidecar.cli import main

main()
