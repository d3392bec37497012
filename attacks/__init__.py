"""Attacks an honest-but-curious server runs on client updates, and the pure math under them.

Nothing here imports Flower or the simulation (`fedsim`): plugins see a `fedcore.ServerView` and
return a `fedcore.Finding`.
"""
