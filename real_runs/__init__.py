"""Real runs on hardware: measurements the simulator is checked against."""
