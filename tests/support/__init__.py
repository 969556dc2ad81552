"""What tests share: builders of the real parts they run against (a Hugging Face cache on disk, a fork of the
reference's ``src/``). No test module imports another; they import from here."""
