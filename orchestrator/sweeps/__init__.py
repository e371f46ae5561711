"""Hydra multirun as Ray Tune trials, and the schedulers that stop hopeless runs early. May
import launch and everything below it; only the entry point and the Hydra launcher import it."""
