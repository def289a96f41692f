"""One module per paper dataset; each defines SOURCE, a :class:`eqpo.data.sources.DatasetSource`."""
