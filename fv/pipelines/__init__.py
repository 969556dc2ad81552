"""The drivers, in the layer above the stages (``fv.runtime``): they run the stages over trials files, qs and
tasks, write and resume their outputs, and submit job arrays. ``run`` (M4), ``relation`` and ``relation_array``
(M7's q-wise pipeline), ``universal`` (the universal FV), ``gate_m7`` (the M7 gate as a job array), ``array`` and
``cluster`` (job arrays by submitit), ``resume`` (what a finished output depends on), ``threads``."""
