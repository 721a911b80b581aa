"""ament_python package set-up: installs the Python package, its data files and tools."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "clipose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config",
         glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")
         + glob("config/*.json")),
        (f"share/{PACKAGE}/models", glob("models/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="clipose_ros maintainers",
    maintainer_email="maintainers@clipose-ros.dev",
    description="Category-level 9D object pose (CLIPose) from RGB-D for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "clipose-synth = clipose_ros.data.synth:main",
            "clipose-eval = clipose_ros.tools.evaluate:main",
            "clipose-prepare-nocs = clipose_ros.data.prepare_nocs:main",
            "pose_node = clipose_ros.ros.entry_points:pose_node",
            "synthetic_camera = clipose_ros.ros.entry_points:synthetic_camera",
            "clipose-demo = clipose_ros.tools.demo:main",
            "clipose-yolo-labels = clipose_ros.tools.yolo_labels:main",
            "clipose-train-seg = clipose_ros.tools.train_seg:main",
            "clipose-import-yolo-tflite = clipose_ros.tools.yolo_tflite:main",
            "clipose-train = clipose_ros.tools.train:main",
            "clipose-export = clipose_ros.model.export:main",
            "clipose-pretrain-clip = clipose_ros.tools.clip_pretrain:main",
            "clipose-infer = clipose_ros.tools.infer:main",
        ],
    },
)
