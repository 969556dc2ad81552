"""The reference adapter: the only package that knows the names inside the reference's ``src/``.

``adapter`` finds and imports the reference and drives its functions on fixed trials; ``stages`` turns its
outputs into the same stage values fv's side produces, so the parity engine never sees a reference name.
"""

from fv.reference.adapter import InjectionNoOp, Reference, ReferenceUnavailable, find_src_root

__all__ = ["InjectionNoOp", "Reference", "ReferenceUnavailable", "find_src_root"]
