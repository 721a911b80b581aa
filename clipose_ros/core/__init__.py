"""The perception core: frame -> instances -> poses -> tracked objects. No ROS imports.

``structures`` (what the stages hand each other), ``stages`` (the segmenter and estimator
interfaces), ``segmentation`` and ``yolo_backends`` (the segmenters), ``pipeline`` (the stages
chained and timed), ``tracking`` (ids across frames), ``boxes`` (the tight box of a pose, mugs
included), ``visualize`` (boxes, axes and labels drawn on images), ``scoring`` (published
poses against ground truth: the demo's live numbers).
"""
