"""NOCS-format data: on-disk format, synthetic scene generator, dataset reader."""
