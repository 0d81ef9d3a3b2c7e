"""The kernel contract (a package, so that its ``test_contract.py`` and the models' one do not collide)."""
