"""Obtaining and preprocessing the seven real datasets and your own (see :mod:`eqpo.data.sources`)."""
