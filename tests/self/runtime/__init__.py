"""fv's runtime on its own tiny models: the foundations (tiny builds, hooks), every model family (against the
reference, or its goldens) and the families the reference has no branch for, fast mode against exact mode,
SentencePiece and Llama 3 tokenizers, and fv's trials code."""
