"""Everything about weights: reading any checkpoint (``load``), converting foreign layouts (``formats``),
hub names (``hub``), the weights that ship with cspt (``packaged``), and exports with their lineage
(``export``)."""
