"""medmm's built-in task plugins (installed as ``medmm_plugins``).

Each sub-package registers through the ``medmm`` entry-point group exactly like a third-party
plugin; registration modules import nothing heavy, implementations live in ``task.py`` modules.
"""
