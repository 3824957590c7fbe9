"""Drivers: the robot side of the agent (sim cell, real-robot bridge, camera)."""
