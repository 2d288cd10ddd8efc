"""The trait dashboard served by the plugin: data from ``trait_lora.core.report``, HTML and SVG here."""
