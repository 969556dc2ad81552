"""Stand-in for sunsikham/my_fv_project's package ``fv``: their public signatures, written for the test (README.md)."""
