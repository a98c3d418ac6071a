"""One config per table cell (TOML), installed as package data of `elastic_keras.configs`."""
