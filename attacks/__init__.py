"""Attacks an honest-but-curious server runs on client updates, and the pure math under them.

Nothing here imports Flower: plugins see a `fedsim.update.ServerView` and return a `Finding`.
"""
