"""The commands as a user meets them: one grammar (noun then verb, the earlier spellings as aliases), bad inputs answered
in one line (examples and fuzzing), one set of exit codes, ``fv env check``, the pictures ``fv results plot`` draws,
and the benchmarks' tables."""
