"""clipose_ros: category-level 9D object pose (CLIPose) for ROS 2."""

__version__ = "0.1.0"
