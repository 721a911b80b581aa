"""The command-line tools, one module each (console scripts in setup.py).

They sit on top of the rest: a tool imports the core, the data and model code and, for the
ROS ones, ``clipose_ros.ros``; nothing imports a tool.
"""
