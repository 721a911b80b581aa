"""The ROS 2 shell around the perception core: the nodes, their parameters, message conversion.

Only this package (and the ROS tools: ``clipose-demo``) imports ROS. ``parameters`` and
``processes`` import no ROS module (``clipose-infer`` and the tests read the node's parameters
without rclpy); ``node``, ``synthetic_camera``, ``monitor``, ``runtime`` and ``convert`` do, at
the top. The console scripts go through ``entry_points``, which says in one line when ROS 2's
Python runtime is missing.
"""
