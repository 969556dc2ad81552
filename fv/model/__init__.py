"""Models: where things are in a decoder (``tree``), how to load one and its tokenizer (``loading``,
``tokenizers``, ``dtypes``, ``resolve``), and the tiny offline models of tests and CI (``tiny``)."""
