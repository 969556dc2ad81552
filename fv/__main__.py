"""Allows ``python -m fv`` as a synonym of the ``fv`` console script."""

from fv.cli import main

raise SystemExit(main())
