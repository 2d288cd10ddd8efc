"""The trait dashboard served by the plugin: data from ``trait_lora.core.handoff.report``, HTML and
SVG here."""
