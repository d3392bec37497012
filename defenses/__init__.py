"""Client-side defenses: transforms of a client's update before it is sent.

Nothing here imports Flower or the simulation (`fedsim`): defenses implement `fedcore.Defense`.
"""
