"""Launch the CLIPose pose node (and optionally the synthetic camera and RViz).

    ros2 launch clipose_ros pose.launch.py                                # synthetic camera
    ros2 launch clipose_ros pose.launch.py use_synthetic_camera:=false \\
        rgb_topic:=/camera/color/image_raw \\
        depth_topic:=/camera/aligned_depth_to_color/image_raw \\
        camera_info_topic:=/camera/color/camera_info use_rviz:=true \\
        device:=cuda segmenter_weights:=models/yoloseg_coco_nocs.pt

Parameters come from config/pose.yaml (``params_file``); the arguments below override single
values. Where launch_ros is not installed (ROS 2 from PyPI wheels), ``clipose-demo`` starts the
same two nodes with the same parameter file.
"""

from __future__ import annotations

# Launch arguments: name -> (default, description). Arguments listed in NODE_PARAMETERS are
# passed to pose_node as parameters of the same name (test_node.py checks them against the
# node's declarations); the topic arguments become remappings.
ARGUMENTS = {
    "namespace": ("", "Namespace of the nodes and their relative topics"),
    "params_file": ("", "Parameter file (default: the package's config/pose.yaml)"),
    "rgb_topic": ("camera/color/image_raw", "RGB image topic (rgb8 / bgr8)"),
    "depth_topic": ("camera/aligned_depth_to_color/image_raw",
                    "Depth registered to the RGB image (16UC1 mm / 32FC1 m)"),
    "camera_info_topic": ("camera/color/camera_info", "CameraInfo of the RGB image"),
    "pose_model": ("models/clipose_pose_clip.pt", "Exported CLIPose TorchScript model"),
    "segmenter_weights": ("models/yoloseg_coco_nocs.onnx",
                          "YOLO-seg weights (.onnx: fastest on a CPU; .pt for device cuda)"),
    "device": ("cpu", "cpu, cuda, cuda:N or auto"),
    "score_threshold": ("0.5", "Minimum segmentation score"),
    "min_points": ("50", "Fewest mask pixels with valid depth for a pose (replaces the model "
                          "file's value)"),
    "class_score_thresholds": (
        "bottle:0.25 bowl:0.45 camera:0.4 can:0.35 laptop:0.35 mug:0.4",
        "Per-class minimum scores (CLASS:SCORE, apart by spaces) replacing score_threshold for "
        "the classes named; '' for score_threshold alone"),
    "frame_prefix": ("clipose/", "Prefix of the object TF frames"),
    "depth_scale": ("0.0", "Metres per depth unit; 0.0: by encoding (16UC1 mm, 32FC1 m), e.g. "
                    "0.001 for a driver publishing 32FC1 millimetres (write a float)"),
    "use_synthetic_camera": ("true", "Start the synthetic camera (rendered scenes) as input"),
    "use_rviz": ("false", "Start RViz with config/clipose.rviz"),
}
NODE_PARAMETERS = ("pose_model", "segmenter_weights", "device", "score_threshold",
                   "class_score_thresholds", "min_points", "frame_prefix", "depth_scale")
# String parameters reach the node as text: launch_ros reads a substitution as YAML otherwise,
# so '' would become null and a path or device name like '0' a number.
STRING_PARAMETERS = ("pose_model", "segmenter_weights", "device", "class_score_thresholds",
                     "frame_prefix")
TOPIC_REMAPS = {
    "rgb_topic": "camera/color/image_raw",
    "depth_topic": "camera/aligned_depth_to_color/image_raw",
    "camera_info_topic": "camera/color/camera_info",
}


def generate_launch_description():
    import os

    from ament_index_python.packages import get_package_share_directory
    from launch.actions import DeclareLaunchArgument
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration, PythonExpression
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterFile, ParameterValue

    from launch import LaunchDescription

    share = get_package_share_directory("clipose_ros")
    default_params = os.path.join(share, "config", "pose.yaml")
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()]
    params_file = PythonExpression([
        "'", LaunchConfiguration("params_file"), "' or '", default_params, "'"])
    params = ParameterFile(params_file, allow_substs=True)
    overrides = {name: ParameterValue(LaunchConfiguration(name), value_type=str)
                 if name in STRING_PARAMETERS else LaunchConfiguration(name)
                 for name in NODE_PARAMETERS}
    namespace = LaunchConfiguration("namespace")
    pose_node = Node(
        package="clipose_ros", executable="pose_node", name="pose_node", namespace=namespace,
        parameters=[params, overrides], output="screen",
        remappings=[(topic, LaunchConfiguration(arg)) for arg, topic in TOPIC_REMAPS.items()],
    )
    camera = Node(
        package="clipose_ros", executable="synthetic_camera", name="synthetic_camera",
        namespace=PythonExpression(["'", namespace, "'.rstrip('/') + '/camera'"]),
        parameters=[params], output="screen",
        condition=IfCondition(LaunchConfiguration("use_synthetic_camera")),
    )
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", namespace=namespace,
        arguments=["-d", os.path.join(share, "config", "clipose.rviz")],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return LaunchDescription([*args, pose_node, camera, rviz])
