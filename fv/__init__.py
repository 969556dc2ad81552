"""fv: a function-vector runtime and the parity suite that proves it computes what the reference src/ computes.

Data flows one way: trials -> prompts -> slots -> activations -> effects -> vectors -> evaluation ->
artifacts -> comparison -> report. Each step is a module of its own.
"""

__version__ = "0.1.0"
