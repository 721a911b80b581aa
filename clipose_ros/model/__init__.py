"""The pose network (3D-GCN encoder + 9D heads), its losses, training cache, training and export.

Kept import-light on purpose: ``clipose_ros.model.loader`` (the run-time loader of exported
files) must not pull in the network code; import the submodules you need.
"""
