"""Test-wide settings: DDS traffic stays on loopback, in a ROS domain of this run's own."""

import os
import random

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
# A random domain keeps parallel runs on one machine from hearing each other.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(10, 100)))
os.environ.setdefault("MPLBACKEND", "Agg")
