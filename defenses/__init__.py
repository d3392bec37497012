"""Client-side defenses: transforms of a client's update before it is sent. No Flower imports."""
