"""The segment job around the engine: where its outputs go and how an input is finished."""
